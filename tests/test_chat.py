"""Talking to a server, without one: tool schemas and calls, interpolation, run_prompt against a scripted
client (real openai chunk types), the answer helpers, and the notebook's renderer and progress display."""

from __future__ import annotations

import dataclasses
import enum
import html
import json
import re
import types
from typing import Literal, Optional

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from jupyter_hpcllm.chat.interpolate import interpolate
from jupyter_hpcllm.chat.prompt import MAX_TOOL_ROUNDS, Endpoint, code_of, parse_json_answer, run_prompt
from jupyter_hpcllm.chat.tools import call_tool, tool_schema
from jupyter_hpcllm.notebook.render import Renderer

# --- tools: schemas -----------------------------------------------------------------------------------


class Unit(enum.Enum):
    CELSIUS = "C"
    FAHRENHEIT = "F"


@dataclasses.dataclass
class Place:
    lat: float
    lon: float
    name: str = ""


def weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C", tags: list[str] | None = None) -> dict:
    """Forecast for a city.

    city: the city's name
    days: how many days ahead
    """
    return {"city": city, "days": days, "unit": unit}


def survey(place: Place, counts: list[int], scale: Unit = Unit.CELSIUS, limit: Optional[int] = None,  # noqa: UP045
           options: dict | None = None, *, label: str = "x") -> str:
    """Survey a place.

    Several lines of detail that are not the summary.

    Args:
        place: where to look,
            as coordinates.
        counts (list[int]): one count per day
        :param scale: the temperature scale
    """
    return "ok"


def _titles(schema):
    """Every "title" keyword in a schema (property *names* called title do not count)."""
    if isinstance(schema, list):
        return [t for item in schema for t in _titles(item)]
    if not isinstance(schema, dict):
        return []
    found = ["title"] if isinstance(schema.get("title"), str) else []
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            found += [t for item in value.values() for t in _titles(item)]
        elif key not in ("default", "enum", "const"):
            found += _titles(value)
    return found


