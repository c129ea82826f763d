"""Canary: no input text ever runs as shell. Every remote command really runs under `bash -c` (a sandbox
HOME, stub Slurm and container commands first on PATH, see shellbox.py), and now and then the stub sbatch
runs the job script too, as a compute node would. Options, job ids, model names, engine arguments and the
profile's paths carry `$(touch CANARY)`, backticks, `;`, newlines, quotes and the like through the core
(plan, script, submit, status, logs, cancel, attach, follow, list, models, parsers) and through the CLI.
Properties: the canary file never exists; the stubs never see a malformed call (sbatch: a script that
does not parse, or a header line that is not one `--option=value` directive; scancel/squeue: a job id
that is not one); the engine receives its arguments exactly as given; and nothing but an HpcllmError
(or, from the CLI, exit 0/1/2 without a traceback) comes back."""

from __future__ import annotations

import itertools
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    FUZZ,
    LONG,
    NASTY,
    argv_for,
    assert_no_traceback,
    below,
    captured,
    commands_of,
    injections,
    pick,
)
from hypothesis import event, given
from hypothesis import strategies as st
from shellbox import Sandbox, ShellTransport, ShellWalltime, bash_available

from jupyter_hpcllm import cli
from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.errors import HpcllmError
from jupyter_hpcllm.lifecycle import Cluster

pytestmark = [pytest.mark.fuzz, pytest.mark.skipif(not bash_available(), reason="needs bash")]

MARK = "@CANARY@"  # replaced by the sandbox's canary path
HOSTILE = injections(MARK)
TEXT = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(HOSTILE), st.sampled_from(NASTY),
                 st.lists(st.sampled_from(HOSTILE + NASTY), min_size=2, max_size=3).map("".join),
                 st.text(max_size=10))


def _canary_files(sandbox: Sandbox) -> list[Path]:
    return [p for where in (sandbox.root, sandbox.home, sandbox.state) for p in where.glob("*CANARY*")]


@pytest.fixture(scope="module")
def box(sandbox: Path) -> Iterator[types.SimpleNamespace]:
    box = Sandbox(sandbox / "cluster").make()
    base = replace(load_profile("ebi", path=sandbox / "config.toml"), host="local", model_root=str(box.models),
                   images={"vllm": str(box.root / "vllm.sif"), "sglang": str(box.root / "sglang.sif")}, binds=())
    yield types.SimpleNamespace(sandbox=box, base=base, walltime=ShellWalltime(box))


def _fill(text: str, box: Sandbox) -> str:
    return text.replace(MARK, str(box.canary))


# --- the core ---------------------------------------------------------------------------------------

PROFILE_FIELDS = ["model_root", "runtime_path", "vllm_examples_dir", "sglang_examples_dir", "image", "bind",
                  "runtime_arg"]
# One operation per example (a submission costs some 30 ms of processes, 60 with the script run: the others
# a few ms each).
# (hypothesis draws the first of a list more often than the others: the cheapest come first.)
OPS = ["plan", "models", "logs", "status", "script", "list", "twin", "parsers", "cancel", "attach", "follow", "submit",
       "launch"]


PLAUSIBLE_OPTIONS: dict[str, list[Any]] = {
    "model": ["Qwen3-8B", "Qwen3-8B", "my-finetune", "@MODELS@/Qwen3-8B"], "gpus": [None, 1, 2, 4],
    "engine": [None, "vllm", "sglang"], "gpu_type": [None, "a100", "h200"], "time": [None, "1:00:00", "90"],
    "mem": [None, "64G"], "partition": [None, "gpu"], "account": [None, "lab"], "qos": [None, "normal"],
    "tool_call_parser": [None, "", "hermes"], "reasoning_parser": [None, "", "qwen3"],
}
TEXT_OPTIONS = [name for name in PLAUSIBLE_OPTIONS if name not in ("gpus", "engine")]
HOSTILE_OPTIONS = st.lists(st.sampled_from(TEXT_OPTIONS), max_size=2, unique=True)
ENGINE_ARGS = st.lists(st.one_of(TEXT, st.sampled_from(["--max-model-len", "4096", "--trust-remote-code",
                                                       "--chat-template=x", "--", "-", "--help"])), max_size=4)
HOSTILE_PATHS = st.lists(st.sampled_from(PROFILE_FIELDS), max_size=2, unique=True)


@st.composite
def core_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """What a caller controls: the options (engine arguments above all: they reach the script verbatim; and
    at most two others hostile, so that most launches are valid and reach the shell), a job id, and at
    most two of the profile's paths; each value plausible or hostile."""
    hostile = draw(HOSTILE_OPTIONS) if draw(st.booleans()) else []
    options = {name: draw(TEXT) if name in hostile else draw(pick(tuple(values)))
               for name, values in PLAUSIBLE_OPTIONS.items()}
    options["engine_args"] = tuple(draw(ENGINE_ARGS))
    profile = {field: draw(TEXT) for field in draw(HOSTILE_PATHS)}
    profile["runtime"] = draw(pick(("singularity", "apptainer", "none")))
    job = draw(TEXT) if not draw(below(4)) else draw(pick(("1000", "1001", "1000_1")))
    return {"options": options, "profile": profile, "op": draw(pick(tuple(OPS))), "job": job,
            "lines": draw(pick((1, 50, 100000))), "run_script": draw(below(3)) == 2}


