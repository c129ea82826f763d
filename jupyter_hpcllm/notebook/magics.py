"""IPython magics: `%hpcllm` runs the server, `%%llm` talks to it. A thin face over the lifecycle core.

    %load_ext jupyter_hpcllm
    %hpcllm up gpt-oss-120b --gpus 4
    %%llm
    Explain {topic} in two sentences.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from typing import Any, Generic, NoReturn, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from .. import views
from ..chat.interpolate import interpolate
from ..chat.prompt import Endpoint, code_of, parse_json_answer, run_prompt
from ..chat.provenance import provenance
from ..config.options import LaunchOptions, add_arguments, split_engine_args
from ..errors import HpcllmError, ServerNotReady
from ..lifecycle import Cluster, JobState, LaunchHandle, Server, cluster_for
from .render import Renderer
from .session import IPYTHON_NAMES, NotebookSession, ask, session_for

__all__ = ["HpcllmMagics"]

HPCLLM_HELP = """\
Run a model server on the cluster and talk to it.

  %hpcllm up MODEL [--gpus N] [--gpu-type T] [--engine vllm|sglang] [--profile P] [--time T] [--cpus N]
                   [--mem M] [--partition P] [--tool-call-parser X] [--reasoning-parser Y] [--as NAME]
                   [--idle-timeout MIN] [--renew] [--background] [-- extra engine args]
        start MODEL (or reuse the same running job), show its progress, then put a ready openai.OpenAI
        client in `client` (or NAME) and make it the default of %%llm. Interrupting cancels the job.
        While this kernel lives it holds the job; unused and unheld for --idle-timeout minutes (default
        60), the job ends itself. --renew keeps it past its time limit with a successor.
  %hpcllm panel [--profile P]                    a launch form: pick, see the plan and cost, launch, watch
  %hpcllm status | list | logs [-f] [-n N] | down [JOB] | attach JOB
  %hpcllm renew [--extend MIN]                   before the time limit: a successor takes over, same key
  %hpcllm models | plan MODEL | script MODEL
  %hpcllm use URL [--key-env VAR] [--model M]    any OpenAI-compatible endpoint for %%llm and `client`
  %hpcllm provenance                             how answers are made now: model, engine, image, parsers, job

`%hpcllm SUBCOMMAND --help` explains each one; `%%llm?` explains the cell magic.
"""

LLM_HELP = """\
%%llm [-m MODEL] [-s SYSTEM] [-t TEMP] [--max-tokens N] [--chat | --new] [--out VAR]
      [-f markdown|code|text|json] [--tools f,g] [--reasoning show|hide] [--no-stream]
%%llm --map ITEMS [--schema NAME] [--column C] [--concurrency N] [--no-cache] [--out VAR] [...]

Send the cell as a prompt to the current server (%hpcllm up / attach / use) and stream the answer.
{name} inserts a variable's value; {{name}} is a literal {name}; other braces are left as they are.
The output's metadata records how the answer was made (model, engine, image, parsers, sampling, job).

With --map, the cell is sent once per item of ITEMS (a list, a pandas Series or DataFrame, any iterable)
with {item} (or {item.field}, {row.column}, {row['a column']}) filled in, as many at once as the engine
runs. The answers go to `answers` (or --out), in the items' shape: a list, a Series on the same index, or
the DataFrame with a new column. --schema NAME (a pydantic model or a JSON schema) or -f json parses and
validates each answer. Every answer is kept on disk as it comes: after an interruption, run the cell
again and only the rest is sent (with --no-cache, everything). Failed items are None, listed in
`answers.failures` (for pandas: `answers.attrs['hpcllm']['failed']`).
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: a magic must never end the kernel's process."""

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            sys.stderr.write(message)
        raise _Stop(status)

    def error(self, message: str) -> Any:
        # argparse's messages are one line; a line break or control character in one is the user's input
        # echoed back (`unrecognized arguments: ...`): shown escaped, the error stays one line.
        raise _Stop(2, f"{self.prog}: {_printable(message)}. `{self.prog} --help` lists the options.")