def test_tool_schema_from_signature_hints_and_docstring():
    entry = tool_schema(weather)
    assert entry["type"] == "function"
    schema = entry["function"]
    assert schema["name"] == "weather" and schema["description"] == "Forecast for a city."
    parameters = schema["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["city"]
    properties = parameters["properties"]
    assert properties["city"] == {"type": "string", "description": "the city's name"}
    assert properties["days"] == {"type": "integer", "description": "how many days ahead", "default": 1}
    assert properties["unit"] == {"type": "string", "enum": ["C", "F"], "default": "C"}
    assert properties["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                                  "default": None}


def test_tool_schema_of_optional_enum_dataclass_list_and_dict():
    schema = tool_schema(survey)["function"]
    assert schema["description"] == "Survey a place."
    parameters = schema["parameters"]
    properties = parameters["properties"]
    assert parameters["required"] == ["place", "counts"] and parameters["additionalProperties"] is False
    assert list(properties) == ["place", "counts", "scale", "limit", "options", "label"]
    # A dataclass: its fields, inlined (no $ref for the model to chase), with the docstring's description.
    place = properties["place"]
    assert place["type"] == "object" and place["required"] == ["lat", "lon"]
    assert place["properties"] == {"lat": {"type": "number"}, "lon": {"type": "number"},
                                   "name": {"type": "string", "default": ""}}
    assert place["description"] == "where to look, as coordinates."
    assert properties["counts"] == {"type": "array", "items": {"type": "integer"}, "description": "one count per day"}
    # An Enum: its values, and its default as a value (the old schema had `{}` here).
    assert properties["scale"] == {"type": "string", "enum": ["C", "F"], "default": "C",
                                   "description": "the temperature scale"}
    assert properties["limit"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert properties["options"]["anyOf"][0]["type"] == "object"
    assert properties["label"] == {"type": "string", "default": "x"}
    assert "$defs" not in parameters and "$ref" not in json.dumps(parameters)
    assert _titles(parameters) == []


def test_tool_schema_keeps_data_that_looks_like_schema_keywords():
    def publish(title: str, meta: dict = {"title": "kept"}) -> None:  # noqa: B006 - a default that is data
        """:param title: the post's title"""

    schema = tool_schema(publish)["function"]
    assert schema["description"] == "Call the Python function publish."  # the docstring has only parameters
    assert schema["parameters"]["properties"]["title"] == {"type": "string", "description": "the post's title"}
    assert schema["parameters"]["properties"]["meta"]["default"] == {"title": "kept"}


@dataclasses.dataclass
class Tree:
    value: int
    children: list[Tree] = dataclasses.field(default_factory=list)


def test_a_recursive_type_keeps_its_definitions():
    def total(tree: Tree) -> int:
        return tree.value + sum(total(child) for child in tree.children)

    parameters = tool_schema(total)["function"]["parameters"]
    assert parameters["properties"]["tree"] == {"$ref": "#/$defs/Tree"}
    assert parameters["$defs"]["Tree"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert call_tool({"total": total}, "total", '{"tree": {"value": 1, "children": [{"value": 2}]}}') == (3, "3")


def test_what_the_schema_accepts_is_what_call_tool_accepts():
    """(Validation is lax where the schema is strict, "2" for an integer passes: not among these.)"""
    jsonschema = pytest.importorskip("jsonschema")
    parameters = tool_schema(survey)["function"]["parameters"]
    for arguments in [
        {"place": {"lat": 1, "lon": 2}, "counts": [1, 2]},
        {"place": {"lat": 1, "lon": 2, "name": "x"}, "counts": [], "scale": "F", "limit": None, "label": "y"},
        {"place": {"lat": 1}, "counts": [1]},
        {"place": {"lat": 1, "lon": 2}, "counts": [1], "scale": "K"},
        {"place": {"lat": 1, "lon": 2}, "counts": "1"},
        {"place": {"lat": 1, "lon": 2}, "counts": [1], "colour": "red"},
        {"counts": [1]},
    ]:
        valid = jsonschema.Draft202012Validator(parameters).is_valid(arguments)
        _, text = call_tool({"survey": survey}, "survey", json.dumps(arguments))
        assert valid == (text == "ok"), (arguments, text)


def test_parameter_names_that_pydantic_uses_itself():
    def lookup(schema: str, json: bool = False, model_config: int = 0, copy: str = "") -> list:
        return [schema, json, model_config, copy]

    properties = tool_schema(lookup)["function"]["parameters"]["properties"]
    assert list(properties) == ["schema", "json", "model_config", "copy"]
    value, _ = call_tool({"lookup": lookup}, "lookup", '{"schema": "s", "json": true, "model_config": 2}')
    assert value == ["s", True, 2, ""]


# --- tools: calls ---------------------------------------------------------------------------------------


def test_arguments_are_validated_before_the_function_runs():
    ran = []

    def record(place: Place, counts: list[int], scale: Unit = Unit.CELSIUS) -> str:
        ran.append((place, counts, scale))
        return "recorded"

    functions = {"record": record}
    for arguments in [
        '{"place": {"lat": 1, "lon": 2}}',                                   # missing
        '{"place": {"lat": 1, "lon": 2}, "counts": ["one"]}',                # wrong type in a list
        '{"place": {"lat": "north", "lon": 2}, "counts": []}',               # wrong type in a dataclass
        '{"place": {"lat": 1, "lon": 2}, "counts": [], "scale": "K"}',       # not an Enum value
        '{"place": {"lat": 1, "lon": 2}, "counts": [], "colour": "red"}',    # no such parameter
        '{"place": [1, 2], "counts": []}',                                   # not an object
    ]:
        value, text = call_tool(functions, "record", arguments)
        assert value is None and text.startswith("Error: invalid arguments: "), (arguments, text)
    assert ran == []  # it never ran
    arguments = '{"place": {"lat": 1, "lon": "2.5"}, "counts": [1, "2"], "scale": "F"}'
    value, text = call_tool(functions, "record", arguments)
    assert (value, text) == ("recorded", "recorded")
    assert ran == [(Place(1.0, 2.5), [1, 2], Unit.FAHRENHEIT)]  # converted to the hinted types


def test_invalid_arguments_are_explained_in_the_parameters_names():
    _, text = call_tool({"weather": weather}, "weather", '{"town": "Oslo", "days": "three", "unit": "K"}')
    assert text.startswith("Error: invalid arguments: ")
    assert "city: required but missing" in text
    assert "days: Input should be a valid integer" in text and "'three'" in text
    assert "unit: Input should be 'C' or 'F'" in text
    assert "town: not a parameter (the parameters are: city, days, unit, tags)" in text


def test_tool_calls_answer_errors_instead_of_raising():
    def divide(a: float, b: float) -> float:
        return a / b

    functions = {"weather": weather, "divide": divide}
    value, text = call_tool(functions, "weather", '{"city": "Oslo"}')
    assert value == {"city": "Oslo", "days": 1, "unit": "C"} and json.loads(text) == value
    assert call_tool(functions, "nope", "{}") == (None, "Error: there is no tool named 'nope'.")
    value, text = call_tool(functions, "weather", "{city")
    assert value is None and text.startswith("Error: the arguments are not valid JSON (")
    assert call_tool(functions, "weather", '["Oslo"]') == (
        None, "Error: invalid arguments: expected a JSON object of named arguments, not an array.")
    assert call_tool(functions, "weather", '"Oslo"')[1].endswith("not a string.")
    assert call_tool(functions, "divide", '{"a": 1, "b": 0}') == (
        None, "Error: ZeroDivisionError: float division by zero")


def test_no_arguments_and_the_kinds_of_parameters():
    def now() -> str:
        return "12:00"

    def scaled(value: int, /, factor: int = 2, *, offset: int = 0, **extra: object) -> dict:
        return {"value": value * factor + offset, "extra": extra}

    functions = {"now": now, "scaled": scaled}
    assert tool_schema(now)["function"]["parameters"] == {
        "type": "object", "properties": {}, "required": [], "additionalProperties": False}
    assert call_tool(functions, "now", "") == ("12:00", "12:00")
    assert call_tool(functions, "now", "null") == ("12:00", "12:00")
    value, _ = call_tool(functions, "scaled", '{"value": 3, "offset": 1, "note": "kept"}')
    assert value == {"value": 7, "extra": {"note": "kept"}}


def test_results_become_json_text():
    def place() -> Place:
        return Place(1.0, 2.0, "here")

    def scale() -> dict:
        return {"unit": Unit.CELSIUS, "seen": {3}}

    def opaque() -> object:
        return types.SimpleNamespace(a=1)

    def circular() -> list:
        loop: list = []
        loop.append(loop)
        return loop

    functions = {f.__name__: f for f in (place, scale, opaque, circular)}
    assert json.loads(call_tool(functions, "place", "{}")[1]) == {"lat": 1.0, "lon": 2.0, "name": "here"}
    assert json.loads(call_tool(functions, "scale", "{}")[1]) == {"unit": "C", "seen": [3]}
    assert call_tool(functions, "opaque", "{}")[1] == '"namespace(a=1)"'
    assert call_tool(functions, "circular", "{}")[1] == "[[...]]"


# --- interpolation ----------------------------------------------------------------------------------------


def test_interpolation_never_fails_on_braces():
    namespace = {"topic": "Slurm", "n": 3, "data": {"a": 1}}
    assert interpolate("Explain {topic} in {n} lines", namespace) == "Explain Slurm in 3 lines"
    assert interpolate("Given {data}", namespace) == "Given {'a': 1}"
    code = "def f(x):\n    return {'a': x, **{}}\nprint(f'{x:>3}', {unknown})"
    assert interpolate(code, namespace) == code  # dict literals, f-strings, unknown names stay as written
    assert interpolate("{{topic}} is {topic}", namespace) == "{topic} is Slurm"
    assert interpolate("{ topic }", namespace) == "{ topic }"
    assert interpolate('{"a": {"b": 1}}', namespace) == '{"a": {"b": 1}}'  # a lone }} is not an escape
    assert interpolate("{topic.upper} {n!r} {0}", namespace) == "{topic.upper} {n!r} {0}"
    assert interpolate("", namespace) == ""


# --- run_prompt -------------------------------------------------------------------------------------------


def _chunk(delta: dict | None = None, **extra) -> ChatCompletionChunk:
    choices = [] if delta is None else [{"index": 0, "delta": {**delta, **extra}, "finish_reason": None}]
    return ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                               "model": "m", "choices": choices})


def _call_chunk(index: int, *, id: str | None = None, name: str | None = None, arguments: str = ""):
    function = {"arguments": arguments, **({"name": name} if name else {})}
    return _chunk({"tool_calls": [{"index": index, "id": id, "type": "function" if id else None,
                                   "function": function}]})


def _completion(message: dict) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}}]})