def _profile(box: types.SimpleNamespace, given: dict[str, str]) -> Any:
    sandbox, base = box.sandbox, box.base
    changes: dict[str, Any] = {"runtime": given["runtime"]}
    for field, text in given.items():
        value = _fill(text, sandbox)
        if field == "image":
            changes["images"] = {"vllm": value, "sglang": value}
        elif field == "bind":
            changes["binds"] = (value,)
        elif field == "runtime_arg":
            changes["runtime_args"] = ("--nv", value)
        elif field != "runtime":
            changes[field] = value
    return replace(base, **changes)


def _engine_calls(sandbox: Sandbox) -> list[list[str]]:
    """The engine's runs (its help, asked for the parser names, is not one)."""
    return [call for call in sandbox.calls() if call[0] in ("singularity", "apptainer", "vllm", "python")
            and "--served-model-name" in call]


@FUZZ
@given(given=core_inputs())
def test_no_value_reaches_the_shell_through_the_core(box: types.SimpleNamespace, given: dict[str, Any]) -> None:
    sandbox = box.sandbox
    sandbox.reset(run_scripts=given["run_script"])
    box.walltime.reset()
    # A job of ours already in the queue, with a log: status, logs, cancel and attach find one.
    (sandbox.state / "jobs" / "1000").write_text(
        "1000|hpcllm-Qwen3-8B-0000|RUNNING|node01|1:00:00|None|2030-01-01T00:00:00|hpcllm;model=Qwen3-8B;"
        "engine=vllm|gpu:a100:1|0:01\n")
    (sandbox.home / ".hpcllm" / "jobs" / "1000").mkdir(parents=True)
    (sandbox.home / ".hpcllm" / "jobs" / "1000" / "engine.log").write_text("INFO starting\n")
    try:
        profile = _profile(box, given["profile"])  # a Profile checks its values when made
    except HpcllmError:
        event("profile: refused")
        return
    transport = ShellTransport(profile, sandbox)
    cluster = Cluster(profile, transport=transport, clock=box.walltime.clock, sleep=box.walltime)
    values = {key: (_fill(value, sandbox).replace("@MODELS@", str(sandbox.models)) if isinstance(value, str) else
                    tuple(_fill(v, sandbox) for v in value) if isinstance(value, tuple) else value)
              for key, value in given["options"].items()}
    job, op = _fill(given["job"], sandbox), given["op"]
    try:
        if op == "launch":  # plan, reuse or submit, wait (one virtual second): the whole of `up`
            options = LaunchOptions.from_mapping({**{k: v for k, v in values.items() if v is not None}, "timeout": 1})
            cluster.launch(options).result(timeout=60)
        elif op in ("submit", "plan", "twin", "script"):
            options = LaunchOptions.from_mapping({k: v for k, v in values.items() if v is not None})
            plan = cluster.plan(options, offline=op != "plan")
            if op == "submit":
                cluster.submit(plan)
                if given["run_script"] and sandbox.script_runs() and "runtime_path" not in given["profile"]:
                    engine = _engine_calls(sandbox)
                    assert engine, f"the script ran ({sandbox.script_runs()}) but never started the engine"
                    given_args = list(options.engine_args)
                    assert engine[0][len(engine[0]) - len(given_args):] == given_args, \
                        f"the engine got {engine[0][-len(given_args) - 2:]!r} for {given_args!r}"
            elif op == "twin":
                cluster.find_twin(plan)
            elif op == "script":  # what `hpcllm script` prints, given to sbatch by hand, and run
                (sandbox.home / "job.sh").write_text(plan.script)
                (sandbox.state / "run_scripts").touch()
                transport.run("sbatch --parsable job.sh")
                assert sandbox.script_runs(), "the stub sbatch did not run the script"
        elif op == "status":
            cluster.status(job)
        elif op == "logs":
            cluster.logs(job, lines=given["lines"])
        elif op == "cancel":
            cluster.cancel(job, wait=2)
        elif op == "attach":
            cluster.attach(job, timeout=1)
        elif op == "follow":
            list(itertools.islice(cluster.follow_logs(job, poll=1.0), 3))
        elif op == "list":
            cluster.list()
        elif op == "models":
            cluster.models()
        elif op == "parsers":
            cluster.parsers(given["options"]["engine"], refresh=True)
        event(f"{op}: done")
    except HpcllmError as error:
        assert str(error).strip()
        event(f"{op}: {type(error).__name__}")
    finally:
        cluster.close()
    assert not _canary_files(sandbox), f"{op}: the canary was touched: {_canary_files(sandbox)}"
    assert not sandbox.violations(), f"{op}: {sandbox.violations()}"


# --- the command line -------------------------------------------------------------------------------

CLI_COMMANDS = commands_of(cli.build_parser())


