"""IPython magics: `%hpcllm` runs the server, `%%llm` talks to it. A thin face over the lifecycle core.

    %load_ext jupyter_hpcllm
    %hpcllm up gpt-oss-120b --gpus 4
    %%llm
    Explain {topic} in two sentences.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from .cli import add_launch_options, launch_options, print_table, split_engine_args
from .errors import HpcllmError
from .llmcell import Endpoint, Renderer, code_of, interpolate, parse_json_answer, run_prompt

__all__ = ["HpcllmMagics"]

HPCLLM_HELP = """\
Run a model server on the cluster and talk to it.

  %hpcllm up MODEL [--gpus N] [--gpu-type T] [--engine vllm|sglang] [--profile P] [--time T] [--cpus N]
                   [--mem M] [--partition P] [--tool-call-parser X] [--reasoning-parser Y] [--as NAME]
                   [--background] [-- extra engine args]
        start MODEL (or reuse the same running job), show its progress, then put a ready openai.OpenAI
        client in `client` (or NAME) and make it the default of %%llm. Interrupting cancels the job.
  %hpcllm status | list | logs [-f] [-n N] | down [JOB] | attach JOB
  %hpcllm models | plan MODEL | script MODEL
  %hpcllm use URL [--key-env VAR] [--model M]    any OpenAI-compatible endpoint for %%llm and `client`

`%hpcllm SUBCOMMAND --help` explains each one; `%%llm?` explains the cell magic.
"""

LLM_HELP = """\
%%llm [-m MODEL] [-s SYSTEM] [-t TEMP] [--max-tokens N] [--chat | --new] [--out VAR]
      [-f markdown|code|text|json] [--tools f,g] [--reasoning show|hide] [--no-stream]