class ScriptedClient:
    """`client.chat.completions.create` answering each request with the next scripted response."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[dict] = []
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=self._create))

    def _create(self, **request):
        self.requests.append(json.loads(json.dumps(request, default=str)))  # as sent, not as later mutated
        response = self.responses.pop(0)
        return iter(response) if isinstance(response, list) else response


class Recorder:
    """An AnswerSink that keeps what it was given."""

    def __init__(self):
        self.events: list[tuple] = []

    def reasoning(self, text):
        self.events.append(("reasoning", text))

    def content(self, text):
        self.events.append(("content", text))

    def tool(self, name, arguments, result):
        self.events.append(("tool", name, arguments, result))

    def finish(self):
        self.events.append(("finish",))

    def text(self, kind):
        return "".join(e[1] for e in self.events if e[0] == kind)


def test_a_streamed_answer_with_reasoning_tool_calls_and_a_final_answer():
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def shout(text: str) -> str:
        return text.upper()

    client = ScriptedClient(
        [
            _chunk({"role": "assistant"}, reasoning="The user wants "),           # vLLM
            _chunk({}, reasoning_content="a sum."),                                 # SGLang
            _call_chunk(0, id="call_1", name="add", arguments='{"a": 2'),
            _call_chunk(1, id="call_2", name="shout", arguments=""),
            _call_chunk(0, arguments=', "b": 3}'),                                  # arguments across chunks
            _call_chunk(1, arguments='{"text": "hi"}'),
            _chunk(None),                                                           # a usage-only chunk
        ],
        [_chunk({"content": "The sum "}), _chunk({"content": "is 5."}), _chunk({"content": None})],
    )
    sink = Recorder()
    messages = [{"role": "user", "content": "2+3?"}]
    added = run_prompt(Endpoint(client, "m", "test"), messages, sink, functions={"add": add, "shout": shout},
                       temperature=0.2)

    assert sink.text("reasoning") == "The user wants a sum."
    assert [e for e in sink.events if e[0] == "tool"] == [("tool", "add", '{"a": 2, "b": 3}', "5"),
                                                         ("tool", "shout", '{"text": "hi"}', "HI")]
    assert sink.text("content") == "The sum is 5."
    assert sink.events[-1] == ("finish",) and sink.events.count(("finish",)) == 1
    assert added == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
            {"id": "call_2", "type": "function", "function": {"name": "shout", "arguments": '{"text": "hi"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "tool", "tool_call_id": "call_2", "content": "HI"},
        {"role": "assistant", "content": "The sum is 5."},
    ]
    first, second = client.requests
    assert first["stream"] is True and first["model"] == "m" and first["temperature"] == 0.2
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "shout"]
    assert first["messages"] == messages
    assert second["messages"] == messages + added[:3]  # the tool results go back to the model
    assert messages == [{"role": "user", "content": "2+3?"}]  # the caller's list is not changed


def test_invalid_tool_arguments_go_back_to_the_model_and_the_tool_does_not_run():
    ran = []

    def remember(fact: str) -> str:
        ran.append(fact)
        return "remembered"

    client = ScriptedClient([_call_chunk(0, id="c1", name="remember", arguments='{"fact": 42}')],
                            [_chunk({"content": "Sorry."})])
    added = run_prompt(Endpoint(client, "m", "t"), [], Recorder(), functions={"remember": remember})
    assert ran == []
    assert added[1]["role"] == "tool" and added[1]["content"].startswith("Error: invalid arguments: fact:")
    assert added[-1] == {"role": "assistant", "content": "Sorry."}


def test_a_model_that_never_stops_calling_tools_is_stopped():
    def ping() -> str:
        return "pong"

    client = ScriptedClient(*[[_call_chunk(0, id=f"c{i}", name="ping", arguments="{}")]
                              for i in range(MAX_TOOL_ROUNDS + 5)])
    sink = Recorder()
    run_prompt(Endpoint(client, "m", "t"), [], sink, functions={"ping": ping})
    assert len(client.requests) == MAX_TOOL_ROUNDS
    assert sink.events[-1] == ("finish",)


def test_a_non_streamed_answer():
    def add(a: int, b: int) -> int:
        return a + b

    client = ScriptedClient(
        _completion({"content": None, "reasoning_content": "Adding.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
        _completion({"content": "It is 3.", "reasoning": "Done."}),
    )
    sink = Recorder()
    added = run_prompt(Endpoint(client, "m", "t"), [{"role": "user", "content": "1+2"}], sink,
                       functions={"add": add}, stream=False)
    assert "stream" not in client.requests[0]
    assert sink.text("reasoning") == "Adding.Done." and sink.text("content") == "It is 3."
    assert ("tool", "add", '{"a": 1, "b": 2}', "3") in sink.events
    assert added[-1] == {"role": "assistant", "content": "It is 3."}


def test_without_tools_no_tools_are_sent():
    client = ScriptedClient([_chunk({"content": "hello"})])
    assert run_prompt(Endpoint(client, "m", "t"), [], Recorder()) == [{"role": "assistant", "content": "hello"}]
    assert "tools" not in client.requests[0]


# --- answer helpers ---------------------------------------------------------------------------------------


def test_parse_json_answer():
    assert parse_json_answer('{"a": 1}') == {"a": 1}
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_answer('Sure:\n```\n[1, 2]\n```\nanything else') == [1, 2]
    assert parse_json_answer("Here it is: [1, 2] and more") == [1, 2]
    assert parse_json_answer('The result {"k": [1, {"n": null}]} as asked. {"second": 2}') == {"k": [1, {"n": None}]}
    for bad in ("no json here", "", "{not: json"):
        with pytest.raises(ValueError):
            parse_json_answer(bad)


def test_code_of():
    assert code_of("Sure:\n```python\nprint(1)\n```\nDone") == "print(1)"
    assert code_of("```py\na = 1\n\nb = 2\n```") == "a = 1\n\nb = 2"
    assert code_of("```\nfirst\n```\n```\nsecond\n```") == "first"
    assert code_of("\nx = 1\n") == "x = 1"


# --- the renderer -----------------------------------------------------------------------------------------


class Display:
    """Stands in for IPython's display(): records every bundle shown or updated, and how."""

    def __init__(self):
        self.bundles: list[dict] = []
        self.calls: list[dict] = []

    def __call__(self, obj, **kwargs):
        self.calls.append(kwargs)
        self.bundles.append(obj)
        return self

    def update(self, obj, **kwargs):
        self.calls.append(kwargs)
        self.bundles.append(obj)


