"""`hpcllm`: the command line, a thin layer over the lifecycle API."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import profiles
from ._version import __version__
from .errors import ConfigError, HpcllmError

if TYPE_CHECKING:
    from .families import Family
    from .plan import LaunchPlan

DESCRIPTION = """\
Run a large open LLM (vLLM or SGLang) on a Slurm GPU cluster and talk to it with any OpenAI client.

  hpcllm models                                the models on the cluster: size, family, parsers, GPUs
  hpcllm plan gpt-oss-120b                     what `up` would choose (parsers, GPUs) and why
  hpcllm script gpt-oss-120b --gpus 4          show the sbatch script, without connecting
  hpcllm up gpt-oss-120b --forward             start it (or reuse the same running job), then forward it
  hpcllm list                                  your servers on the cluster
  hpcllm logs -f                               follow the engine log
  hpcllm down                                  cancel the job and free the GPUs

Clusters are profiles in a TOML file (`hpcllm config init` writes one; `hpcllm config show` prints the
resolved profile). The built-in profile `ebi` reproduces EBI's runbook.
"""


_ENGINE_ARGS_HELP = """\
Arguments after `--` go to the engine verbatim, e.g.
  hpcllm up Qwen3-8B --gpus 1 -- --max-model-len 32768 --gpu-memory-utilization 0.85
"""


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """The options of `up`, `script` and `plan` (shared with the `%hpcllm` magic)."""
    parser.add_argument("model", help="a directory name under the profile's model root, or an absolute path")
    parser.add_argument("--gpus", type=int, help="number of GPUs (= tensor-parallel size); default: profile")
    parser.add_argument("--gpu-type", help="GPU type, as the profile lists it (e.g. a100, h200)")
    parser.add_argument("--engine", choices=profiles.ENGINES, help="inference engine; default: profile")
    parser.add_argument("--time", help="Slurm time limit, e.g. 4:00:00 or 1-00:00:00")
    parser.add_argument("--cpus", type=int, help="CPUs per task")
    parser.add_argument("--mem", help="memory per node, e.g. 32G")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--qos", help="Slurm QOS")
    parser.add_argument("--tool-call-parser", help="override the tool-call parser chosen for the model ('' for none)")
    parser.add_argument("--reasoning-parser", help="override the reasoning parser chosen for the model ('' for none)")


def launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `up` / `plan_launch` from what add_launch_options parsed."""
    return dict(gpus=args.gpus, gpu_type=args.gpu_type, engine=args.engine, time=args.time, cpus=args.cpus,
                mem=args.mem, partition=args.partition, account=args.account, qos=args.qos,
                tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser,
                engine_args=tuple(args.engine_args))