def _printable(text: str) -> str:
    """Text with its line breaks and other control characters shown as escapes (\\n, \\x1b)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Stop(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _hpcllm_parser() -> _Parser:
    parser = _Parser(prog="%hpcllm", description=HPCLLM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                     add_help=True)
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sub = commands.add_parser("up", help="start (or reuse) a model server")
    add_arguments(sub, groups=("job", "launch"))
    sub.add_argument("--profile", "-p", help="cluster profile")
    sub.add_argument("--as", dest="as_name", default="client", help="variable for the OpenAI client (default client)")
    sub.add_argument("--background", action="store_true", help="return at once; the client appears when ready")
    sub = commands.add_parser("panel", help="the launch panel: pick a model, see the plan and its cost, launch and "
                              "watch; your servers with Attach, Logs and Stop")
    sub.add_argument("--profile", "-p", help="cluster profile (default: the default profile)")
    for name, text in (("status", "the current server's job"), ("list", "your servers on the cluster"),
                       ("models", "the models under the profile's model root")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--profile", "-p", help="cluster profile")
        if name == "status":
            sub.add_argument("job", nargs="?", help="job id (default: the current server)")
    sub = commands.add_parser("logs", help="the engine log (API key redacted)")
    sub.add_argument("job", nargs="?", help="job id (default: the current server)")
    sub.add_argument("-n", "--lines", type=int, default=50)
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends (interrupt stops)")
    sub.add_argument("--profile", "-p")
    sub = commands.add_parser("down", help="cancel the current server's job (or JOB); asks nothing")
    sub.add_argument("job", nargs="?")
    sub.add_argument("--profile", "-p")
    sub = commands.add_parser("renew", help="before the time limit: a successor job with the same plan and key "
                              "takes over (`client` keeps working)")
    sub.add_argument("--extend", type=int, metavar="MINUTES",
                     help="instead, ask Slurm to raise the time limit (most clusters allow only admins)")
    sub.add_argument("--profile", "-p")
    sub = commands.add_parser("attach", help="connect to a running job (e.g. after a kernel restart)")
    sub.add_argument("job")
    sub.add_argument("--as", dest="as_name", default="client")
    sub.add_argument("--profile", "-p")
    for name, text in (("plan", "the model's facts, parsers, allocation and why"),
                       ("script", "the sbatch script `up` would submit")):
        sub = commands.add_parser(name, help=text)
        add_arguments(sub, groups=("job",))
        sub.add_argument("--profile", "-p")
    sub = commands.add_parser("use", help="use any OpenAI-compatible endpoint for %%llm and `client`")
    sub.add_argument("url")
    sub.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    sub.add_argument("--model", help="model name (default: the first the server lists)")
    sub.add_argument("--as", dest="as_name", default="client")
    commands.add_parser("provenance", help="how answers are made now: model, engine, image, parsers, job (JSON)")
    return parser


def _llm_parser() -> _Parser:
    parser = _Parser(prog="%%llm", description=LLM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", help="model name (default: the current server's)")
    parser.add_argument("-s", "--system", help="a system prompt")
    parser.add_argument("-t", "--temperature", type=float)
    parser.add_argument("--max-tokens", type=int)
    history = parser.add_mutually_exclusive_group()
    history.add_argument("--chat", action="store_true", help="continue this notebook's conversation")
    history.add_argument("--new", action="store_true", help="start a new conversation (and keep it)")
    parser.add_argument("--out", help="store the answer's text (with -f json: the parsed value) in this variable")
    parser.add_argument("-f", "--format", choices=("markdown", "code", "text", "json"), default="markdown",
                        help="markdown (default); code: also put it in the next cell; text; json: parse it")
    parser.add_argument("--tools", help="comma-separated Python functions the model may call")
    parser.add_argument("--reasoning", choices=("show", "hide"), default="show")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    parser.add_argument("--map", metavar="ITEMS", help="send the cell once per item of this variable")
    parser.add_argument("--schema", metavar="NAME", help="with --map: a pydantic model or JSON schema variable")
    parser.add_argument("--column", default="answer", help="with --map over a DataFrame: the new column's name")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="with --map: requests in flight (default: what the engine runs)")
    parser.add_argument("--no-cache", action="store_true", help="with --map: do not keep or reuse answers on disk")
    return parser


def _parse(parser: _Parser, line: str) -> tuple[argparse.Namespace | None, list[str]]:
    """(options, engine arguments after `--`); None after --help; bad quotes or a bad option fail the cell
    with one line."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate (a "\udcff" escape in the notebook's JSON)
        _fail(f"{parser.prog}: the options are not valid text ({_short(line[error.start:error.end])} at "
              f"position {error.start}).")
    try:
        argv, engine_args = split_engine_args(shlex.split(line))
    except ValueError as error:  # shlex: an unclosed quote
        _fail(f"{parser.prog}: cannot read the options ({error}). Check the quotes.")
    try:
        return parser.parse_args(argv), engine_args
    except _Stop as stop:
        if stop.message:
            _fail(stop.message)
        return None, engine_args