def test_the_answer_carries_its_provenance_in_every_display_of_it():
    shown = Display()
    record = {"model": "m", "engine": "vllm", "sampling": {"temperature": 0}}
    renderer = Renderer(True, display=shown, interval=0.0, metadata={"jupyter_hpcllm": record})
    for word in ("one ", "two"):
        renderer.content(word)
    renderer.finish()
    assert len(shown.calls) >= 2 and all(call["metadata"] == {"jupyter_hpcllm": record} for call in shown.calls)


def test_streaming_renders_cost_linear_in_the_answers_length():
    shown = Display()
    renderer = Renderer(True, display=shown, interval=0.0)
    for _ in range(4000):
        renderer.content("token ")
    renderer.finish()
    final = renderer.markdown()
    markdowns = [bundle["text/markdown"] for bundle in shown.bundles]
    assert markdowns[-1] == final == "token " * 4000
    assert len(markdowns) == renderer.renders < 60  # geometric growth: about log1.25(4000 × 6) renders
    assert sum(len(text) for text in markdowns) < 6 * len(final)  # the whole stream: a constant × its size
    assert shown.calls[0] == {"raw": True, "display_id": True, "metadata": {}}  # one display...
    assert all(call == {"raw": True, "metadata": {}} for call in shown.calls[1:])  # ...updated in place


