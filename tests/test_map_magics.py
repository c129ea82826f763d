"""`%%llm --map` and `%hpcllm provenance` in a real InteractiveShell (the shipped FakeTransport's server),
and in a real kernel against the engine double, where each output's metadata must carry its provenance."""

from __future__ import annotations

import json
import os

import nbformat
import pandas as pd
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient
from test_engine_double import KEY, free_port, model, start, vllm_argv, wait_ready  # noqa: F401 (model: fixture)
from test_magics import fake, shell  # noqa: F401 (fixtures)


def test_map_cell_over_a_list_and_a_dataframe_and_the_provenance(shell, capsys, fake):  # noqa: F811
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    capsys.readouterr()
    shell.user_ns["topics"] = ["cells", "stars", "rivers"]
    shell.user_ns["style"] = "briefly"
    shell.run_cell_magic("llm", "--map topics -t 0", "Explain {item} {style}. {{item}} stays.")
    answers = shell.user_ns["answers"]
    assert list(answers) == [f"Echo: Explain {t} briefly. {{item}} stays." for t in ("cells", "stars", "rivers")]
    assert answers.provenance["engine"] == "vllm" and answers.provenance["sampling"] == {"temperature": 0.0}
    out = capsys.readouterr()
    assert "The answers are in `answers`" in out.out and "3 items" in out.err

    shell.user_ns["papers"] = pd.DataFrame({"title": ["A", "B"]}, index=["p1", "p2"])
    shell.run_cell_magic("llm", "--map papers --column summary --out papers2", "Summarise {row.title}")
    frame = shell.user_ns["papers2"]
    assert list(frame["summary"]) == ["Echo: Summarise A", "Echo: Summarise B"]
    assert frame.attrs["hpcllm"]["job_id"] == answers.provenance["job_id"]
    capsys.readouterr()

    shell.run_line_magic("hpcllm", "provenance")
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == "Qwen3-8B" and record["engine"] == "vllm" and record["job_id"]
    assert record["image"].endswith(".sif") and record["tool_call_parser"] and record["engine_args"]
    assert "--api-key" not in " ".join(record["engine_args"])


def test_a_plain_llm_cell_records_the_engine_read_in_the_background(shell, capsys, fake):  # noqa: F811
    import threading
    import time

    from jupyter_hpcllm.notebook.session import session_for

    readers = []
    run = fake.run

    def recording_run(command, **kwargs):
        if command.endswith("/job.sh"):
            readers.append(threading.current_thread().name)
        return run(command, **kwargs)

    fake.run = recording_run
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    server = session_for(shell).server
    deadline = time.monotonic() + 10
    while not server.engine_record(wait=False):  # read by a thread since the adoption, not by the cell
        assert time.monotonic() < deadline
        time.sleep(0.02)
    shell.run_cell_magic("llm", "--no-stream -t 0.5", "hello")
    assert readers == ["hpcllm-engine-record"]  # once, and never on the kernel's main thread
    record = session_for(shell).provenance
    assert record["image"].endswith(".sif") and record["tool_call_parser"] and record["sampling"] == {
        "temperature": 0.5}


@pytest.mark.parametrize(("cell", "message"), [
    ("%%llm --map nothing\n{item}", "there is no variable 'nothing'"),
    ("%%llm --map topics --chat\n{item}", "takes no --chat"),
    ("%%llm --map topics --schema Missing\n{item}", "there is no variable 'Missing'"),
    ("%%llm --map topics --concurrency 0\n{item}", "1 to 1024"),
    ("%%llm --schema Label\nhello", "go with --map"),
    ("%%llm --map topics --out In\n{item}", "IPython's own names"),
    ("%%llm --map number\n{item}", "not int"),
])
def test_map_cell_mistakes_fail_in_one_paragraph(shell, capsys, fake, cell, message):  # noqa: F811
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    shell.user_ns.update(topics=["a"], number=7)
    result = shell.run_cell(cell)
    error = result.error_in_exec or result.error_before_exec
    assert isinstance(error, UsageError), error
    assert message in str(error) and len(str(error).strip().splitlines()) == 1
    assert "Traceback" not in "".join(capsys.readouterr())


def test_in_a_kernel_each_answer_and_each_map_keeps_its_provenance_in_the_saved_notebook(tmp_path, model):  # noqa: F811
    port = free_port()
    process = start(tmp_path, "vllm", vllm_argv(model, port, "--reasoning-parser", "qwen3"), env={"VLLM_API_KEY": KEY})
    try:
        wait_ready(process, port)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
            "%load_ext jupyter_hpcllm",
            f"%hpcllm use http://127.0.0.1:{port}/v1 --key-env DOUBLE_KEY --model Qwen3-8B",
            "%%llm -t 0.3\nName a colour.",
            "items = ['x', 'y']",
            "%%llm --map items\nSay {item}",
            "print(answers)",
        )])
        env = {"DOUBLE_KEY": KEY, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        old = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
        finally:
            for key, value in old.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    finally:
        process.terminate()
        process.wait(10)
    answer_outputs = notebook.cells[2].outputs
    assert answer_outputs and all(o.get("metadata", {}).get("jupyter_hpcllm", {}).get("model") == "Qwen3-8B"
                                  for o in answer_outputs if o.output_type in ("display_data", "update_display_data"))
    record = answer_outputs[-1].metadata["jupyter_hpcllm"]
    assert record["sampling"] == {"temperature": 0.3} and record["endpoint"].endswith("/v1") and record["time"]
    map_records = [o.metadata["jupyter_hpcllm"] for o in notebook.cells[4].outputs if "jupyter_hpcllm" in o.get(
        "metadata", {})]
    assert map_records and "2 items" in map_records[-1]["summary"] and map_records[-1]["failures"] == 0
    assert any("<progress" in o.get("data", {}).get("text/html", "") for o in notebook.cells[4].outputs)
    assert "Echo: Say x" in notebook.cells[5].outputs[0].text
    assert KEY not in json.dumps(nbformat.writes(notebook))  # the key is in no output and no metadata
