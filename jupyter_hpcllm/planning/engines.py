"""Pure builders of the vLLM and SGLang command lines, and readers of their start-up logs.

A command is an argv list; the slurm layer quotes every element when it renders the script. The port is
only known on the node at run time, so the argv holds ``PORT`` (a marker object) where the port goes.
The API key never enters an argv: vLLM reads it from ``VLLM_API_KEY``; SGLang has no such variable, so
it is started through a two-line Python shim that reads the key file and appends ``--api-key`` to
``sys.argv`` inside the process, where ``ps`` cannot see it. A path under the home directory
(``~/models/x``) is a ``HomePath``, so the script lets the node's shell expand the home directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config.checks import check_text, home_relative
from ..errors import ConfigError

__all__ = ["KEY_FILE", "PORT", "EngineCommand", "EngineSpec", "HomePath", "Joined", "ShellVar", "build_command",
           "loading_progress", "path_word"]


class ShellVar(str):
    """A value known only on the node at run time; the script renders it as a double-quoted variable."""


class HomePath(str):
    """A path under the home directory on the cluster (``~/x``, ``$HOME/x``, ``${HOME}/x``): the script
    renders it as ``"$HOME"/'x'``, so the node's shell puts the home directory in (quoted, ``~`` is not
    expanded, and the engine would look for a directory named ``~``)."""


class Joined(str):
    """One argv element made of literal text and home paths (a JSON value naming a file under the home
    directory): the script renders each part as HomePath or literal and joins them into one word."""

    parts: tuple[str, ...]

    def __new__(cls, *parts: str) -> Joined:
        joined = super().__new__(cls, "".join(parts))
        joined.parts = parts
        return joined


def path_word(path: str) -> str:
    """A path for an argv: a HomePath when it is under the home directory, else the path itself."""
    return HomePath(path) if home_relative(path) is not None else path


# The engine listens on the node's loopback only, on this port; the job's relay (node/relay.py) is what
# other nodes reach, and it lets nothing through without the key (see planning/script.py).
PORT = ShellVar("$ENGINE_PORT")
KEY_FILE = ShellVar("$JOB_DIR/key")

# Options the launcher owns, and why a user may not pass them after `--`. vLLM and SGLang parse their
# options with argparse, which takes any unambiguous abbreviation (`--por 80` is `--port 80`), and vLLM
# also reads `--api_key` as `--api-key`: so an abbreviation of these is refused as well (see _managed).
_ADDRESS = "the engine listens on the node's loopback, on a port chosen per job; the job's relay is its one door"
_KEY = "the API key is made per job and reaches the engine through its environment or a key file"
_MODEL = "the model and the name it is served as come from the model you launch"
_COMMON = {
    "--host": _ADDRESS,
    "--port": _ADDRESS,
    "--api-key": _KEY,
    "--served-model-name": _MODEL,
    "--ssl-keyfile": "the relay talks plain HTTP to the engine on the node's loopback; TLS there would break it",
    "--ssl-certfile": "the relay talks plain HTTP to the engine on the node's loopback; TLS there would break it",
    "--config": "a config file could set the host, port or API key behind jupyter-hpcllm's back; pass its "
                "options one by one after `--` instead",
}
_TP = ("the tensor-parallel size is the job's GPUs over its replicas: set it with --gpus (and --replicas) "
       "(another size would leave GPUs the job holds idle, or ask for ones it does not hold)")
_DP = "the data-parallel size is the number of replicas: set it with --replicas (and the GPUs with --gpus)"
_MANAGED: dict[str, dict[str, str]] = {
    "vllm": {
        **_COMMON,
        "--tensor-parallel-size": _TP,
        "--data-parallel-size": _DP,
        "--uds": "a unix socket would bypass the job's relay, and with it the key check",
        "--headless": "jupyter-hpcllm talks to the engine's API server, which --headless turns off",
    },
    "sglang": {**_COMMON, "--model-path": _MODEL, "--model": _MODEL, "--tp-size": _TP, "--tensor-parallel-size": _TP,
               "--dp-size": _DP, "--data-parallel-size": _DP},
}
# Single-dash aliases of managed options.
_SHORT = {"vllm": {"-tp": "--tensor-parallel-size", "-dp": "--data-parallel-size"}}

# The SGLang shim: the key file is argv[1]; the rest is SGLang's own command line.
_SGLANG_SHIM = (
    'import runpy,sys; key=open(sys.argv.pop(1)).read().strip(); '
    'sys.argv=["sglang.launch_server",*sys.argv[1:],"--api-key",key]; '
    'runpy.run_module("sglang.launch_server",run_name="__main__",alter_sys=True)'
)


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # "vllm" or "sglang"
    model_path: str
    served_name: str
    tensor_parallel: int
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    extra_args: tuple[str, ...] = ()
    data_parallel: int = 1  # replicas of the model, each on tensor_parallel GPUs


@dataclass(frozen=True)
class EngineCommand:
    """The argv to run in the container, and how the API key reaches it."""

    argv: tuple[str, ...]
    key_env: str | None = None  # the engine reads the key from this environment variable
    key_file_arg: bool = False  # the argv's element KEY_FILE stands for the key file's path



def build_command(spec: EngineSpec) -> EngineCommand:
    for arg in spec.extra_args:
        check_text("The engine argument", arg)
        managed = _managed(spec.engine, arg)
        if managed is not None:
            option, why = managed
            written = arg.split("=", 1)[0]
            spelled = "" if written == option else (f" ({written} abbreviates it)" if written.startswith("--") else
                                                    f" ({written} is its short form)")
            raise ConfigError(
                f"{option} is set by jupyter-hpcllm and cannot be passed as an extra engine argument{spelled}: "
                f"{why}.",
                "Remove it from the arguments after `--`.",
            )
    if spec.tensor_parallel < 1 or spec.data_parallel < 1:
        raise ConfigError(f"Tensor- and data-parallel sizes must be at least 1, not {spec.tensor_parallel} and "
                          f"{spec.data_parallel}.")
    if spec.engine == "vllm":
        return _vllm(spec)
    if spec.engine == "sglang":
        return _sglang(spec)
    raise ConfigError(f"Unknown engine {spec.engine!r}.", "Use --engine vllm or --engine sglang.")


def option_name(arg: str) -> str:
    """The option an engine argument sets, as the engines read it: `--max_model_len=8` is
    `--max-model-len` (vLLM reads `_` in an option's name as `-`); anything else as written."""
    written = arg.split("=", 1)[0]
    return "--" + written[2:].replace("_", "-") if written.startswith("--") else written


def passes(engine_args: tuple[str, ...], option: str) -> bool:
    """Whether the engine arguments set this option (in any spelling the engines take, but abbreviated)."""
    return any(option_name(arg) == option for arg in engine_args)


def _managed(engine: str, arg: str) -> tuple[str, str] | None:
    """(the managed option, why) if ``arg`` is one, abbreviated or not, else None. argparse takes any
    prefix of a long option (at least one letter after `--`; we refuse from two, as `--h` and `--p`
    are ambiguous already), with or without ``=value``; vLLM reads `_` in an option's name as `-`."""
    written = arg.split("=", 1)[0]
    if written in _SHORT.get(engine, {}):
        option = _SHORT[engine][written]
        return option, _MANAGED[engine][option]
    if not written.startswith("--") or written.startswith("---") or len(written) < 4:
        return None
    name = option_name(written)
    matches = [(option, why) for option, why in _MANAGED.get(engine, {}).items() if option.startswith(name)]
    return min(matches, key=lambda match: len(match[0])) if matches else None  # the exact one, if any


def _vllm(spec: EngineSpec) -> EngineCommand:
    argv = ["vllm", "serve", path_word(spec.model_path), "--served-model-name", spec.served_name,
            "--host", "127.0.0.1", "--port", PORT, "--tensor-parallel-size", str(spec.tensor_parallel)]
    if spec.data_parallel > 1:
        argv += ["--data-parallel-size", str(spec.data_parallel)]
    if spec.tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_parser]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    return EngineCommand(tuple(argv + list(spec.extra_args)), key_env="VLLM_API_KEY")


def _sglang(spec: EngineSpec) -> EngineCommand:
    argv = ["python", "-c", _SGLANG_SHIM, KEY_FILE, "--model-path", path_word(spec.model_path),
            "--served-model-name", spec.served_name, "--host", "127.0.0.1", "--port", PORT,
            "--tp-size", str(spec.tensor_parallel), "--enable-metrics"]
    if spec.data_parallel > 1:
        argv += ["--dp-size", str(spec.data_parallel)]
    if spec.tool_parser:
        argv += ["--tool-call-parser", spec.tool_parser]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    return EngineCommand(tuple(argv + list(spec.extra_args)), key_file_arg=True)


def display_argv(command: EngineCommand) -> tuple[str, ...]:
    """The command as a person would type it (the SGLang shim shown as `python -m ...`)."""
    if command.key_file_arg:
        return ("python", "-m", "sglang.launch_server", *command.argv[4:])
    return command.argv


_SHARDS = re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)")


def loading_progress(log: str) -> tuple[int, int] | None:
    """The last (shards loaded, shards total) in an engine log, or None before loading starts."""
    matches = _SHARDS.findall(log)
    if not matches:
        return None
    _, done, total = matches[-1]
    return int(done), int(total)
