"""Properties of the magics in a real InteractiveShell, over an in-memory cluster: whatever `%hpcllm` line or
`%%llm` cell a notebook runs (real subcommands and options with plausible or hostile values, broken quotes,
newlines, `$(...)`, unicode, very long text; `{name}` of values that cannot be shown), the cell either works
or fails with IPython's clean one-paragraph error (UsageError): no other exception leaves the magic, no
traceback is printed, IPython's traceback display is never called, and none of IPython's own names (In,
Out, _, get_ipython, exit, ...) is overwritten. Plus plain tests of the --as/--out names refused."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fuzzkit import (
    FUZZ,
    QuickFake,
    Walltime,
    argv_for,
    assert_no_traceback,
    assert_one_paragraph,
    captured,
    command_of,
    commands_of,
    hostile_text,
    note,
)
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from jupyter_hpcllm.chat.prompt import Endpoint
from jupyter_hpcllm.notebook import magics as magics_module

pytestmark = pytest.mark.fuzz

PROTECTED = ["get_ipython", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh",
             "open", "_i1", "_1", "_i12", "_42"]
_MISSING = object()


class OfflineOpenAI(openai.OpenAI):
    """No network in the tests: a client for 127.0.0.1 (the fake cluster's forwards) is the real one; for
    any other host (`%hpcllm use URL`) listing the models fails at once, as an unreachable host would,
    without DNS or retries. The URL is parsed by the real client all the same."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("max_retries", 0)
        super().__init__(**options)
        if self.base_url.host != "127.0.0.1":
            def refused() -> Any:
                raise ConnectionRefusedError(f"no network in the fuzz tests ({self.base_url.host})")

            self.__dict__["models"] = types.SimpleNamespace(list=refused)  # over the cached property


class EchoClient:
    """`chat.completions.create` as a server would answer: the request serialised as the openai client
    sends it (strict UTF-8 JSON, no NaN), then "Echo: <last user text>", streamed or whole; with tools, a
    call of the first tool (its arguments: the user's text) before the answer."""

    def __init__(self) -> None:
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=self._create))

    def _create(self, **request: Any) -> Any:
        json.dumps(request, ensure_ascii=False, allow_nan=False).encode("utf-8")
        messages = request["messages"]
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        message: dict[str, Any] = {"role": "assistant", "content": f"Echo: {user}"[:20_000]}
        if request.get("tools") and messages[-1]["role"] == "user":
            name = request["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": user[:2000]}}]}
        if not request.get("stream"):
            return ChatCompletion.model_validate({"id": "c", "object": "chat.completion", "created": 0,
                                                  "model": request["model"], "choices": [
                                                      {"index": 0, "finish_reason": "stop", "message": message}]})
        delta = dict(message)
        if "tool_calls" in delta:
            delta["tool_calls"] = [{**delta["tool_calls"][0], "index": 0}]
        text = delta.pop("content") or ""
        pieces = [{**delta, "content": text[:5]}, {"content": text[5:]}, {"reasoning_content": "thinking"}]
        return iter(ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "delta": piece, "finish_reason": None}]}) for piece in pieces)


class RaisingStr:
    def __str__(self) -> str:
        raise ValueError("__str__ failed")


class Recursing:
    def __str__(self) -> str:
        return str(self)


class BadCallable:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("called")


def tool(x: int = 0, text: str = "") -> str:
    """A tool the model may call."""
    return f"tool({x}, {text!r})"


def shout(text: str) -> dict[str, Any]:
    return {"text": text.upper(), "self": None}


NAMESPACE: dict[str, Any] = {
    "topic": "Slurm", "huge": "B" * 200_000, "number": 10**100, "nested": {"a": {"b": ["{topic}"]}},
    "bad_str": RaisingStr(), "recursing": Recursing(), "digits": 10**5000, "surrogate": "\udcff",
    "tool": tool, "shout": shout, "bad_callable": BadCallable(), "len": len,
}