def _fail(message: str) -> NoReturn:
    """One red paragraph, no traceback, and the cell fails (so "Run All" stops here)."""
    raise UsageError(message)


MAX_LOG_LINES = 1_000_000


def _short(value: str, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_T = TypeVar("_T")


class _InSession(Generic[_T]):
    """An attribute of the magics that lives in the notebook session."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, magics: Any, owner: Any = None) -> _T:
        if magics is None:  # on the class (help(), autodoc): the descriptor itself
            return self  # type: ignore[return-value]
        return getattr(magics.session, self.name)  # type: ignore[no-any-return]

    def __set__(self, magics: Any, value: _T) -> None:
        setattr(magics.session, self.name, value)


@magics_class
class HpcllmMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        # Shared with the launch panel: a server either starts is the one %%llm talks to.
        self.session: NotebookSession = session_for(shell)

    # The session's state, under the names the magics (and their tests) use.
    server: _InSession[Server | None] = _InSession("server")
    endpoint: _InSession[Endpoint | None] = _InSession("endpoint")
    history: _InSession[list[dict[str, Any]]] = _InSession("history")
    launching: _InSession[LaunchHandle | None] = _InSession("launching")
    _warned: _InSession[str | None] = _InSession("warned")

    @property
    def _ip(self) -> Any:
        assert self.shell is not None
        return self.shell

    @property
    def rich(self) -> bool:
        """A notebook (a kernel with a front end that renders HTML and Markdown), not a terminal."""
        return getattr(self.shell, "kernel", None) is not None

    # -- %hpcllm ------------------------------------------------------------------------------------

    @line_magic
    def hpcllm(self, line: str) -> Any:
        args, engine_args = _parse(_hpcllm_parser(), line)
        if args is None:  # --help was shown
            return None
        if args.command is None:
            return print(HPCLLM_HELP)
        if engine_args and args.command not in ("up", "plan", "script"):
            _fail(f"%hpcllm {args.command} takes no engine arguments after `--`.")
        if getattr(args, "as_name", None) is not None:
            self._check_variable(f"%hpcllm {args.command} --as", args.as_name, "client")
        if getattr(args, "profile", None) and not args.profile.isprintable():
            _fail(f"%hpcllm {args.command} --profile {_short(args.profile)} is not a profile name (it has a line "
                  "break or control character).")
        if getattr(args, "lines", None) is not None and not 1 <= args.lines <= MAX_LOG_LINES:
            _fail(f"%hpcllm logs -n takes a number of lines from 1 to {MAX_LOG_LINES:,}, not {args.lines}.")
        args.engine_args = engine_args
        try:
            return getattr(self, f"_{args.command}")(args)
        except HpcllmError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            _fail(f"%hpcllm {args.command}: interrupted.")

    hpcllm.__doc__ = HPCLLM_HELP

    def _check_variable(self, option: str, name: str, example: str) -> None:
        """A name the magic stores a value under must be a variable the notebook can use, and not one of
        IPython's own (storing the client in `Out` or `_` would break the notebook)."""
        problem = self.session.variable_problem(name)
        if problem:
            _fail(f"{option} {_short(name)}: the name {problem}. Choose another name, "
                  f"e.g. {option.rsplit(' ', 1)[-1]} {example}.")

    def _cluster(self, args: argparse.Namespace) -> Cluster:
        """The cluster named by --profile, else the attached server's, else the default profile's."""
        if getattr(args, "profile", None) or self.server is None:
            return cluster_for(getattr(args, "profile", None), prompt=ask)
        return self.server.cluster

    def _up(self, args: argparse.Namespace) -> None:
        from .progress import ProgressView

        options = LaunchOptions.from_namespace(args)
        cluster = self._cluster(args)
        if self.launching is not None and not self.launching.done():
            _fail(f"A launch is already in progress ({self.launching.options.model}): wait for it, or stop it "
                  "with `%hpcllm down`.")
        view = ProgressView(self.rich, args.model)
        cluster.plan(options, offline=True)  # options wrong whatever the model fail before connecting
        cluster.connect()  # a password is asked in this cell
        # One launch at a time per notebook (the panel's too): `%hpcllm status` and `down` reach it.
        handle = self.session.start_launch(lambda: cluster.launch(options, on_progress=view))
        if args.background:

            def finished(done: LaunchHandle) -> None:
                view.stop()
                error = done.exception()
                if error is None:
                    self._adopt(done.result(), args.as_name)
                else:
                    view.error(str(error))

            handle.add_done_callback(finished)
            print(f"Starting {args.model} in the background; `{args.as_name}` appears when it is ready "
                  "(`%hpcllm status` shows how far it is, `%hpcllm down` stops it).")
            return
        try:
            server = handle.result()
        except KeyboardInterrupt:
            view.stop()
            handle.stop()  # the job it submitted is cancelled before the cell ends
            _fail(views.interrupted_text(handle, "%hpcllm down"))
        except HpcllmError as error:
            view.error(str(error))
            _fail(str(error))
        finally:
            view.stop()
        self._adopt(server, args.as_name)

    def _adopt(self, server: Server, as_name: str) -> None:
        """Make a ready server the default of %%llm and put its client in the namespace."""
        print(self.session.adopt(server, as_name))

    def _job_or_current(self, args: argparse.Namespace) -> str:
        if getattr(args, "job", None):
            return str(args.job)
        if self.server is None:
            raise HpcllmError("No server is attached in this notebook.",
                              "Name a job (`%hpcllm list` shows yours), or start one with `%hpcllm up MODEL`.")
        return str(self.server.job_id)

    def _launching_now(self, args: argparse.Namespace) -> LaunchHandle | None:
        """The background launch, when the command names no job and it is still running."""
        if getattr(args, "job", None) or self.launching is None or self.launching.done():
            return None
        return self.launching

    def _status(self, args: argparse.Namespace) -> Any:
        from .progress import StatusView

        launching = self._launching_now(args)
        if launching is not None:
            progress = launching.progress
            return print(f"Launching {launching.options.model}: "
                         + (progress.message if progress else "planning (reading the model's facts)."))
        job = self._job_or_current(args)
        metrics = None
        if self.server is not None and job == self.server.job_id:
            info = self.server.status()
            if info.state is JobState.RUNNING:
                try:
                    metrics = self.server.metrics()
                except ServerNotReady:  # still loading, or a job of an older jupyter-hpcllm: no numbers
                    metrics = None
        else:
            info = self._cluster(args).status(job)
        self._warn_walltime()
        view = StatusView(info, metrics)
        if self.rich:
            from IPython.display import display

            return display(view)
        return print(repr(view))

    def _list(self, args: argparse.Namespace) -> None:
        servers = self._cluster(args).list()
        if not servers:
            return print("No jupyter-hpcllm jobs. Start one with `%hpcllm up MODEL`.")
        print(views.format_table(views.servers_rows(servers)), end="")

    def _logs(self, args: argparse.Namespace) -> None:
        job = self._job_or_current(args)
        cluster = self._cluster(args)
        if not args.follow:
            return print(cluster.logs(job, lines=args.lines), end="")
        try:
            for chunk in cluster.follow_logs(job):
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:
            print("\n(stopped following the log; the job keeps running)")

    def _down(self, args: argparse.Namespace) -> None:
        launching = self._launching_now(args)
        if launching is not None:
            launching.stop()
            if launching.job_id is not None:  # it may have become ready meanwhile: nothing talks to it now
                self.session.forget(launching.job_id)
            return print(views.interrupted_text(launching, "%hpcllm down").replace(
                "Interrupted", f"Stopped the launch of {launching.options.model}", 1))
        job = self._job_or_current(args)
        if self.server is not None and job == self.server.job_id:
            state = self.server.down()
        else:
            state = self._cluster(args).cancel(job)
        self.session.forget(job)  # %%llm and the launch panel forget it
        print(views.stopped_message(job, state.value))

    def _panel(self, args: argparse.Namespace) -> None:
        from IPython.display import display

        from .panel import Panel

        # The same clusters as the other subcommands: one connection per profile for the whole notebook.
        display(Panel(self._ip, args.profile, clusters=lambda name: cluster_for(name, prompt=ask)))

    def _renew(self, args: argparse.Namespace) -> None:
        from .progress import ProgressView

        if self.server is None:
            _fail("%hpcllm renew renews the server of this notebook, and there is none: `%hpcllm up MODEL` or "
                  "`%hpcllm attach JOB` first.")
        old = self.server.job_id
        if args.extend is not None:
            if not 1 <= args.extend <= 525600:
                _fail(f"%hpcllm renew --extend takes 1 to 525600 minutes, not {args.extend}.")
            left = self.server.cluster.extend(old, args.extend)
            return print(f"Slurm raised the time limit of job {old}: {left or 'unknown'} left.")
        view = ProgressView(self.rich, f"successor of job {old}")
        try:
            self.server.cluster.renew(self.server, on_progress=view)
        finally:
            view.stop()
        self._warned = None
        print(f"Job {self.server.job_id} took over from job {old}: `client` and %%llm keep working, same key.")

    def _warn_walltime(self) -> None:
        """Once per job: its time limit is near (what every face says; `%hpcllm renew` is the way on)."""
        server = self.server
        warning = server.walltime_warning() if server is not None else None
        if warning and server is not None and self._warned != server.job_id:
            self._warned = server.job_id
            print(f"⚠ {warning}")

    def _attach(self, args: argparse.Namespace) -> None:
        from .progress import ProgressView

        view = ProgressView(self.rich, f"job {args.job}")
        try:
            server = self._cluster(args).attach(args.job, on_progress=view)
        finally:
            view.stop()
        self._adopt(server, args.as_name)

    def _models(self, args: argparse.Namespace) -> None:
        print(views.format_table(views.models_rows(self._cluster(args).models())), end="")

    def _plan(self, args: argparse.Namespace) -> None:
        print(views.plan_text(self._cluster(args).plan(LaunchOptions.from_namespace(args))), end="")

    def _script(self, args: argparse.Namespace) -> None:
        print(self._cluster(args).job_script(LaunchOptions.from_namespace(args)), end="")

    def _use(self, args: argparse.Namespace) -> None:
        import openai

        try:
            client = openai.OpenAI(base_url=args.url, api_key=os.environ.get(args.key_env) or "EMPTY")
        except Exception as error:  # the URL does not parse (httpx's InvalidURL, UnsupportedProtocol, ...)
            raise HpcllmError(f"%hpcllm use: {_short(args.url, 80)} is not a URL the OpenAI client takes "
                              f"({type(error).__name__}: {error}).",
                              "Give the server's base URL, e.g. http://host:8000/v1.") from None
        model = args.model
        if model is None:
            try:
                model = next(iter(client.models.list())).id
            except Exception as error:
                raise HpcllmError(f"Cannot list the models at {args.url}: {error}.",
                                  "Check the URL (it usually ends in /v1) and the key, or pass --model.") from None
        self.server = None
        self.endpoint = Endpoint(client, model, args.url)
        self._ip.user_ns[args.as_name] = client
        print(f"`{args.as_name}` and %%llm now use {model} at {args.url}.")

    # -- %%llm --------------------------------------------------------------------------------------

    @cell_magic
    def llm(self, line: str, cell: str) -> Any:
        args, extra = _parse(_llm_parser(), line)
        if args is None:  # --help was shown
            return None
        if extra:
            _fail(f"%%llm: unrecognized arguments: {_printable(' '.join(extra))}. `%%llm --help` lists the options.")
        if args.out is not None:
            self._check_variable("%%llm --out", args.out, "answer")
        if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature >= 0):
            _fail(f"%%llm -t takes a temperature of 0 or more, not {args.temperature!r}.")
        if args.max_tokens is not None and args.max_tokens < 1:
            _fail(f"%%llm --max-tokens takes a number of tokens from 1 up, not {args.max_tokens}.")
        self._warn_walltime()
        if self.endpoint is None:
            _fail("%%llm has no server yet: start one with `%hpcllm up MODEL`, attach to one with "
                  "`%hpcllm attach JOB`, or use any OpenAI-compatible endpoint with `%hpcllm use URL`.")
        namespace = self._ip.user_ns
        functions = {}
        hidden = getattr(self._ip, "user_ns_hidden", {})
        for name in filter(None, (n.strip() for n in (args.tools or "").split(","))):
            if not callable(namespace.get(name)) or name in hidden or name in IPYTHON_NAMES:
                _fail(f"%%llm --tools: {_short(name)} is not a function defined in this notebook.")
            functions[name] = namespace[name]
        request: dict[str, Any] = {}
        if args.temperature is not None:
            request["temperature"] = args.temperature
        if args.max_tokens is not None:
            request["max_tokens"] = args.max_tokens
        if args.map is not None:
            if args.chat or args.new or args.format in ("code",):
                _fail("%%llm --map sends each item on its own: it takes no --chat, --new or -f code.")
            if args.concurrency is not None and not 1 <= args.concurrency <= 1024:
                _fail(f"%%llm --concurrency takes 1 to 1024 requests, not {args.concurrency}.")
            self._check_variable("%%llm --out", args.out or "answers", "answers")
            from .mapcell import map_cell

            if args.system:
                args.system = _interpolate(args.system, namespace)
            self.session.provenance = map_cell(args, cell, namespace, self._map_target(), functions, request, _fail)
            return None
        if args.schema or args.concurrency is not None or args.no_cache:
            _fail("%%llm --schema, --concurrency and --no-cache go with --map ITEMS.")
        if args.new:
            self.history = []
        prompt = {"role": "user", "content": _interpolate(cell, namespace)}
        system = [{"role": "system", "content": _interpolate(args.system, namespace)}] if args.system else []
        earlier = self.history if (args.chat or args.new) else []
        endpoint = self.endpoint if not args.model else Endpoint(self.endpoint.client, args.model, self.endpoint.label)
        server = self.server if self.server is not None and endpoint.client is self.endpoint.client else None
        record = provenance(server, endpoint.model, endpoint.label, request, system=args.system or None,
                            tools=sorted(functions) or None, wait=False)
        self.session.provenance = record
        renderer = Renderer(self.rich, show_reasoning=args.reasoning == "show", fmt=args.format,
                            metadata={"jupyter_hpcllm": record})
        try:
            added = run_prompt(endpoint, system + earlier + [prompt], renderer, functions=functions,
                               stream=not args.no_stream, **request)
        except KeyboardInterrupt:
            renderer.finish()
            _fail("%%llm: interrupted.")
        except Exception as error:  # the openai client's errors, explained in one paragraph
            _fail(_explain_api_error(error, endpoint, server.connection_problem if server else None))
        if args.chat or args.new:
            self.history += [prompt, *added]
        text = renderer.answer.content
        value: Any = text
        if args.format == "json":
            namespace["_llm_text"] = text
            try:
                value = parse_json_answer(text)
            except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than json reads
                why = "nested too deep" if isinstance(error, RecursionError) else str(error)
                _fail(f"%%llm -f json: the answer is not valid JSON ({why}); it is in `_llm_text`.")
        if args.format == "code":
            self._ip.set_next_input(code_of(text), replace=False)
        if args.out:
            namespace[args.out] = value
        return value if args.format == "json" else None

    llm.__doc__ = LLM_HELP

    def _map_target(self) -> Server | Endpoint:
        """The server %%llm talks to (its metrics pace the map), else the endpoint of `%hpcllm use`."""
        assert self.endpoint is not None
        return self._live_server or self.endpoint

    @property
    def _live_server(self) -> Server | None:
        return self.server if self.server is not None and not self.server.closed else None

    def _provenance(self, args: argparse.Namespace) -> None:
        if self.endpoint is None:
            _fail("%hpcllm provenance: no server yet (`%hpcllm up MODEL`, `attach JOB` or `use URL`).")
        record = provenance(self._live_server, self.endpoint.model, self.endpoint.label)
        record.pop("sampling", None)
        last = self.session.provenance
        if last is not None and last.get("endpoint") == record.get("endpoint"):
            record["last_answer"] = {"sampling": last.get("sampling"), "time": last.get("time")}
        print(json.dumps(record, indent=2, ensure_ascii=False, default=str))


