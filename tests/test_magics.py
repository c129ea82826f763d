"""The notebook faces without a cluster: interpolation, tool schemas, the renderer's cost, and the
magics' parsing and errors in a real InteractiveShell."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_hpcllm.llmcell import Renderer, code_of, interpolate, parse_json_answer
from jupyter_hpcllm.tools import call_tool, tool_schema


def test_interpolation_never_fails_on_braces():
    namespace = {"topic": "Slurm", "n": 3}
    assert interpolate("Explain {topic} in {n} lines", namespace) == "Explain Slurm in 3 lines"
    code = "def f(x):\n    return {'a': x, **{}}\nprint(f'{x:>3}', {unknown})"
    assert interpolate(code, namespace) == code  # dict literals, f-strings, unknown names stay as written
    assert interpolate("{{topic}} is {topic}", namespace) == "{topic} is Slurm"
    assert interpolate("{ topic }", namespace) == "{ topic }"


def weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C", tags: list[str] | None = None) -> dict:
    """Forecast for a city.

    city: the city's name
    days: how many days ahead
    """
    return {"city": city, "days": days, "unit": unit}


def test_tool_schema_from_signature_hints_and_docstring():
    schema = tool_schema(weather)["function"]
    assert schema["name"] == "weather" and schema["description"] == "Forecast for a city."
    properties = schema["parameters"]["properties"]
    assert properties["city"] == {"type": "string", "description": "the city's name"}
    assert properties["days"] == {"type": "integer", "description": "how many days ahead", "default": 1}
    assert properties["unit"]["enum"] == ["C", "F"]
    assert properties["tags"]["type"] == "array" and properties["tags"]["items"] == {"type": "string"}
    assert schema["parameters"]["required"] == ["city"]


def test_tool_calls_answer_errors_instead_of_raising():
    functions = {"weather": weather}
    value, text = call_tool(functions, "weather", '{"city": "Oslo"}')
    assert value["city"] == "Oslo" and json.loads(text)["days"] == 1
    assert call_tool(functions, "nope", "{}")[1].startswith("Error: there is no tool")
    assert "not valid JSON" in call_tool(functions, "weather", "{city")[1]
    assert "TypeError" in call_tool(functions, "weather", '{"town": "x"}')[1]


class FakeHandle:
    def __init__(self):
        self.updates = []

    def update(self, obj):
        self.updates.append(obj.data)


def test_streaming_renders_cost_linear_in_the_answers_length():
    handle = FakeHandle()

    def display(obj, display_id):
        handle.updates.append(obj.data)
        return handle

    renderer = Renderer(True, display=display, interval=0.0)
    for _ in range(4000):
        renderer.content("token ")
    renderer.finish()
    final = len(renderer.markdown())
    rendered = sum(len(text) for text in handle.updates)
    assert handle.updates[-1].endswith("token ") and len(handle.updates[-1]) == final
    assert len(handle.updates) < 60  # geometric growth: about log1.25(4000 × 6) renders
    assert rendered < 6 * final  # the whole stream costs a constant times its final size


def test_reasoning_is_folded_above_the_answer():
    renderer = Renderer(True, display=lambda obj, display_id: FakeHandle(), interval=0.0)
    renderer.reasoning("thinking hard")
    renderer.content("the answer")
    text = renderer.markdown()
    assert text.index("<details><summary>Reasoning</summary>") < text.index("thinking hard") < text.index("the answer")
    hidden = Renderer(True, show_reasoning=False, display=lambda obj, display_id: FakeHandle())
    hidden.reasoning("secret")
    assert "secret" not in hidden.markdown()


def test_answer_helpers():
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_answer('Here it is: [1, 2] and more') == [1, 2]
    with pytest.raises(ValueError):
        parse_json_answer("no json here")
    assert code_of("Sure:\n```python\nprint(1)\n```\nDone") == "print(1)"


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_hpcllm")
    yield ip
    ip.run_line_magic("unload_ext", "jupyter_hpcllm") if False else None


def test_magics_errors_are_one_paragraph(shell, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "c.toml"))
    (tmp_path / "c.toml").write_text("")
    shell.run_line_magic("hpcllm", "up")
    assert "the following arguments are required: model" in capsys.readouterr().err
    shell.run_line_magic("hpcllm", "up gpt-oss-120b --gpus 9 --profile ebi")
    err = capsys.readouterr().err
    assert "a100 allows 1–4 GPUs" in err and "Traceback" not in err
    shell.run_line_magic("hpcllm", "up x --profile nope")
    assert "Unknown profile 'nope'" in capsys.readouterr().err
    shell.run_line_magic("hpcllm", "up 'unclosed")
    assert "Check the quotes" in capsys.readouterr().err
    shell.run_line_magic("hpcllm", "status")
    assert "No server is attached" in capsys.readouterr().err
    shell.run_cell_magic("llm", "", "hello")
    assert "%%llm has no server yet" in capsys.readouterr().err
    shell.run_cell_magic("llm", "--format yaml", "hello")
    assert "invalid choice: 'yaml'" in capsys.readouterr().err


def test_help_teaches(shell, capsys):
    shell.run_line_magic("hpcllm", "--help")
    out = capsys.readouterr().out
    assert "%hpcllm up MODEL" in out and "%hpcllm use URL" in out
    shell.run_line_magic("hpcllm", "up --help")
    assert "--background" in capsys.readouterr().out
    magic = shell.find_line_magic("hpcllm")
    assert "status | list | logs" in magic.__doc__
    assert "{name} inserts a variable" in shell.find_cell_magic("llm").__doc__


def test_script_in_a_notebook(shell, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "c.toml"))
    (tmp_path / "c.toml").write_text("")
    shell.run_line_magic("hpcllm", "script gpt-oss-120b --gpus 4 --profile ebi --engine sglang")
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:a100:4" in out and "--tool-call-parser gpt-oss" in out


def test_the_notebook_progress_keeps_ticking_while_a_job_waits():
    import time as clock

    from jupyter_hpcllm.lifecycle import Progress, Stage
    from jupyter_hpcllm.progress import ProgressView

    handle = FakeHandle()

    def display(obj, display_id):
        handle.updates.append(obj.data)
        return handle

    view = ProgressView(True, "gpt-oss-120b", tick=0.05, display=display)
    view(Progress(Stage.PENDING, "7", "Job 7 is pending (waiting for Resources).", 3.0, reason="Resources"))
    clock.sleep(1.2)
    view.stop()
    shown = len(handle.updates)
    assert shown >= 3 and "waiting for" in handle.updates[-1] and "<td" in handle.updates[-1]
    elapsed = [float(text.split("elapsed</td><td style='text-align:left'>")[1].split(" s")[0])
               for text in handle.updates]
    assert elapsed[0] == 3 and elapsed[-1] >= 4  # it moved on without a new stage, and never back
    assert elapsed == sorted(elapsed)
    clock.sleep(0.2)
    assert len(handle.updates) == shown  # stopped means stopped