@pytest.fixture(scope="module")
def notebook(sandbox: Path) -> Iterator[types.SimpleNamespace]:
    """A real InteractiveShell with the extension loaded; every profile's cluster is one in-memory fake
    (jobs end after a bounded number of waits), and the OpenAI client never leaves 127.0.0.1."""
    (sandbox / "config.toml").write_text('[profiles.fz]\npreset = "ebi"\nhost = "fake.invalid"\n')
    from jupyter_hpcllm.lifecycle import Cluster, shared

    fake = QuickFake()
    walltime = Walltime(fake)
    clusters: dict[str, Cluster] = {}

    def cluster_for(profile: Any = None, prompt: Any = None) -> Cluster:
        from jupyter_hpcllm.config.profiles import load_profile

        resolved = profile if hasattr(profile, "host") else load_profile(profile)
        if resolved.name not in clusters:
            clusters[resolved.name] = Cluster(resolved, transport=fake, clock=walltime.clock, sleep=walltime,
                                              ready_check=fake.ready)
        return clusters[resolved.name]

    with pytest.MonkeyPatch.context() as patch:
        # The magics build their argparse parser on every call (2 ms, most of a failing line's cost here):
        # the same parser, made once, parses the same way (parse_args keeps no state between calls).
        hpcllm_parser, llm_parser = magics_module._hpcllm_parser(), magics_module._llm_parser()
        patch.setattr(magics_module, "_hpcllm_parser", lambda: hpcllm_parser)
        patch.setattr(magics_module, "_llm_parser", lambda: llm_parser)
        patch.setattr(magics_module, "cluster_for", cluster_for)
        patch.setattr(shared, "cluster_for", cluster_for)
        patch.setattr(openai, "OpenAI", OfflineOpenAI)
        InteractiveShell.clear_instance()
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "jupyter_hpcllm")
        shown: list[Any] = []
        patch.setattr(shell, "showtraceback", lambda *a, **k: shown.append(("showtraceback", a, k)))
        patch.setattr(shell, "showsyntaxerror", lambda *a, **k: shown.append(("showsyntaxerror", a, k)))
        shell.user_ns.update(NAMESPACE)
        magics = shell.magics_manager.registry["HpcllmMagics"]
        try:
            yield types.SimpleNamespace(shell=shell, magics=magics, fake=fake, walltime=walltime, shown=shown)
        finally:
            if magics.launching is not None:
                magics.launching.stop(5)
            if magics.server is not None:
                magics.server.close()
            fake.close()
            InteractiveShell.clear_instance()


def _protected(shell: Any) -> dict[str, int]:
    names = set(PROTECTED) | set(shell.user_ns_hidden)
    return {name: id(shell.user_ns.get(name, _MISSING)) for name in names}


def _run(notebook: types.SimpleNamespace, run: Any, where: str) -> None:
    """Run one magic as a notebook cell would; the property's checks."""
    before = _protected(notebook.shell)
    notebook.walltime.reset()
    with captured() as output:
        try:
            run()
            note("worked")
        except UsageError as error:  # IPython shows it as one red line: the magics' clean failure
            assert_one_paragraph(str(error), where)
            note("failed cleanly: " + " ".join(str(error).split()[:3])[:40])
        finally:
            launching = notebook.magics.launching
            if launching is not None and not launching.done():
                assert launching.join(30), f"{where}: a background launch did not end"
            if launching is not None:
                launching.join(30)  # its done-callback (adopting the server) has run
            widgets = sys.modules.get("ipywidgets")
            if widgets is not None:  # `%hpcllm panel` made one: closed, its threads end (as a closed tab's)
                widgets.Widget.close_all()
    assert_no_traceback(output.text, where)
    assert notebook.shown == [], f"{where}: IPython was asked to show a traceback: {notebook.shown}"
    assert _protected(notebook.shell) == before, f"{where}: one of IPython's own names was overwritten"


def line_magic(shell: Any, line: str) -> Any:
    """`%hpcllm line` as a cell runs it. IPython first expands `$name` and `{expr}` in a magic's line; its
    expansion takes quadratic time on thousands of braces, so a very long line goes to the magic as
    IPython would hand it over after that step."""
    if len(line) > 2000:
        return shell.find_line_magic("hpcllm")(line)
    return shell.run_line_magic("hpcllm", line)