def test_every_render_carries_the_answer_as_text_plain():
    shown = Display()
    renderer = Renderer(True, display=shown, interval=0.0)
    renderer.reasoning("thinking hard")
    renderer.tool("add", '{"a": 1}', "2")
    renderer.content("the **answer**")
    renderer.finish()
    assert all(set(bundle) == {"text/markdown", "text/plain"} for bundle in shown.bundles)
    assert all("IPython" not in bundle["text/plain"] for bundle in shown.bundles)
    assert shown.bundles[-1]["text/plain"] == "the **answer**"
    assert "thinking hard" in shown.bundles[0]["text/plain"]  # before there is an answer: what is shown


def test_code_answers_are_fenced_in_markdown_and_bare_in_text():
    shown = Display()
    renderer = Renderer(True, fmt="code", display=shown, interval=0.0)
    renderer.content("print(1)")
    renderer.finish()
    assert shown.bundles[-1] == {"text/markdown": "```python\nprint(1)\n```", "text/plain": "print(1)"}
    json_renderer = Renderer(True, fmt="json", display=Display())
    json_renderer.content('{"a": 1}')
    assert json_renderer.markdown() == '```json\n{"a": 1}\n```'


def test_reasoning_is_folded_above_the_answer_and_tool_calls_listed():
    renderer = Renderer(True, display=Display(), interval=0.0)
    renderer.reasoning("thinking hard")
    renderer.tool("add", '{"a":  1,\n "b": 2}', "x" * 500)
    renderer.content("the answer")
    text = renderer.markdown()
    assert text.index("<details><summary>Reasoning</summary>") < text.index("thinking hard") < text.index(
        "🔧 `add(") < text.index("the answer")
    assert '`add({"a": 1, "b": 2})`' in text  # whitespace folded
    assert "x" * 199 + "…`" in text and "x" * 200 not in text  # long results cut
    hidden = Renderer(True, show_reasoning=False, display=Display())
    hidden.reasoning("secret")
    hidden.content("shown")
    assert "secret" not in hidden.markdown()


