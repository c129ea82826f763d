"""`hpcllm`: the command line, a thin layer over the lifecycle API."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import views
from ._version import __version__
from .config import profiles
from .config.options import ENGINES, LaunchOptions, add_arguments, split_engine_args
from .errors import ConfigError, HpcllmError
from .lifecycle import Cluster, Progress, walltime_warning

DESCRIPTION = """\
Run a large open LLM (vLLM or SGLang) on a Slurm GPU cluster and talk to it with any OpenAI client.

  hpcllm models                                the models on the cluster: size, family, parsers, GPUs
  hpcllm plan gpt-oss-120b                     what `up` would choose (engine, parsers, GPUs) and why
  hpcllm up Qwen3-8B --replicas 2 --gpus 2     two copies of the model, one per GPU, for many users
  hpcllm up Qwen3-8B --speculative             speculative decoding with the draft its card names
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


MAX_LOG_LINES = 1_000_000


def _whole_number(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (argparse says which option, and exits 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} is a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} is {low} to {high:,}, not {value}")
        return value

    return parse


_local_port = _whole_number(0, 65535, "a local port (0: any free one)")
_log_lines = _whole_number(1, MAX_LOG_LINES, "the number of lines")


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
    add_arguments(sub, groups=("job", "launch"))
    _profile_option(sub)
    sub.add_argument("--forward", action="store_true",
                     help="once ready, keep a local port forward open (Ctrl-C ends it)")
    sub.add_argument("--port", type=_local_port, default=0, help="local port for --forward (default: any free one)")

    sub = command("script", "print the sbatch script `up` would submit, without connecting", _cmd_script)
    add_arguments(sub)
    _profile_option(sub)

    sub = command("plan", "read the model's facts and card on the cluster, ask the engine images, and show the "
                  "engine, the parsers (with where each comes from), the allocation and why", _cmd_plan)
    add_arguments(sub)
    _profile_option(sub)
    sub.add_argument("--script", action="store_true", help="also print the sbatch script")
    sub.add_argument("--refresh", action="store_true", help="re-read the model's facts (they are cached)")

    sub = command("models", "list the models under the profile's model root, with size, family, parsers and "
                  "the suggested allocation", _cmd_models)
    _profile_option(sub)

    sub = command("parsers", "ask an engine image what it registers: parsers, architectures, tool chat "
                  "templates", _cmd_parsers)
    sub.add_argument("--engine", choices=ENGINES, help="engine (default: the profile's)")
    sub.add_argument("--refresh", action="store_true", help="ask the image again (answers are cached)")
    _profile_option(sub)

    sub = command("list", "list your jupyter-hpcllm jobs (pending and running)", _cmd_list)
    _profile_option(sub)

    sub = command("status", "show one job's state (default: your only job)", _cmd_status)
    sub.add_argument("job", nargs="?", help="job id")
    _profile_option(sub)

    sub = command("logs", "print the engine log of a job (the API key is redacted)", _cmd_logs)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("-n", "--lines", type=_log_lines, default=100, help="how many lines (default 100)")
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    _profile_option(sub)

    sub = command("down", "cancel a job and free its GPUs", _cmd_down)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("--all", action="store_true", help="cancel all your jupyter-hpcllm jobs")
    _profile_option(sub)

    sub = command("attach", "wait until a job's server answers, and print how to reach it", _cmd_attach)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    _profile_option(sub)

    sub = command("renew", "before a job's time limit ends: start a successor with the same plan and key, "
                  "then stop the old job (clients of the old one keep working through `hpcllm forward`)", _cmd_renew)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("--extend", type=_whole_number(1, 525600, "minutes"), metavar="MINUTES",
                     help="instead, ask Slurm to raise the job's time limit (most clusters allow only admins)")
    _profile_option(sub)

    sub = command("forward", "forward a local port to a job's server until Ctrl-C (keeping the job from ending "
                  "itself as idle meanwhile)", _cmd_forward)
    sub.add_argument("job", nargs="?", help="job id (default: your only job)")
    sub.add_argument("--renew", action="store_true", help="renew the job before its time limit while forwarding")
    sub.add_argument("--port", type=_local_port, default=0, help="local port (default: any free one)")
    sub.add_argument("--show-key", action="store_true",
                     help="also print `export OPENAI_API_KEY=...` (the key is secret: mind your terminal log)")
    _profile_option(sub)

    sub = command("config", "write, show or locate the config file", _cmd_config)
    sub.add_argument("action", choices=("init", "show", "path"), help="init: write a commented starter file; "
                     "show: print the resolved profile; path: print the config file's path")
    sub.add_argument("--force", action="store_true", help="with init: overwrite an existing file")
    _profile_option(sub)
    return parser


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(args.profile, prompt=_ask if sys.stdin.isatty() else None)