def cell_magic(shell: Any, line: str, cell: str) -> Any:
    if len(line) > 2000:
        return shell.find_cell_magic("llm")(line, cell)
    return shell.run_cell_magic("llm", line, cell)


LINE_COMMANDS = commands_of(magics_module._hpcllm_parser())
CANARY = "/nonexistent/hpcllm-fuzz/CANARY"


@st.composite
def hpcllm_lines(draw: st.DrawFn) -> str:
    argv = draw(argv_for(LINE_COMMANDS, CANARY, surrogates=True))
    if draw(st.integers(0, 9)):
        import shlex

        return " ".join(shlex.quote(word) for word in argv)
    return " ".join(argv)  # as typed, quotes unbalanced and all


@FUZZ
@given(lines=st.lists(hpcllm_lines(), min_size=1, max_size=2))
def test_any_hpcllm_line_works_or_fails_in_one_paragraph(notebook: types.SimpleNamespace, lines: list[str]) -> None:
    for line in lines:
        _run(notebook, lambda line=line: line_magic(notebook.shell, line), f"%hpcllm {line[:300]!r}")


LLM_OPTIONS = magics_module._llm_parser()


@st.composite
def llm_cells(draw: st.DrawFn) -> tuple[str, str]:
    command = command_of("%%llm", LLM_OPTIONS)
    argv = draw(argv_for({"%%llm": command}, CANARY))[1:]
    import shlex

    line = " ".join(shlex.quote(word) for word in argv) if draw(st.integers(0, 9)) else " ".join(argv)
    names = st.sampled_from([*NAMESPACE, "unknown", "In", "_"]).map(lambda n: "{" + n + "}")
    body = draw(st.lists(st.one_of(names, hostile_text(CANARY), st.sampled_from(
        ["{{topic}}", '{"x": 1, "text": "hi"}', "```json\n[1, 2]\n```", "[" * 100_000, "{", "}"])),
        min_size=1, max_size=5))
    return line, "".join(body)


@FUZZ
@given(cell=llm_cells())
def test_any_llm_cell_works_or_fails_in_one_paragraph(notebook: types.SimpleNamespace, cell: tuple[str, str]) -> None:
    line, body = cell
    magics = notebook.magics
    if magics.launching is None or magics.launching.done():
        magics.server = None
        magics.endpoint = Endpoint(EchoClient(), "echo", "a test double")
    _run(notebook, lambda: cell_magic(notebook.shell, line, body), f"%%llm {line[:200]!r} / {body[:200]!r}")


# --- plain tests: the names a magic stores a value under ----------------------------------------------

REFUSED = ["get_ipython", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii", "_i1", "_i12", "_1",
           "_42", "_oh", "_ih", "_dh", "open", "class", "None", "lambda", "1x", "a-b", "a b", "", "ﬁ", "x.y"]


@pytest.mark.parametrize("name", REFUSED)
def test_as_and_out_refuse_keywords_non_identifiers_and_ipython_names(notebook: types.SimpleNamespace,
                                                                       name: str) -> None:
    shell, magics = notebook.shell, notebook.magics
    before = _protected(shell)
    magics.endpoint = Endpoint(EchoClient(), "echo", "a test double")
    runs: list[Any] = [
        lambda: shell.run_line_magic("hpcllm", f"use http://127.0.0.1:1/v1 --model m --as {name!r}"),
        lambda: shell.run_line_magic("hpcllm", f"up Qwen3-8B --profile fz --as {name!r}"),
        lambda: shell.run_line_magic("hpcllm", f"attach 1000 --as {name!r}"),
        lambda: shell.run_cell_magic("llm", f"--out {name!r}", "hello")]
    for run in runs:
        with pytest.raises(UsageError) as failed:
            run()
        message = str(failed.value)
        assert "Choose another name" in message and "\n" not in message, message
    assert _protected(shell) == before
    assert not notebook.fake.commands or all("sbatch" not in c for c in notebook.fake.commands[-3:])