@pytest.fixture(scope="module")
def shell_cli(box: types.SimpleNamespace, sandbox: Path) -> Iterator[types.SimpleNamespace]:
    """`hpcllm` with every cluster reached through the sandbox's shell."""
    config = sandbox / "config.toml"
    config.write_text(
        f'default_profile = "sb"\n[profiles.sb]\npreset = "ebi"\nhost = "local"\nmodel_root = "{box.sandbox.models}"\n'
        f'binds = []\n[profiles.sb.images]\nvllm = "{box.sandbox.root}/vllm.sif"\n'
        f'sglang = "{box.sandbox.root}/sglang.sif"\n')

    def cluster(profile: Any = None, prompt: Any = None) -> Cluster:
        resolved = load_profile(profile)
        return Cluster(resolved, transport=ShellTransport(resolved, box.sandbox), clock=box.walltime.clock,
                       sleep=box.walltime)

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "Cluster", cluster)
        patch.setattr(cli, "time", types.SimpleNamespace(sleep=ctrl_c))
        yield types.SimpleNamespace(config=config, text=config.read_text())


@st.composite
def shell_bound_argv(draw: st.DrawFn) -> list[str]:
    """Argument lists that reach the cluster's shell: a valid launch with hostile engine arguments (and at
    most one hostile option), or a job command with a hostile or real job id."""
    kind = draw(below(4))
    if kind == 3:
        command = draw(pick(("status", "logs", "down", "attach", "forward")))
        return [command, draw(st.one_of(pick(("1000", "1001")), TEXT))]
    command = draw(pick(("script", "plan"))) if kind else "up"
    argv = [command, "Qwen3-8B", *(["--timeout", "1"] if command == "up" else [])]
    if draw(st.booleans()):
        argv += [draw(pick(("--gpu-type", "--partition", "--tool-call-parser", "--engine", "--mem"))), draw(TEXT)]
    return [*argv, "--", *draw(st.lists(TEXT, min_size=1, max_size=3))]


@FUZZ
@given(argv=st.one_of(argv_for(CLI_COMMANDS, MARK), argv_for(CLI_COMMANDS, MARK), argv_for(CLI_COMMANDS, MARK),
                     shell_bound_argv()),
       run_script=below(4).map(lambda n: n == 3))
def test_no_argument_reaches_the_shell_through_the_cli(box: types.SimpleNamespace, shell_cli: types.SimpleNamespace,
                                                       argv: list[str], run_script: bool) -> None:
    sandbox = box.sandbox
    sandbox.reset(run_scripts=run_script)
    box.walltime.reset()
    shell_cli.config.write_text(shell_cli.text)
    argv = [_fill(arg, sandbox) for arg in argv if arg != LONG]  # a long argument costs time, finds nothing here
    with captured() as output:
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = int(exit.code or 0)
    where = f"hpcllm {argv!r}"[:1500]
    assert code in (0, 1, 2), f"{where}: exit code {code}"
    assert_no_traceback(output.text, where)
    assert not _canary_files(sandbox), f"{where}: the canary was touched: {_canary_files(sandbox)}"
    assert not sandbox.violations(), f"{where}: {sandbox.violations()}"
    why = " ".join(output.err.split("hpcllm: ")[-1].split()[:3]) if code == 1 else ""
    event(f"{argv[0] if argv else ''}: exit {code} {why}"[:60])


@pytest.mark.parametrize("model", ["/etc/passwd", "/tmp/" + "a" * 300])
def test_a_model_path_that_is_not_a_directory_is_a_clean_error_on_a_local_profile(box: types.SimpleNamespace,
                                                                                   model: str) -> None:
    transport = ShellTransport(box.base, box.sandbox)
    from jupyter_hpcllm.edge.transport import LocalTransport

    transport.files = LocalTransport(box.base).files  # type: ignore[method-assign,assignment]
    with pytest.raises(HpcllmError):
        Cluster(box.base, transport=transport).plan(model)


def test_the_canary_and_the_stubs_do_catch_what_they_are_for(box: types.SimpleNamespace) -> None:
    """The properties above can fail: text spliced into a command unquoted does touch the canary, and the
    stub sbatch and scancel do report a script that does not parse, a header line that is not one
    directive, and a job id that is not one."""
    sandbox = box.sandbox
    sandbox.reset()
    transport = ShellTransport(box.base, sandbox)
    transport.run(f"echo {_fill(HOSTILE[0], sandbox)}")  # "$(touch CANARY)", unquoted
    assert _canary_files(sandbox)
    sandbox.canary.unlink()
    (sandbox.home / "bad.sh").write_text("#!/bin/bash\n#SBATCH --partition=gpu; touch x\necho hi\n")
    (sandbox.home / "broken.sh").write_text("#!/bin/bash\nif then\n")
    for script in ("bad.sh", "broken.sh"):
        assert transport.run(f"sbatch --parsable {script}", check=False).exit_status == 1
    transport.run("scancel '1000 1001'", check=False)
    problems = sandbox.violations()
    assert "directive: #SBATCH --partition=gpu; touch x" in problems
    assert "the script does not parse" in problems and "scancel got 1 arguments" in problems