def _interpolate(text: str, namespace: dict[str, Any]) -> str:
    """{name} in a prompt, or the cell fails in one line (a variable whose str() raises is the notebook's
    own bug, told as such, not a traceback through the magic)."""
    try:
        return interpolate(text, namespace)
    except HpcllmError as error:
        _fail(str(error))
    except Exception as error:  # what the interpolation itself did not turn into a message
        _fail(f"%%llm: a {{name}} in the prompt cannot be turned into text ({type(error).__name__}: "
              f"{_short(str(error), 200)}). Write {{{{name}}}} for a literal {{name}}.")


def _explain_api_error(error: Exception, endpoint: Endpoint, problem: str | None = None) -> str:
    import openai

    where = endpoint.label
    if isinstance(error, openai.APIConnectionError):
        why = f" {problem}" if problem else ""  # what the forward met: a dead job, a login that needs a code
        return (f"%%llm cannot reach the server ({where}): {error}.{why} Is the job still running? "
                "`%hpcllm status` shows it; `%hpcllm attach JOB` reconnects.")
    if isinstance(error, openai.AuthenticationError):
        return f"%%llm: the server ({where}) refused the API key. Reconnect with `%hpcllm attach JOB`."
    if isinstance(error, openai.NotFoundError):
        return f"%%llm: the server ({where}) does not serve model {endpoint.model!r}: {_message(error)}. Use -m NAME."
    if isinstance(error, openai.APIStatusError):
        return f"%%llm: the server ({where}) answered {error.status_code}: {_message(error)}."
    if isinstance(error, openai.APIError):
        return f"%%llm: {error}."
    return f"%%llm failed: {type(error).__name__}: {error}"


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)
    return str(error)
