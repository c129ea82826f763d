"""What the fuzz properties share: the hypothesis settings (fixed seed), hostile text, the options each
face really offers (read from its own argparse parser), output capture as a terminal would have it, and
fast fakes (an in-memory cluster whose jobs end after a bounded number of waits)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jupyter_hpcllm.edge.fake import FakeTransport

# HPCLLM_FUZZ_EXAMPLES: more examples for a longer hunt; HPCLLM_FUZZ_EXPLORE=1: other examples on every run
# (random seeds) instead of the fixed ones. The defaults are what CI runs.
EXAMPLES = int(os.environ.get("HPCLLM_FUZZ_EXAMPLES", "2000"))
EXPLORE = os.environ.get("HPCLLM_FUZZ_EXPLORE", "") == "1"

# derandomize: the examples come from a seed fixed by each test's source, the same on every run and
# machine; no example database, so a run never depends on an earlier one.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
)

# --- hostile text ------------------------------------------------------------------------------------

HUGE = "A" * 100_000
LONG = "A" * 4_000  # very long for a command line or an option value (shlex reads 1 µs a character)


def injections(canary: str) -> list[str]:
    """Text that runs `touch CANARY` if it ever reaches a shell unquoted (or quoted the wrong way)."""
    return [
        f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"\ntouch {canary}",
        f"'$(touch {canary})'", f'"$(touch {canary})"', f"&& touch {canary}", f"|| touch {canary}",
        f"| touch {canary}", f"\rtouch {canary}", f"'; touch {canary}; '", f'"; touch {canary}; "',
        f"${{IFS}}touch${{IFS}}{canary}", f"$(touch${{IFS}}{canary})", f"x\\\ntouch {canary}",
        f"<(touch {canary})", f">(touch {canary})", f"'\"`touch {canary}`\"'", f"\n#SBATCH --wrap=touch {canary}\n",
        f"--wrap=touch {canary}", f"$'\\x0a'touch {canary}", f"*;touch {canary}", f"a\n/b; touch {canary}",
        f"~/$(touch {canary})", f"/tmp/$(touch {canary})", f"x=1 touch {canary}", f"%(touch {canary})s",
    ]


NASTY = [
    "", " ", "\t", "\n", "\r\n", "\x00", "\x07", "\x1b[31mred", "\u202eevil", "\u200b", "\ufeff", "²", "١٢",
    "é", "ﬁ", "日本語", "🦙", "'", '"', "\\", "`", "$", "$HOME", "${HOME}", "~", "~/", "/", "..", "../..", "*", "?",
    "[", "]", "!", "#", "=", ",", ":", ";", "|", "&", "<", ">", "(", ")", "{", "}", "{{", "}}", "{x}", "{{x}}",
    "%", "%s", "%(x)s", "-", "--", "---", "-h", "--help", "-1", "0", "1e309", "nan", "inf", "None", "null",
    "True", "[[[[", "]]]]", "A" * 300, "[" * 5000, "{" * 5000,
]


@functools.cache
def hostile_text(canary: str = "/nonexistent/CANARY", *, surrogates: bool = False,
                 huge: str = HUGE) -> st.SearchStrategy[str]:
    """Shell metacharacters, injections, control characters, unicode, random text and, now and then (one
    time in twenty), very long text. `surrogates`: also the lone surrogates an undecodable command-line
    argument becomes (\\udc80-\\udcff)."""
    nasty = NASTY + (["\udcff", "caf\udce9", "\udc80\udc80", "gpu\udcc3"] if surrogates else [])
    atoms = st.one_of(st.sampled_from(injections(canary)), st.sampled_from(nasty),
                      st.text(st.characters(codec="utf-8"), max_size=12))
    joined = st.lists(atoms, min_size=2, max_size=4).map("".join)
    return st.one_of(*[atoms] * 12, *[joined] * 7, st.just(huge))


# --- what a face offers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    strings: tuple[str, ...]  # "--gpus", "-n"
    dest: str
    takes_value: bool
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    name: str
    options: tuple[Option, ...]
    positionals: tuple[str, ...] = field(default=())  # their dest names, in order


def commands_of(parser: argparse.ArgumentParser) -> dict[str, Command]:
    """Each subcommand of a parser, with its options, as argparse itself knows them."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = command_of(name, sub)
    return found