@pytest.mark.parametrize("name", ["client", "llm2", "answer", "é", "_private", "match"])
def test_as_and_out_take_plain_variable_names(notebook: types.SimpleNamespace, name: str) -> None:
    shell, magics = notebook.shell, notebook.magics
    with captured():
        shell.run_line_magic("hpcllm", f"use http://127.0.0.1:1/v1 --model m --as {name}")
    assert isinstance(shell.user_ns[name], openai.OpenAI)
    magics.endpoint = Endpoint(EchoClient(), "echo", "a test double")
    with captured():
        shell.run_cell_magic("llm", f"--out {name} --no-stream", "hello")
    assert shell.user_ns[name] == "Echo: hello"


def test_tools_refuse_ipythons_own_callables(notebook: types.SimpleNamespace) -> None:
    notebook.magics.endpoint = Endpoint(EchoClient(), "echo", "a test double")
    for name in ("exit", "get_ipython", "open"):
        with pytest.raises(UsageError, match="is not a function defined in this notebook"):
            notebook.shell.run_cell_magic("llm", f"--tools {name}", "hi")


@pytest.mark.parametrize(("line", "cell", "message"), [
    ("", "Explain {topic} and {bad_str}.", "{bad_str} in the prompt cannot be"),
    ("", "Explain {topic} and {bad_str}.", "ValueError: __str__ failed"),
    ("-s '{recursing}'", "hi", "{recursing} in the prompt cannot be"),
    ("-f json", "[" * 100_000, "the answer is not valid JSON"),
    ("-t nan", "hi", "-t takes a temperature of 0 or more, not nan"),
    ("--max-tokens 0", "hi", "--max-tokens takes a number of tokens from 1 up"),
])
def test_llm_failures_found_by_fuzzing_are_one_line(notebook: types.SimpleNamespace, line: str, cell: str,
                                                    message: str) -> None:
    notebook.magics.endpoint = Endpoint(EchoClient(), "echo", "a test double")
    with captured(), pytest.raises(UsageError) as failed:
        notebook.shell.run_cell_magic("llm", line, cell)
    assert message in str(failed.value) and "\n" not in str(failed.value)


@pytest.mark.parametrize(("line", "message"), [
    ("use 'http://[::1' --model m", "is not a URL the OpenAI client takes"),
    ("logs 1000 -n 0", "-n takes a number of lines from 1"),
    ("logs 1000 -n 99999999999999999999", "-n takes a number of lines from 1"),
    ("list --profile '\n\ntouch /tmp/x'", "is not a profile name (it has a line break or control character)"),
    ("script Qwen3-8B -- --max-model-len 4096\udcff", "the options are not valid text ('\\udcff' at position 39)"),
])
def test_hpcllm_failures_found_by_fuzzing_are_one_line(notebook: types.SimpleNamespace, line: str,
                                                       message: str) -> None:
    with captured(), pytest.raises(UsageError) as failed:
        notebook.shell.run_line_magic("hpcllm", line)
    assert message in str(failed.value) and "\n" not in str(failed.value)




def test_the_property_checks_do_catch_what_they_are_for(notebook: types.SimpleNamespace) -> None:
    """The properties above can fail: another exception than UsageError leaves `_run`, a printed traceback,
    a multi-paragraph error and an overwritten IPython name are each reported."""
    def raising() -> None:
        raise ValueError("a bug")

    def printing() -> None:
        print("Traceback (most recent call last):\n  ...")

    def two_paragraphs() -> None:
        raise UsageError("one\n\ntwo")

    with pytest.raises(ValueError):
        _run(notebook, raising, "raising")
    for run in (printing, two_paragraphs):
        with pytest.raises(AssertionError):
            _run(notebook, run, run.__name__)
    saved = notebook.shell.user_ns["Out"]
    try:
        with pytest.raises(AssertionError, match="IPython's own names"):
            _run(notebook, lambda: notebook.shell.user_ns.update(Out={}), "overwriting Out")
    finally:
        notebook.shell.user_ns["Out"] = saved
