"""Property of the command line over an in-memory cluster: whatever argument list `hpcllm` gets (real
subcommands and options with plausible or hostile values, engine arguments after `--`, the lone surrogates
an undecodable argument becomes), `main(argv)` returns 0, 1 or 2 (argparse's own exit for --help, --version
or a usage error is SystemExit 0 or 2), prints no traceback, and an exit code 1 comes with one
`hpcllm: ...` paragraph on stderr. Output goes to a strict UTF-8 stdout, as a terminal's is."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    FUZZ,
    QuickFake,
    Walltime,
    argv_for,
    assert_no_traceback,
    assert_one_paragraph,
    captured,
    commands_of,
)
from hypothesis import event, given
from hypothesis import strategies as st

from jupyter_hpcllm import cli

pytestmark = pytest.mark.fuzz

CONFIG = '[profiles.fz]\npreset = "ebi"\nhost = "fake.invalid"\n'
COMMANDS = commands_of(cli.build_parser())
CANARY = "/nonexistent/hpcllm-fuzz/CANARY"


class _CtrlC:
    """`hpcllm forward` and `up --forward` keep the forward open until Ctrl-C: the first wait is one."""

    @staticmethod
    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def terminal(sandbox: Path) -> Iterator[types.SimpleNamespace]:
    from jupyter_hpcllm.lifecycle import Cluster

    state = types.SimpleNamespace(fake=QuickFake(), walltime=Walltime(), config=sandbox / "config.toml")

    def cluster(profile: Any = None, prompt: Any = None) -> Cluster:
        return Cluster(profile, transport=state.fake, clock=state.walltime.clock, sleep=state.walltime,
                       ready_check=lambda address, key: state.fake.ready(address, key))

    with pytest.MonkeyPatch.context() as patch:
        # main() builds its argparse parser on every call (most of a failing call's cost, gettext lookups
        # included): the same parser, made once, parses the same way.
        parser = cli.build_parser()
        patch.setattr(cli, "build_parser", lambda: parser)
        patch.setattr(cli, "Cluster", cluster)
        patch.setattr(cli, "time", types.SimpleNamespace(sleep=_CtrlC.sleep, monotonic=lambda: 0.0))
        yield state
    state.fake.close()


def _main(argv: list[str]) -> tuple[int, str, str]:
    with captured() as output:
        try:
            code = cli.main(argv)
        except SystemExit as exit:  # argparse: --help, --version (0) or a usage error (2)
            assert exit.code in (0, 2), f"hpcllm {argv!r}: SystemExit({exit.code!r})"
            code = int(exit.code or 0)
    return code, output.out, output.err


def _queue(terminal: types.SimpleNamespace, jobs: int, probes: int) -> None:
    """Jobs already on the fake cluster (so `status`, `logs`, `attach`, `forward`, `down` have one, or
    several), each `probes` steps on: pending, running, loading, then serving."""
    from jupyter_hpcllm.config.profiles import load_profile
    from jupyter_hpcllm.lifecycle import Cluster

    cluster = Cluster(load_profile("fz"), transport=terminal.fake, clock=terminal.walltime.clock,
                      sleep=terminal.walltime)
    for gpus in range(1, jobs + 1):
        job = cluster.submit(cluster.plan("Qwen3-8B", gpus=gpus, offline=True))
        for _ in range(probes):
            cluster.status(job)


@FUZZ
@given(runs=st.lists(argv_for(COMMANDS, CANARY, surrogates=True, global_options=("--version",)), min_size=1,
                     max_size=2),
       jobs=st.sampled_from([0, 0, 1, 1, 1, 2]), probes=st.integers(0, 6))
def test_any_argument_list_exits_0_1_or_2_without_a_traceback(terminal: types.SimpleNamespace,
                                                              runs: list[list[str]], jobs: int, probes: int) -> None:
    terminal.fake.close()
    terminal.fake = QuickFake()
    terminal.walltime.reset(terminal.fake)
    terminal.config.write_text(CONFIG)  # `config init --force` may have replaced it
    _queue(terminal, jobs, probes)
    for argv in runs:
        code, out, err = _main(argv)
        where = f"hpcllm {argv!r}"[:2000]
        assert code in (0, 1, 2), f"{where}: exit code {code}"
        assert_no_traceback(out + err, where)
        if code == 1:  # progress lines may come first; the error is the last `hpcllm: ` paragraph
            lines = err.splitlines()
            starts = [i for i, line in enumerate(lines) if line.startswith("hpcllm: ")]
            assert starts, f"{where}: exit code 1 without an `hpcllm: ` message: {err[-500:]!r}"
            assert_one_paragraph("\n".join(lines[starts[-1]:]).removeprefix("hpcllm: "), where)
        event(f"exit {code}" + (": " + " ".join(err.split()[1:3])[:30] if code else ""))


@pytest.mark.parametrize(("argv", "message"), [
    (["up", "Qwen3-8B", "--forward", "--port", "-1"], "argument --port: a local port (0: any free one) is 0 to 65,535"),
    (["forward", "1000", "--port", "70000"], "argument --port: a local port (0: any free one) is 0 to 65,535"),
    (["logs", "1000", "-n", "0"], "argument -n/--lines: the number of lines is 1 to 1,000,000, not 0"),
    (["logs", "-n", "99999999999999999999"], "the number of lines is 1 to 1,000,000"),
    (["plan", "Qwen3-8B", "--", "--max-model-len", "4096\udcff"], "is not valid UTF-8 text"),
    (["script", "caf\udce9"], "is not valid UTF-8 text"),
    (["list", "--profile", "\n\ntouch /tmp/x"], "is not a profile name (it has a line break or control character)"),
])
def test_cli_inputs_found_by_fuzzing_are_usage_errors(terminal: types.SimpleNamespace, argv: list[str],
                                                      message: str) -> None:
    """Found by the property above: an out-of-range --port was an OverflowError from bind() after the
    launch, -n 0 printed 100 lines, and an undecodable argument a UnicodeEncodeError (in the job's digest,
    or when printed)."""
    code, out, err = _main(argv)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


def test_launch_options_refuse_text_that_is_not_utf8(terminal: types.SimpleNamespace) -> None:
    from jupyter_hpcllm.config.profiles import load_profile
    from jupyter_hpcllm.errors import HpcllmError
    from jupyter_hpcllm.lifecycle import Cluster

    terminal.config.write_text(CONFIG)
    cluster = Cluster(load_profile("fz"), transport=terminal.fake)
    with pytest.raises(HpcllmError):
        cluster.plan("Qwen3-8B", engine_args=("--max-model-len", "4096\udcff"), offline=True)