def _ask(text: str, echo: bool) -> str:
    """What the login node asks (a password, a one-time code), answered at the terminal."""
    import getpass

    return input(text) if echo else getpass.getpass(text)


def _print_progress(progress: Progress) -> None:
    print(f"[{progress.elapsed:6.1f}s] {progress.message}", file=sys.stderr, flush=True)


def _cmd_script(args: argparse.Namespace) -> int:
    plan = _cluster(args).plan(LaunchOptions.from_namespace(args), offline=True)  # connects to nothing
    for note in plan.notes:
        print(f"# note: {note}", file=sys.stderr)
    sys.stdout.write(plan.script)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    plan = _cluster(args).plan(LaunchOptions.from_namespace(args), refresh=args.refresh)
    sys.stdout.write(views.plan_text(plan))
    if args.script:
        sys.stdout.write("\n" + plan.script)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    sys.stdout.write(views.format_table(views.models_rows(_cluster(args).models())))
    return 0


def _cmd_parsers(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    engine = args.engine or cluster.profile.default_engine
    info = cluster.image(engine, refresh=args.refresh)
    print(f"{info.label}: {cluster.profile.image(info.engine) or '(no container)'}")
    for label, names in (("tool-call parsers", info.tool_parsers), ("reasoning parsers", info.reasoning_parsers),
                         ("architectures", info.architectures), ("tool chat templates", info.templates)):
        print(f"  {label}: {', '.join(names) if names else '(none)' if names is not None else '(could not ask)'}")
    if info.engine == "sglang":
        print(f"  auto detection from the chat template: {'yes' if info.auto_parsers else 'no'}")
    for problem in info.problems:
        print(f"  problem: {problem}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    noted: list[bool] = []

    def progress(item: Progress) -> None:
        if not noted and handle.plan is not None:  # the plan exists before the first stage
            noted.append(True)
            for note in handle.plan.notes:
                print(f"note: {note}", file=sys.stderr)
        _print_progress(item)

    options = LaunchOptions.from_namespace(args)
    cluster.plan(options, offline=True)  # options wrong whatever the model fail before connecting
    handle = cluster.connect().launch(options)  # a password or code is asked here, not in the launch's thread
    handle.add_callback(progress)
    try:
        server = handle.result()
    except KeyboardInterrupt:
        handle.stop()  # the job it submitted is cancelled before we exit
        print(f"\nhpcllm: {views.interrupted_text(handle, 'hpcllm down')}", file=sys.stderr)
        return 130
    print(f"Job {server.job_id} serves {server.model!r} ({server.engine}) on {server.node}:{server.port}.")
    server.close()
    if args.forward:
        return _serve_forward(cluster, server.job_id, args.port, show_key=False, renew=options.renew)
    if options.renew:
        print("note: --renew renews the job only while something holds it: use it with --forward, or in a "
              "notebook (`%hpcllm up --renew`).", file=sys.stderr)
    print(f"Reach it with `hpcllm forward {server.job_id}`, or in Python: "
          f"`jupyter_hpcllm.attach({server.job_id!r}).client()`. Stop it with `hpcllm down {server.job_id}`.")
    return 0


def _only_job(args: argparse.Namespace, cluster: Cluster) -> str:
    if args.job:
        return str(args.job)
    jobs = cluster.list()
    if len(jobs) == 1:
        return jobs[0].job_id
    if not jobs:
        raise ConfigError("You have no jupyter-hpcllm jobs on this cluster.", "Start one with `hpcllm up MODEL`.")
    raise ConfigError(f"You have {len(jobs)} jupyter-hpcllm jobs: {', '.join(j.job_id for j in jobs)}.",
                      "Name the one you mean.")


def _cmd_list(args: argparse.Namespace) -> int:
    jobs = _cluster(args).list()
    if not jobs:
        print("No jupyter-hpcllm jobs. Start one with `hpcllm up MODEL`.")
        return 0
    sys.stdout.write(views.format_table(views.servers_rows(jobs)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    job = _only_job(args, cluster)
    info = cluster.status(job)
    print(f"Job {job}: {info.state.value}")
    sys.stdout.write(views.status_text(info, indent="  "))
    warning = walltime_warning(job, info.seconds_left, cluster.profile.walltime_warning)
    if warning:
        print(f"hpcllm: {warning}", file=sys.stderr)
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    job = _only_job(args, cluster)
    if args.follow:
        for chunk in cluster.follow_logs(job):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return 0
    sys.stdout.write(cluster.logs(job, lines=args.lines))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    jobs = [j.job_id for j in cluster.list()] if args.all else [_only_job(args, cluster)]
    for job in jobs:
        print(views.stopped_message(job, cluster.cancel(job).value))
    if not jobs:
        print("No jupyter-hpcllm jobs to cancel.")
    return 0


def _cmd_attach(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    server = cluster.attach(_only_job(args, cluster), on_progress=_print_progress)
    print(f"Job {server.job_id} serves {server.model!r} ({server.engine}) on {server.node}:{server.port}.")
    server.close()
    print(f"Forward it with `hpcllm forward {server.job_id}`.")
    return 0


def _cmd_forward(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    return _serve_forward(cluster, _only_job(args, cluster), args.port, args.show_key, renew=args.renew)


def _cmd_renew(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    job = _only_job(args, cluster)
    if args.extend:
        left = cluster.extend(job, args.extend)
        print(f"Slurm raised the time limit of job {job}: {left or 'unknown'} left.")
        return 0
    server = cluster.attach(job, on_progress=_print_progress)
    try:
        cluster.renew(server, on_progress=_print_progress)
    finally:
        server.close()
    print(f"Job {server.job_id} took over from job {job}, with the same key. Reach it with "
          f"`hpcllm forward {server.job_id}`.")
    return 0


def _serve_forward(cluster: Cluster, job: str, port: int, show_key: bool, *, renew: bool = False) -> int:
    # The Server holds a lease while this runs: the job does not end itself as idle under an open forward.
    server = cluster.attach(job, local_port=port)
    if renew:
        server.renew_automatically()
    else:
        server.follow_renewals()  # another renewer's successor (the lab sidebar's Renew): this forward moves too
    warned: set[str] = set()
    try:
        print(f"export OPENAI_BASE_URL={server.base_url}")
        if show_key:
            print(f"export OPENAI_API_KEY={server.api_key}")
        else:
            print(f"# the API key: `hpcllm forward {job} --show-key`, or ~/.hpcllm/jobs/{job}/key on the cluster")
        print(f"# model: {server.model}. Forwarding until Ctrl-C (the job keeps running; "
              f"`hpcllm down {job}` stops it).", flush=True)
        while True:
            time.sleep(1)
            server.raise_if_failed()
            warning = server.walltime_warning()
            if warning and server.job_id not in warned:
                warned.add(server.job_id)
                print(f"hpcllm: {warning}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\nForward closed; the job is still running.", file=sys.stderr)
    finally:
        server.close()
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


def _undecodable(argv: Sequence[str]) -> str | None:
    """The first argument that is not text (bytes the terminal's encoding could not decode arrive as lone
    surrogates): it could reach neither the cluster nor the screen."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    bad = _undecodable(given)
    if bad is not None:
        parser.error(f"the argument {bad!r} is not valid UTF-8 text; check the terminal's encoding (locale)")
    argv, engine_args = split_engine_args(given)
    args = parser.parse_args(argv)
    if engine_args and args.command not in ("up", "script", "plan"):
        parser.error(f"`{args.command}` takes no engine arguments after `--`")
    if getattr(args, "profile", None) and not args.profile.isprintable():
        parser.error(f"--profile {args.profile!r} is not a profile name (it has a line break or control character)")
    args.engine_args = engine_args
    try:
        return int(args.handler(args))
    except HpcllmError as error:
        print(f"hpcllm: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhpcllm: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