def command_of(name: str, parser: argparse.ArgumentParser) -> Command:
    options, positionals = [], []
    for action in parser._actions:
        if action.option_strings:
            options.append(Option(tuple(action.option_strings), action.dest, action.nargs != 0,
                                  tuple(str(c) for c in action.choices or ())))
        else:
            positionals.append(action.dest)
    return Command(name, tuple(options), tuple(positionals))


# Plausible values by argparse dest (and hostile ones are mixed in by `values_for`).
PLAUSIBLE: dict[str, list[str]] = {
    "model": ["Qwen3-8B", "gpt-oss-20b", "gpt-oss-120b", "my-finetune", "/abs/Qwen3-8B", "~/models/Qwen3-8B",
              "Org/Qwen3-8B", "models--Org--Name", ".", "..", "a/../b", "Qwen3-8B/", " Qwen3-8B", "a\n/b"],
    "gpus": ["1", "2", "4", "8", "0", "-1", "3", "1024", "1025", "99999999999999999999", "1e3", "nan", "inf", "0x4",
             "1_0", " 1", "١"],
    "gpu_type": ["a100", "h200", "v100", "A100", "a100,h200", "a100\n", "gpu:a100"],
    "engine": ["vllm", "sglang", "VLLM", "tgi"],
    "time": ["4:00:00", "90", "1-00:00:00", "0", "99:99", "-1", "1:2:3:4", "4:00:00\n", "UNLIMITED"],
    "cpus": ["1", "16", "0", "-3", "100000", "100001", "2.5"],
    "mem": ["32G", "64000M", "0", "32GB", "1T", "32g", "32G\n", "-1G"],
    "partition": ["gpu", "gpu,short", "gpu\n", "a b", "gpu;x"],
    "account": ["lab", "lab-1", "lab\n"],
    "qos": ["normal", "high", "normal\n"],
    "tool_call_parser": ["", "hermes", "openai", "qwen3_coder", "nope", "a b"],
    "reasoning_parser": ["", "qwen3", "deepseek_r1", "nope"],
    "timeout": ["1", "0.5", "0", "-1", "nan", "inf", "1e-9", "30"],
    "profile": ["ebi", "fz", "nope", "EBI", "fz "],
    "job": ["1000", "1001", "1002", "1003", "1_2", "0", "-1", "²", "١٢", "_1", "1_", " 1000", "1000 ", "99999999999"],
    "lines": ["1", "10", "0", "-5", "99999999999999999999", "x"],
    "port": ["0", "1", "65535", "65536", "-1", "99999999999999999999"],
    "as_name": ["client", "llm", "c2", "get_ipython", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii",
                "_iii", "_i1", "_i12", "_1", "_42", "_oh", "_ih", "_dh", "open", "class", "None", "True", "lambda",
                "1x", "a-b", "a b", "", "é", "ﬁ", "x" * 300, "__builtins__", "print", "match"],
    "url": ["http://127.0.0.1:1/v1", "http://[::1", "", "ftp://x", "http://x:99999", "not a url",
            "http://127.0.0.1:1/v1\n", "http://user@127.0.0.1:1", "//", "http://127.0.0.1:1/v1?x={y}"],
    "key_env": ["OPENAI_API_KEY", "", "X=Y", "\x00", "HOME", "PATH"],
    "action": ["init", "show", "path"],
}
PLAUSIBLE["out"] = PLAUSIBLE["as_name"]
PLAUSIBLE["max_tokens"] = PLAUSIBLE["lines"]
PLAUSIBLE["temperature"] = ["0", "0.7", "-1", "nan", "inf", "1e309", "x"]
PLAUSIBLE["format"] = ["markdown", "code", "text", "json", "yaml"]
PLAUSIBLE["reasoning"] = ["show", "hide", "maybe"]
PLAUSIBLE["system"] = ["Be brief.", "{topic}", "{{topic}}", "{bad_str}"]
PLAUSIBLE["tools"] = ["tool", "tool,shout", "shout", "nope", ",", "print", "len", "bad_callable", "topic", "tool,,"]