def test_in_a_terminal_the_answer_is_printed_as_it_comes(capsys):
    renderer = Renderer(False)
    renderer.reasoning("hmm ")
    renderer.reasoning("ok")
    renderer.content("Answer")
    renderer.tool("f", "{}", "1")
    renderer.reasoning("again")
    renderer.finish()
    assert capsys.readouterr().out == "[reasoning] hmm ok\n\nAnswer\n[tool] f({}) -> 1\n[reasoning] again\n"
    assert renderer.renders == 0 and renderer.answer.content == "Answer"


# --- the progress display ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedStop:
    """Stands in for the view's stop Event: `wait` is one tick (it moves the fake clock on by the tick);
    after `ticks` of them, or once set, it reports the view stopped, and the ticker thread ends."""

    def __init__(self, clock: FakeClock, ticks: int) -> None:
        self.clock = clock
        self.ticks = ticks
        self.stopped = False

    def wait(self, timeout: float) -> bool:
        if self.stopped or self.ticks == 0:
            return True
        self.ticks -= 1
        self.clock.now += timeout
        return False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped


class HtmlDisplay:
    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, obj, **kwargs):
        self.update(obj)
        return self

    def update(self, obj, **kwargs):
        # What a reader sees: the text, without the markup.
        self.texts.append(" ".join(html.unescape(re.sub(r"<[^>]+>", " ", obj.data)).split()))