def _profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", "-p", help="cluster profile (default: $HPCLLM_PROFILE or the config's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcllm", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jupyter-hpcllm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        epilog = _ENGINE_ARGS_HELP if name in ("up", "script", "plan") else None
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("up", "start a model server (or reuse the same pending/running one) and wait until it answers",
                  _cmd_up)
    add_launch_options(sub)
    _profile_option(sub)
    sub.add_argument("--timeout", type=float, help="give up (and cancel the job) after this many seconds")
    sub.add_argument("--no-reuse", action="store_true", help="submit a new job even if the same one is running")
    sub.add_argument("--forward", action="store_true",
                     help="once ready, keep a local port forward open (Ctrl-C ends it)")
    sub.add_argument("--port", type=int, default=0, help="local port for --forward (default: any free one)")
    sub.add_argument("--check-parsers", action="store_true",
                     help="first ask the engine image which parser names it knows (cached per image)")

    sub = command("script", "print the sbatch script `up` would submit, without connecting", _cmd_script)
    add_launch_options(sub)
    _profile_option(sub)


    sub = command("plan", "read the model's facts on the cluster and show the parsers, the allocation and why",
                  _cmd_plan)
    add_launch_options(sub)
    _profile_option(sub)
    sub.add_argument("--script", action="store_true", help="also print the sbatch script")
    sub.add_argument("--refresh", action="store_true", help="re-read the model's facts (they are cached)")
    sub.add_argument("--check-parsers", action="store_true", help="check the parser names against the image")

    sub = command("models", "list the models under the profile's model root, with size, family, parsers and "
                  "the suggested allocation", _cmd_models)
    _profile_option(sub)

    sub = command("parsers", "list the tool-call and reasoning parsers an engine image registers", _cmd_parsers)
    sub.add_argument("--engine", choices=profiles.ENGINES, help="engine (default: the profile's)")
    sub.add_argument("--refresh", action="store_true", help="ask the image again (answers are cached)")
    _profile_option(sub)

    sub = command("list", "list your jupyter-hpcllm jobs (pending and running)", _cmd_list)
    _profile_option(sub)

    sub = command("status", "show one job's state (default: your only job)", _cmd_status)
    sub.add_argument("job", nargs="?", help="job id")
    _profile_option(sub)

    sub = command("logs", "print the engine log of a job (the API key is redacted)", _cmd_logs)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("-n", "--lines", type=int, default=100, help="how many lines (default 100)")
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    _profile_option(sub)

    sub = command("down", "cancel a job and free its GPUs", _cmd_down)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("--all", action="store_true", help="cancel all your jupyter-hpcllm jobs")
    _profile_option(sub)

    sub = command("attach", "wait until a job's server answers, and print how to reach it", _cmd_attach)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    _profile_option(sub)

    sub = command("forward", "forward a local port to a job's server until Ctrl-C", _cmd_forward)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("--port", type=int, default=0, help="local port (default: any free one)")
    sub.add_argument("--show-key", action="store_true",
                     help="also print `export OPENAI_API_KEY=...` (the key is secret: mind your terminal log)")
    _profile_option(sub)

    sub = command("config", "write, show or locate the config file", _cmd_config)
    sub.add_argument("action", choices=("init", "show", "path"), help="init: write a commented starter file; "
                     "show: print the resolved profile; path: print the config file's path")
    sub.add_argument("--force", action="store_true", help="with init: overwrite an existing file")
    _profile_option(sub)
    return parser


def _plan_from(args: argparse.Namespace, *, connect: bool = True) -> LaunchPlan:
    """The plan for the options; with `connect`, sized and typed from the model's facts on the cluster."""
    options = launch_options(args)
    profile = profiles.load_profile(args.profile)
    if not connect:
        from .plan import plan_launch

        return plan_launch(profile, args.model, **options)
    from .lifecycle import plan_for

    plan = plan_for(args.model, profile=profile, refresh=getattr(args, "refresh", False), **options)
    if getattr(args, "check_parsers", False):
        from .imageprobe import check_plan_parsers

        check_plan_parsers(plan)
    return plan


def _print_progress(progress: object) -> None:
    from .lifecycle import Progress

    assert isinstance(progress, Progress)
    print(f"[{progress.elapsed:6.1f}s] {progress.message}", file=sys.stderr, flush=True)


def _cmd_script(args: argparse.Namespace) -> int:
    plan = _plan_from(args, connect=False)
    for note in plan.notes:
        print(f"# note: {note}", file=sys.stderr)
    sys.stdout.write(plan.script)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .plan import describe_plan

    plan = _plan_from(args)
    sys.stdout.write(describe_plan(plan))
    if args.script:
        sys.stdout.write("\n" + plan.script)
    return 0


def models_rows(profile: profiles.Profile) -> list[tuple[str, ...]]:
    """The table of `hpcllm models` (and `%hpcllm models`): a header row, then one row per model."""
    from .facts import list_models
    from .families import detect_family
    from .sizing import choose_allocation

    rows: list[tuple[str, ...]] = [("MODEL", "SIZE", "FAMILY", "VLLM TOOL/REASONING", "SGLANG TOOL/REASONING",
                                    "SUGGESTED")]
    for facts in list_models(profile):
        family = detect_family(facts.model_type, facts.architectures, facts.chat_template, facts.name)
        try:
            allocation = choose_allocation(profile, facts)[0].describe() if facts.heads else "?"
        except ConfigError:
            allocation = "does not fit"

        def parsers(engine: str, family: Family | None = family) -> str:
            if family is None:
                return "—"
            chosen = family.parsers(engine)
            return f"{chosen.tool or '—'}/{chosen.reasoning or '—'}"

        rows.append((facts.name, f"{facts.weight_gb:.1f} GB", family.name if family else "unknown",
                     parsers("vllm"), parsers("sglang"), allocation))
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    print_table(models_rows(profiles.load_profile(args.profile)))
    return 0


def _cmd_parsers(args: argparse.Namespace) -> int:
    from .imageprobe import image_parsers

    profile = profiles.load_profile(args.profile)
    engine = args.engine or profile.default_engine
    found = image_parsers(profile, engine, refresh=args.refresh)
    print(f"{engine} image {profile.image(engine)}")
    print(f"  tool-call parsers: {', '.join(found['tool']) or '(none listed)'}")
    print(f"  reasoning parsers: {', '.join(found['reasoning']) or '(none listed)'}")
    return 0


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def split_engine_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the engine's): everything after the first `--` belongs to the engine."""
    if "--" in argv:
        return argv[: argv.index("--")], argv[argv.index("--") + 1:]
    return argv, []


def _cmd_up(args: argparse.Namespace) -> int:
    from .lifecycle import launch

    plan = _plan_from(args)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    server = launch(plan, on_progress=_print_progress, timeout=args.timeout, reuse=not args.no_reuse)
    print(f"Job {server.job_id} serves {server.model!r} ({server.engine}) on {server.node}:{server.port}.")
    if args.forward:
        server.close()
        return _serve_forward(server.profile, server.job_id, args.port, show_key=False)
    server.close()
    print(f"Reach it with `hpcllm forward {server.job_id}`, or in Python: "
          f"`jupyter_hpcllm.attach({server.job_id!r}).client()`. Stop it with `hpcllm down {server.job_id}`.")
    return 0


def _only_job(args: argparse.Namespace) -> str:
    if args.job:
        return str(args.job)
    from .lifecycle import list_servers

    jobs = list_servers(args.profile)
    if len(jobs) == 1:
        return jobs[0].job_id
    if not jobs:
        raise ConfigError("You have no jupyter-hpcllm jobs on this cluster.", "Start one with `hpcllm up MODEL`.")
    raise ConfigError(f"You have {len(jobs)} jupyter-hpcllm jobs: {', '.join(j.job_id for j in jobs)}.",
                      "Name the one you mean.")


def _cmd_list(args: argparse.Namespace) -> int:
    from .lifecycle import list_servers

    jobs = list_servers(args.profile)
    if not jobs:
        print("No jupyter-hpcllm jobs. Start one with `hpcllm up MODEL`.")
        return 0
    rows = [("JOB", "STATE", "MODEL", "ENGINE", "NODE", "LEFT/REASON")]
    rows += [(j.job_id, j.state.value, j.model or "?", j.engine or "?", j.node or "-",
              j.time_left or f"({j.reason})" + (f" start {j.expected_start}" if j.expected_start else ""))
             for j in jobs]
    print_table(rows)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .slurm import parse_probe, probe_command
    from .transport import transport_for

    job = _only_job(args)
    probe = parse_probe(transport_for(profiles.load_profile(args.profile)).run(probe_command(job, log_bytes=0)).stdout)
    if probe.row is None:
        print(f"Job {job}: not in the queue (ended, or never existed).")
        return 1
    row = probe.row
    print(f"Job {job}: {row.raw_state}")
    for label, value in (("model", row.comment_field("model")), ("engine", row.comment_field("engine")),
                         ("node", row.node), ("time left", row.time_left if row.node else None),
                         ("reason", None if row.node else row.reason),
                         ("started" if row.node else "expected start", row.start_time),
                         ("port", str(probe.server["port"]) if probe.server else None)):
        if value:
            print(f"  {label:15} {value}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from .lifecycle import follow_logs
    from .slurm import log_command
    from .transport import transport_for

    job = _only_job(args)
    transport = transport_for(profiles.load_profile(args.profile))
    if args.follow:
        for chunk in follow_logs(transport, job):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return 0
    result = transport.run(log_command(job, lines=args.lines), check=False)
    if result.exit_status != 0:
        raise ConfigError(f"Job {job} has no engine log on the cluster.",
                          "The job may not have started yet (`hpcllm status`), or the id is wrong.")
    sys.stdout.write(result.stdout)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from .lifecycle import cancel, list_servers

    jobs = [j.job_id for j in list_servers(args.profile)] if args.all else [_only_job(args)]
    for job in jobs:
        state = cancel(job, profile=args.profile)
        now = "gone from the queue" if state.value == "UNKNOWN" else f"now {state.value}"
        print(f"Job {job} cancelled ({now}); its GPUs are free.")
    if not jobs:
        print("No jupyter-hpcllm jobs to cancel.")
    return 0


def _cmd_attach(args: argparse.Namespace) -> int:
    from .lifecycle import attach

    server = attach(_only_job(args), profile=args.profile, on_progress=_print_progress)
    print(f"Job {server.job_id} serves {server.model!r} ({server.engine}) on {server.node}:{server.port}.")
    server.close()
    print(f"Forward it with `hpcllm forward {server.job_id}`.")
    return 0


def _cmd_forward(args: argparse.Namespace) -> int:
    return _serve_forward(profiles.load_profile(args.profile), _only_job(args), args.port, args.show_key)


def _serve_forward(profile: profiles.Profile, job: str, port: int, show_key: bool) -> int:
    from .forward import PortForward
    from .lifecycle import attach
    from .transport import transport_for

    server = attach(job, profile=profile)
    server.close()
    with PortForward(lambda: transport_for(profile).open_channel(server.node, server.port),
                     f"{server.node}:{server.port}", local_port=port) as forward:
        print(f"export OPENAI_BASE_URL=http://{forward.address}/v1")
        if show_key:
            print(f"export OPENAI_API_KEY={server.api_key}")
        else:
            print(f"# the API key: `hpcllm forward {job} --show-key`, or ~/.hpcllm/jobs/{job}/key on the cluster")
        print(f"# model: {server.model}. Forwarding until Ctrl-C (the job keeps running; "
              f"`hpcllm down {job}` stops it).", flush=True)
        try:
            while True:
                time.sleep(1)
                forward.raise_if_failed()
        except KeyboardInterrupt:
            print("\nForward closed; the job is still running.", file=sys.stderr)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    path = profiles.config_path()
    if args.action == "path":
        print(path)
    elif args.action == "init":
        if path.exists() and not args.force:
            raise ConfigError(f"{path} exists already.", "Edit it, or pass --force to replace it.")
        _write_private(path, profiles.starter_config())
        print(f"Wrote {path}; edit it, then check with `hpcllm config show`.")
    else:
        print(f"# from {path if path.exists() else 'built-in presets (no config file)'}")
        sys.stdout.write(profiles.render_profile(profiles.load_profile(args.profile)))
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write atomically (temp file + rename), readable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    argv, engine_args = split_engine_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if engine_args and args.command not in ("up", "script", "plan"):
        parser.error(f"`{args.command}` takes no engine arguments after `--`")
    args.engine_args = engine_args
    try:
        return int(args.handler(args))
    except HpcllmError as error:
        print(f"hpcllm: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhpcllm: interrupted (a job this command submitted was cancelled).", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
