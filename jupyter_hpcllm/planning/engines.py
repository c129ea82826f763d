"""Pure builders of the vLLM and SGLang command lines, and readers of their start-up logs.

A command is an argv list; the slurm layer quotes every element when it renders the script. The port is
only known on the node at run time, so the argv holds ``PORT`` (a marker object) where the port goes.
The API key never enters an argv: vLLM reads it from ``VLLM_API_KEY``; SGLang has no such variable, so
it is started through a two-line Python shim that reads the key file and appends ``--api-key`` to
``sys.argv`` inside the process, where ``ps`` cannot see it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["KEY_FILE", "PORT", "EngineCommand", "EngineSpec", "ShellVar", "build_command", "loading_progress"]


class ShellVar(str):
    """A value known only on the node at run time; the script renders it as a double-quoted variable."""


PORT = ShellVar("$PORT")
KEY_FILE = ShellVar("$JOB_DIR/key")

# Options the launcher owns: a user passing them after `--` would break the address or the key.
_MANAGED = {
    "vllm": ("--host", "--port", "--api-key", "--served-model-name"),
    "sglang": ("--host", "--port", "--api-key", "--served-model-name", "--model-path", "--model"),
}

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


@dataclass(frozen=True)
class EngineCommand:
    """The argv to run in the container, and how the API key reaches it."""

    argv: tuple[str, ...]
    key_env: str | None = None  # the engine reads the key from this environment variable
    key_file_arg: bool = False  # the argv's element KEY_FILE stands for the key file's path



def build_command(spec: EngineSpec) -> EngineCommand:
    for arg in spec.extra_args:
        option = arg.split("=", 1)[0]
        if option in _MANAGED[spec.engine]:
            raise ConfigError(
                f"{option} is set by jupyter-hpcllm and cannot be passed as an extra engine argument.",
                "Remove it from the arguments after `--`; the port, host, model name and API key are "
                "chosen per job.",
            )
    if spec.tensor_parallel < 1:
        raise ConfigError(f"Tensor-parallel size must be at least 1, not {spec.tensor_parallel}.")
    if spec.engine == "vllm":
        return _vllm(spec)
    if spec.engine == "sglang":
        return _sglang(spec)
    raise ConfigError(f"Unknown engine {spec.engine!r}.", "Use --engine vllm or --engine sglang.")


def _vllm(spec: EngineSpec) -> EngineCommand:
    argv = ["vllm", "serve", spec.model_path, "--served-model-name", spec.served_name,
            "--host", "0.0.0.0", "--port", PORT, "--tensor-parallel-size", str(spec.tensor_parallel)]
    if spec.tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_parser]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    return EngineCommand(tuple(argv + list(spec.extra_args)), key_env="VLLM_API_KEY")


def _sglang(spec: EngineSpec) -> EngineCommand:
    argv = ["python", "-c", _SGLANG_SHIM, KEY_FILE, "--model-path", spec.model_path,
            "--served-model-name", spec.served_name, "--host", "0.0.0.0", "--port", PORT,
            "--tp-size", str(spec.tensor_parallel), "--enable-metrics"]
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


def help_argvs(engine: str) -> tuple[tuple[str, ...], ...]:
    """Commands that print an engine's options, newest form first (vLLM ≥ 0.10 needs --help=all)."""
    if engine == "vllm":
        return (("vllm", "serve", "--help=all"), ("vllm", "serve", "--help"))
    return (("python", "-m", "sglang.launch_server", "--help"),)


def parse_parser_choices(help_text: str) -> dict[str, tuple[str, ...]]:
    """The parser names an engine's --help lists: {"tool": (...), "reasoning": (...)} (empty if not shown)."""
    found: dict[str, tuple[str, ...]] = {}
    for kind, flag in (("tool", "--tool-call-parser"), ("reasoning", "--reasoning-parser")):
        match = re.search(re.escape(flag) + r"\s+\{([^}]*)\}", help_text)
        found[kind] = tuple(name.strip() for name in match.group(1).split(",") if name.strip()) if match else ()
    return found