@pytest.fixture
def progress_view(monkeypatch):
    from jupyter_hpcllm.notebook import progress
    from jupyter_hpcllm.notebook.progress import ProgressView

    clock = FakeClock(1000.0)
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=clock))

    def make(ticks: int | None = None):
        """A view whose ticker thread makes `ticks` scripted ticks; None: the real Event, and a tick far
        longer than the test (only stop() can end that thread in time)."""
        shown = HtmlDisplay()
        view = ProgressView(True, "gpt-oss-120b", tick=2.0 if ticks is not None else 3600.0, display=shown)
        if ticks is not None:
            view._stopped = ScriptedStop(clock, ticks)
        return view, shown

    return make


def _joined(view):
    view._ticker.join(5)
    return not view._ticker.is_alive()


def test_the_notebook_progress_keeps_ticking_while_a_job_waits(progress_view):
    from jupyter_hpcllm.lifecycle import Progress, Stage

    view, shown = progress_view(ticks=3)
    view(Progress(Stage.PENDING, "7", "Job 7 is pending (waiting for Resources).", 3.0, reason="Resources"))
    assert _joined(view)  # three ticks, then the (scripted) stop
    assert len(shown.texts) == 4
    for text in shown.texts:
        assert text.startswith("gpt-oss-120b — Job 7 is pending (waiting for Resources).")
        assert "stage Pending" in text and "job 7" in text and "waiting for Resources" in text
    assert [re.search(r"elapsed (\d+) s", text).group(1) for text in shown.texts] == ["3", "5", "7", "9"]


def test_the_notebook_progress_stops_on_ready_and_on_failure(progress_view):
    from jupyter_hpcllm.lifecycle import Progress, Stage

    view, shown = progress_view()
    view(Progress(Stage.LOADING, "7", "Loading the weights.", 60.0, node="gpu01", shards=(5, 11)))
    view(Progress(Stage.READY, "7", "Ready.", 95.0, node="gpu01"))
    assert _joined(view) and view._stopped.is_set()
    assert len(shown.texts) == 2
    assert "stage Loading" in shown.texts[0] and "node gpu01" in shown.texts[0] and "weights 5/11" in shown.texts[0]
    assert shown.texts[-1] == "gpt-oss-120b — Ready. stage Ready job 7 node gpu01 elapsed 95 s"

    failing, shown = progress_view()
    failing(Progress(Stage.PENDING, "8", "Job 8 is pending.", 1.0))
    failing.error("Job 8 failed: <oom> & more")
    assert _joined(failing) and failing._stopped.is_set()
    assert shown.texts[-1].startswith("gpt-oss-120b") and shown.texts[-1].endswith("Job 8 failed: <oom> & more")
    assert len(shown.texts) == 2  # no tick after the failure


def test_the_terminal_progress_prints_lines(capsys):
    from jupyter_hpcllm.lifecycle import Progress, Stage
    from jupyter_hpcllm.notebook.progress import ProgressView

    view = ProgressView(False, "m")
    view(Progress(Stage.SUBMITTED, "7", "Submitted job 7.", 0.25))
    view.error("It failed.")
    captured = capsys.readouterr()
    assert captured.out == "[   0.2s] Submitted job 7.\n" and captured.err == "It failed.\n"
    assert view._ticker is None  # no thread in a terminal