@functools.cache
def values_for(dest: str, choices: tuple[str, ...], canary: str, *, surrogates: bool = False) -> st.SearchStrategy[str]:
    plausible = tuple(choices) + tuple(PLAUSIBLE.get(dest, []))
    hostile = hostile_text(canary, surrogates=surrogates, huge=LONG)
    if not plausible:
        return hostile
    return st.one_of(pick(plausible), pick(plausible), hostile)


@functools.cache
def pick(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """sampled_from, made once per tuple of values (a strategy made anew for every draw costs hypothesis
    more than the draw itself)."""
    return st.sampled_from(values)


@functools.cache
def below(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


ENGINE_WORDS = ("--max-model-len", "32768", "--max-model-len=4096", "--port", "--port=1", "--host", "--api-key=x",
                "--model", "--trust-remote-code", "--context-length", "-tp", "8")


@functools.cache
def _engine_args(canary: str, surrogates: bool) -> st.SearchStrategy[list[str]]:
    return st.lists(st.one_of(pick(ENGINE_WORDS), hostile_text(canary, surrogates=surrogates, huge=LONG)),
                    max_size=4)


@st.composite
def argv_for(draw: st.DrawFn, commands: dict[str, Command], canary: str, *, surrogates: bool = False,
             global_options: tuple[str, ...] = ()) -> list[str]:
    """An argument list: a real subcommand (or nonsense), its positionals, a few of its options with
    plausible or hostile values, maybe a stray word, maybe engine arguments after `--`."""
    hostile = hostile_text(canary, surrogates=surrogates, huge=LONG)
    name = draw(hostile) if not draw(below(12)) else draw(pick(tuple(sorted(commands))))
    argv = [draw(pick(global_options))] if global_options and not draw(below(20)) else []
    argv.append(name)
    command = commands.get(name)
    if command is not None:
        for dest in command.positionals:
            if draw(below(10)):  # now and then one is missing
                argv.append(draw(values_for(dest, (), canary, surrogates=surrogates)))
        for _ in range(draw(below(6)) if command.options else 0):
            option = draw(pick(command.options))
            argv.append(draw(pick(option.strings)))
            if option.takes_value and draw(below(15)):
                argv.append(draw(values_for(option.dest, option.choices, canary, surrogates=surrogates)))
    if not draw(below(8)):  # a stray word, rarely before the subcommand
        argv.insert(draw(st.integers(0, len(argv))) if not draw(below(5)) else len(argv), draw(hostile))
    if not draw(below(4)):
        argv += ["--", *draw(_engine_args(canary, surrogates))]
    return argv


# --- output, as a terminal would take it -------------------------------------------------------------


class Captured:
    def __init__(self) -> None:
        # A UTF-8 terminal: stdout is strict (an unencodable character is an error, as it is for a real
        # stdout), stderr replaces (as Python's own stderr does).
        self._out = io.BytesIO()
        self._err = io.BytesIO()
        self.stdout = io.TextIOWrapper(self._out, encoding="utf-8", errors="strict", write_through=True)
        self.stderr = io.TextIOWrapper(self._err, encoding="utf-8", errors="backslashreplace", write_through=True)

    @property
    def out(self) -> str:
        return self._out.getvalue().decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self._err.getvalue().decode("utf-8", "replace")

    @property
    def text(self) -> str:
        return self.out + self.err


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """stdout and stderr of this thread and any other (a launch thread prints progress), and logging's
    last-resort handler (it writes to whatever sys.stderr is when it emits)."""
    capture = Captured()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = capture.stdout, capture.stderr
    try:
        yield capture
    finally:
        sys.stdout, sys.stderr = old


def assert_no_traceback(text: str, where: str) -> None:
    assert "Traceback (most recent call last)" not in text, f"a traceback reached {where}:\n{text[-3000:]}"


def assert_one_paragraph(message: str, where: str) -> None:
    """An error shown to a person: some text, no traceback, no Python exception repr standing in for a
    message."""
    assert message.strip(), f"{where}: an empty error message"
    assert_no_traceback(message, where)
    head = message.split("\nLast lines of the engine log:")[0]  # JobFailed adds the engine's own log
    assert "\n\n" not in head.strip(), f"{where}: the error is not one paragraph: {message[:2000]!r}"


# --- fast fakes --------------------------------------------------------------------------------------


class InstantForward:
    """A forward of the fake cluster with no thread and no socket: its address names the node:port it
    reaches, and `QuickFake.ready` answers for it what the engine's /health and /v1/models would."""

    made = itertools.count(1)

    def __init__(self, host: str, port: int, local_port: int) -> None:
        if not 0 <= local_port <= 65535:
            raise OverflowError("bind(): port must be 0-65535.")  # what a listening socket says
        self.target = (host, port)
        self.address = f"127.0.0.1:{local_port}" if local_port else f"fake-forward-{next(self.made)}:1"
        self.last_refusal: str | None = None
        self.closed = False

    def raise_if_failed(self) -> None:
        pass

    def retarget(self, host: str, port: int) -> None:
        self.target = (host, port)

    def close(self) -> None:
        self.closed = True


class QuickFake(FakeTransport):
    """The shipped FakeTransport with forwards that cost nothing (no HTTP server thread each): whether the
    engine answers is asked of the fake itself (`ready`, a Cluster's ready_check). The fuzz properties look
    at what the faces do with the lifecycle's answers, not at HTTP."""

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Any:
        forward = InstantForward(host, port, local_port)
        with self._lock:
            self.forwards.append(forward)  # type: ignore[arg-type]
        return forward

    def ready(self, address: str, api_key: str) -> bool:
        with self._lock:
            forward = next((f for f in reversed(self.forwards) if f.address == address and not f.closed), None)
        found = self.listening(*forward.target) if forward is not None else None
        return found is not None and found[1].ready and found[1].key == api_key


class Walltime:
    """A cluster's clock and sleep: a sleep returns at once and moves the clock on (by at least 10 ms, as a
    round trip would), and once `limit` seconds of that time have passed in one example every active job
    of the fake reaches its time limit, so that a wait or `logs -f` on a job that never ends ends all the
    same, after a bounded number of steps."""

    def __init__(self, fake: FakeTransport | None = None, limit: float = 900.0) -> None:
        self.fake = fake
        self.limit = limit
        self.now = 1000.0
        self.started = self.now
        self._lock = threading.Lock()

    def reset(self, fake: FakeTransport | None = None) -> None:
        with self._lock:
            self.started = self.now
            if fake is not None:
                self.fake = fake

    def clock(self) -> float:
        with self._lock:
            return self.now

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.now += max(float(seconds), 0.01)
            over = self.now - self.started >= self.limit
        if over and self.fake is not None:
            from jupyter_hpcllm.edge.slurm import JobState

            for job_id, job in list(self.fake.jobs.items()):
                if JobState.parse(job.state).is_active:
                    self.fake.set_state(job_id, "TIMEOUT")


def note(text: str) -> None:
    """hypothesis.event (shown with --hypothesis-show-statistics), also callable outside a property."""
    from hypothesis import event
    from hypothesis.errors import InvalidArgument

    with contextlib.suppress(InvalidArgument):
        event(text)


def raised_in(error: BaseException, module: str) -> bool:
    """Whether the innermost frame of the project in the error's traceback is in `module`
    (e.g. "edge/files.py")."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/jupyter_hpcllm/" in f.filename]
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith("jupyter_hpcllm/" + module)