Send the cell as a prompt to the current server (%hpcllm up / attach / use) and stream the answer.
{name} inserts a variable's value; {{name}} is a literal {name}; other braces are left as they are.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: a magic must never end the kernel's process."""

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            sys.stderr.write(message)
        raise _Stop(status)

    def error(self, message: str) -> Any:
        raise _Stop(2, f"{self.prog}: {message}. `{self.prog} --help` lists the options.")


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
    add_launch_options(sub)
    sub.add_argument("--profile", "-p", help="cluster profile")
    sub.add_argument("--as", dest="as_name", default="client", help="variable for the OpenAI client (default client)")
    sub.add_argument("--background", action="store_true", help="return at once; the client appears when ready")
    sub.add_argument("--timeout", type=float, help="give up (and cancel the job) after this many seconds")
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
    sub = commands.add_parser("attach", help="connect to a running job (e.g. after a kernel restart)")
    sub.add_argument("job")
    sub.add_argument("--as", dest="as_name", default="client")
    sub.add_argument("--profile", "-p")
    for name, text in (("plan", "the model's facts, parsers, allocation and why"),
                       ("script", "the sbatch script `up` would submit")):
        sub = commands.add_parser(name, help=text)
        add_launch_options(sub)
        sub.add_argument("--profile", "-p")
    sub = commands.add_parser("use", help="use any OpenAI-compatible endpoint for %%llm and `client`")
    sub.add_argument("url")
    sub.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    sub.add_argument("--model", help="model name (default: the first the server lists)")
    sub.add_argument("--as", dest="as_name", default="client")
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
    return parser


def _error(message: str) -> None:
    print(message, file=sys.stderr)


@magics_class
class HpcllmMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.server: Any = None  # the lifecycle Server %%llm talks to, when it is ours
        self.endpoint: Endpoint | None = None
        self.history: list[dict[str, Any]] = []
        self.background: threading.Thread | None = None

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
        try:
            argv, engine_args = split_engine_args(shlex.split(line))
            args = _hpcllm_parser().parse_args(argv)
        except ValueError as error:  # shlex: an unclosed quote
            return _error(f"%hpcllm: cannot read the options ({error}). Check the quotes.")
        except _Stop as stop:
            return _error(stop.message) if stop.message else None
        if args.command is None:
            return print(HPCLLM_HELP)
        if engine_args and args.command not in ("up", "plan", "script"):
            return _error(f"%hpcllm {args.command} takes no engine arguments after `--`.")
        args.engine_args = engine_args
        try:
            return getattr(self, f"_{args.command}")(args)
        except HpcllmError as error:
            _error(str(error))
        except KeyboardInterrupt:
            _error("Interrupted.")
        return None

    hpcllm.__doc__ = HPCLLM_HELP

    def _launch_kwargs(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"profile": args.profile, **launch_options(args)}

    def _up(self, args: argparse.Namespace) -> None:
        from .lifecycle import Stage, up
        from .progress import ProgressView

        view = ProgressView(self.rich, args.model)
        submitted: list[str] = []

        def report(progress: Any) -> None:
            if progress.stage is Stage.SUBMITTED:
                submitted.append(progress.job_id)
            view(progress)

        def launch() -> Any:
            return up(args.model, on_progress=report, timeout=args.timeout, **self._launch_kwargs(args))

        if args.background:
            def run() -> None:
                try:
                    self._adopt(launch(), args.as_name)
                except HpcllmError as error:
                    view.error(str(error))
                finally:
                    view.stop()

            self.background = threading.Thread(target=run, name="hpcllm-up", daemon=True)
            self.background.start()
            print(f"Starting {args.model} in the background; `{args.as_name}` appears when it is ready.")
            return
        try:
            server = launch()
        except KeyboardInterrupt:
            if submitted:
                return _error(f"Interrupted: job {submitted[-1]} was cancelled, its GPUs are free.")
            return _error("Interrupted.")
        except HpcllmError as error:
            return view.error(str(error))
        finally:
            view.stop()
        self._adopt(server, args.as_name)

    def _adopt(self, server: Any, as_name: str) -> None:
        """Make a ready server the default of %%llm and put its client in the namespace."""
        self.server = server
        self.endpoint = Endpoint(server.client(), server.model, f"job {server.job_id}")
        self._ip.user_ns[as_name] = self.endpoint.client
        print(f"Ready: `{as_name}` talks to {server.model} ({server.engine}, job {server.job_id} on {server.node}); "
              "%%llm uses it.")

    def _job_or_current(self, args: argparse.Namespace) -> str:
        if getattr(args, "job", None):
            return str(args.job)
        if self.server is None:
            raise HpcllmError("No server is attached in this notebook.",
                              "Name a job (`%hpcllm list` shows yours), or start one with `%hpcllm up MODEL`.")
        return str(self.server.job_id)

    def _profile(self, args: argparse.Namespace) -> Any:
        """The profile named by --profile, else the attached server's, else the default one."""
        from .profiles import load_profile

        if getattr(args, "profile", None) or self.server is None:
            return load_profile(getattr(args, "profile", None))
        return self.server.profile

    def _status(self, args: argparse.Namespace) -> Any:
        from .lifecycle import ServerInfo, list_servers
        from .progress import StatusView

        job = self._job_or_current(args)
        if self.server is not None and job == self.server.job_id:
            info = self.server.status()
        else:
            info = next((s for s in list_servers(self._profile(args)) if s.job_id == job), None)
            if info is None:
                raise HpcllmError(f"Job {job} is not one of your pending or running servers.",
                                  "`%hpcllm list` shows them.")
        assert isinstance(info, ServerInfo)
        view = StatusView(info)
        if self.rich:
            from IPython.display import display

            return display(view)
        return print(repr(view))

    def _list(self, args: argparse.Namespace) -> None:
        from .lifecycle import list_servers

        servers = list_servers(self._profile(args))
        if not servers:
            return print("No jupyter-hpcllm jobs. Start one with `%hpcllm up MODEL`.")
        rows = [("JOB", "STATE", "MODEL", "ENGINE", "NODE", "LEFT/REASON")]
        rows += [(s.job_id, s.state.value, s.model or "?", s.engine or "?", s.node or "-",
                  s.time_left or f"({s.reason})") for s in servers]
        print_table(rows)

    def _logs(self, args: argparse.Namespace) -> None:
        from .lifecycle import follow_logs
        from .slurm import log_command
        from .transport import transport_for

        job = self._job_or_current(args)
        transport = transport_for(self._profile(args))
        if not args.follow:
            return print(transport.run(log_command(job, lines=args.lines), check=False).stdout, end="")
        try:
            for chunk in follow_logs(transport, job):
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:
            print("\n(stopped following the log; the job keeps running)")

    def _down(self, args: argparse.Namespace) -> None:
        from .lifecycle import cancel

        job = self._job_or_current(args)
        if self.server is not None and job == self.server.job_id:
            state = self.server.down()
            self.server = None
            self.endpoint = None
        else:
            state = cancel(job, profile=self._profile(args))
        now = "gone from the queue" if state.value == "UNKNOWN" else f"now {state.value}"
        print(f"Job {job} cancelled ({now}); its GPUs are free.")

    def _attach(self, args: argparse.Namespace) -> None:
        from .lifecycle import attach
        from .progress import ProgressView

        view = ProgressView(self.rich, f"job {args.job}")
        try:
            server = attach(args.job, profile=args.profile, on_progress=view)
        finally:
            view.stop()
        self._adopt(server, args.as_name)

    def _models(self, args: argparse.Namespace) -> None:
        from .cli import models_rows

        print_table(models_rows(self._profile(args)))

    def _plan(self, args: argparse.Namespace) -> None:
        from .lifecycle import plan_for
        from .plan import describe_plan

        kwargs = self._launch_kwargs(args)
        print(describe_plan(plan_for(args.model, **kwargs)), end="")

    def _script(self, args: argparse.Namespace) -> None:
        from .plan import plan_launch
        from .profiles import load_profile

        kwargs = self._launch_kwargs(args)
        profile = load_profile(kwargs.pop("profile"))
        print(plan_launch(profile, args.model, **kwargs).script, end="")

    def _use(self, args: argparse.Namespace) -> None:
        import openai

        client = openai.OpenAI(base_url=args.url, api_key=os.environ.get(args.key_env) or "EMPTY")
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
        try:
            args = _llm_parser().parse_args(shlex.split(line))
        except ValueError as error:
            return _error(f"%%llm: cannot read the options ({error}). Check the quotes.")
        except _Stop as stop:
            return _error(stop.message) if stop.message else None
        if self.endpoint is None:
            return _error("%%llm has no server yet: start one with `%hpcllm up MODEL`, attach to one with "
                          "`%hpcllm attach JOB`, or use any OpenAI-compatible endpoint with `%hpcllm use URL`.")
        namespace = self._ip.user_ns
        functions = {}
        for name in filter(None, (n.strip() for n in (args.tools or "").split(","))):
            if not callable(namespace.get(name)):
                return _error(f"%%llm --tools: {name!r} is not a function defined in this notebook.")
            functions[name] = namespace[name]
        if args.new:
            self.history = []
        prompt = {"role": "user", "content": interpolate(cell, namespace)}
        system = [{"role": "system", "content": interpolate(args.system, namespace)}] if args.system else []
        earlier = self.history if (args.chat or args.new) else []
        request: dict[str, Any] = {}
        if args.temperature is not None:
            request["temperature"] = args.temperature
        if args.max_tokens is not None:
            request["max_tokens"] = args.max_tokens
        endpoint = self.endpoint if not args.model else Endpoint(self.endpoint.client, args.model, self.endpoint.label)
        renderer = Renderer(self.rich, show_reasoning=args.reasoning == "show", fmt=args.format)
        try:
            added = run_prompt(endpoint, system + earlier + [prompt], renderer, functions=functions,
                               stream=not args.no_stream, **request)
        except KeyboardInterrupt:
            renderer.finish()
            return _error("(interrupted)")
        except Exception as error:  # the openai client's errors, explained in one paragraph
            return _error(_explain_api_error(error, endpoint))
        if args.chat or args.new:
            self.history += [prompt, *added]
        text = renderer.answer.content
        value: Any = text
        if args.format == "json":
            try:
                value = parse_json_answer(text)
            except ValueError as error:
                return _error(f"%%llm -f json: the answer is not valid JSON ({error}); it is in `_llm_text`.")
            finally:
                namespace["_llm_text"] = text
        if args.format == "code":
            self._ip.set_next_input(code_of(text), replace=False)
        if args.out:
            namespace[args.out] = value
        return value if args.format == "json" else None

    llm.__doc__ = LLM_HELP


def _explain_api_error(error: Exception, endpoint: Endpoint) -> str:
    import openai

    where = endpoint.label
    if isinstance(error, openai.APIConnectionError):
        return (f"%%llm cannot reach the server ({where}): {error}. Is the job still running? "
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
