"""Every launch option, defined once: its type, default, help text and validation.

``LaunchOptions`` is frozen and checks itself when made, so a bad value never travels further than
here. The faces build it the way their input comes: ``add_arguments`` makes the argparse options of
the CLI and the magics, ``from_namespace`` reads what argparse parsed, ``from_mapping`` takes a
widget's values or a JSON body (numbers may arrive as text, empty text means "not set"). Errors are
``InvalidOption`` with ``field`` naming the option, so a form can mark it.

Adding an option: add one field below (with ``_option(...)`` metadata); every face gets it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shlex
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError, InvalidOption
from .checks import (
    MAX_CPUS,
    MAX_GPUS_PER_NODE,
    MAX_IDLE_MINUTES,
    check_gpu_type,
    check_mem,
    check_model_name,
    check_name,
    check_text,
    check_time,
)

__all__ = ["ENGINES", "LaunchOptions", "OptionSpec", "add_arguments", "option_kind", "option_specs",
           "split_engine_args"]

from .profiles import ENGINES

_PARSER_NAME = re.compile(r"[A-Za-z0-9_.-]*")
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds `up` may wait: a week (a job's own time limit ends it sooner)


@dataclass(frozen=True)
class OptionSpec:
    """How one field is offered: its help, flag and check. ``group`` says which commands take it:
    "job" options change what runs (script, plan, up), "launch" ones how `up` waits."""

    help: str
    group: str = "job"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], object] | None = None
    minimum: float | None = None
    maximum: float | None = None
    bounds_hint: str = ""  # why the bounds are what they are, for the error past one of them
    # Empty text from a form means "not set" (None), except where '' is itself a choice (no parser).
    empty_is_none: bool = True
    positional: bool = False
    after_dashes: bool = False  # engine arguments: everything after `--`, not an option
    negative_flag: str | None = None  # a True-by-default bool offered as its negation (--no-reuse)
    const: str | None = None  # the value of the flag given alone (`--speculative` = `--speculative auto`)

    def flag(self, name: str) -> str:
        return name if self.positional else "--" + name.replace("_", "-")


def _option(help: str, **spec: Any) -> Any:
    return {"spec": OptionSpec(help, **spec)}


def _parser_name(value: str) -> None:
    if not _PARSER_NAME.fullmatch(value):
        raise ConfigError(f"{value!r} is not a parser name.", "Parser names are letters, digits, '_', '.' and '-'.")


def _slurm_name(value: str) -> None:
    check_name("The value", value)


def _engine_args(values: tuple[str, ...]) -> None:
    for value in values:
        check_text("The engine argument", value)


@dataclass(frozen=True)
class LaunchOptions:
    """What to launch and how. Every field but `model` has a default: the profile's, or automatic."""

    model: str = field(metadata=_option(
        "a directory name under the profile's model root, or an absolute path", positional=True,
        check=check_model_name))
    gpus: int | None = field(default=None, metadata=_option(
        "number of GPUs the job holds (= tensor-parallel size × replicas); default: the smallest allocation "
        "that holds the model", metavar="N", minimum=1, maximum=MAX_GPUS_PER_NODE,
        bounds_hint=f"A job's GPUs are on one node, and jupyter-hpcllm takes at most {MAX_GPUS_PER_NODE} per node."))
    gpu_type: str | None = field(default=None, metadata=_option(
        "GPU type, as the profile lists it (e.g. a100, h200)", metavar="TYPE", check=check_gpu_type))
    engine: str | None = field(default=None, metadata=_option(
        "inference engine; auto (the default when the profile has both images): one whose image loads the "
        "model's architecture, the profile's default first", choices=(*ENGINES, "auto")))
    time: str | None = field(default=None, metadata=_option(
        "Slurm time limit, e.g. 4:00:00 or 1-00:00:00; default: the profile's", check=check_time))
    cpus: int | None = field(default=None, metadata=_option(
        "CPUs per task; default: the profile's", metavar="N", minimum=1, maximum=MAX_CPUS,
        bounds_hint=f"A task's CPUs are on one node, and jupyter-hpcllm takes at most {MAX_CPUS}."))
    mem: str | None = field(default=None, metadata=_option(
        "memory per node, e.g. 32G; default: the profile's", check=check_mem))
    partition: str | None = field(default=None, metadata=_option("Slurm partition", check=_slurm_name))
    account: str | None = field(default=None, metadata=_option("Slurm account", check=_slurm_name))
    qos: str | None = field(default=None, metadata=_option("Slurm QOS", check=_slurm_name))
    tool_call_parser: str | None = field(default=None, metadata=_option(
        "override the tool-call parser chosen from the model card, the image and the family table ('' for none; "
        "SGLang: auto detects it from the chat template)", metavar="NAME",
        check=_parser_name, empty_is_none=False))
    reasoning_parser: str | None = field(default=None, metadata=_option(
        "override the reasoning parser chosen from the model card, the image and the family table ('' for none; "
        "SGLang: auto)", metavar="NAME",
        check=_parser_name, empty_is_none=False))
    engine_args: tuple[str, ...] = field(default=(), metadata=_option(
        "arguments for the engine, verbatim (after `--` on a command line)", after_dashes=True,
        check=_engine_args))
    replicas: int | None = field(default=None, metadata=_option(
        "copies of the model in the job, each on GPUs / replicas GPUs (data parallel: vLLM "
        "--data-parallel-size, SGLang --dp-size); more replicas serve more people at once when the model fits "
        "in fewer GPUs; default 1", metavar="N", minimum=1, maximum=MAX_GPUS_PER_NODE,
        bounds_hint="Each replica needs at least one GPU of the job's."))
    speculative: str | None = field(default=None, metadata=_option(
        "speculative decoding with a draft or EAGLE model: alone (or 'auto') takes the one the model card names "
        "or one found beside the model under the model root; or name the draft model", metavar="DRAFT",
        check=check_model_name, const="auto"))
    idle_timeout: float | None = field(default=None, metadata=_option(
        "end the job by itself after this many minutes with no request served and no client attached; 0: never",
        metavar="MINUTES", minimum=0, maximum=MAX_IDLE_MINUTES,
        bounds_hint=f"Use 0 to turn it off; at most {MAX_IDLE_MINUTES:g} minutes (a week)."))
    timeout: float | None = field(default=None, metadata=_option(
        "give up (and cancel the job) after this many seconds; default: the job's time limit, at least an hour",
        group="launch", metavar="SECONDS",
        minimum=1e-3, maximum=MAX_TIMEOUT, bounds_hint="At most a week (604800 s)."))
    renew: bool = field(default=False, metadata=_option(
        "keep the server past its time limit: shortly before it ends, start a successor with the same plan and "
        "key, and move this address to it", group="launch"))
    reuse: bool = field(default=True, metadata=_option(
        "submit a new job even if the same one is pending or running", group="launch",
        negative_flag="--no-reuse"))

    def __post_init__(self) -> None:
        hints = _hints()
        for item in fields(self):
            _validate(item.name, hints[item.name], getattr(self, item.name), item.metadata["spec"])

    # -- building it

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LaunchOptions:
        """From a widget's values or a JSON body: unknown keys are refused, text is converted."""
        known = {item.name: item for item in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                raise InvalidOption(str(key), f"{key!r} is not a launch option.",
                                    (f"Did you mean {close[0]!r}? " if close else "")
                                    + f"The options are: {', '.join(known)}.")
        if "model" not in values or values["model"] in (None, ""):
            raise InvalidOption("model", "No model given.", "Name a model (`hpcllm models` lists them).")
        hints = _hints()
        converted = {key: _convert(key, hints[key], value, known[key].metadata["spec"])
                     for key, value in values.items()}
        return cls(**converted)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> LaunchOptions:
        """From what ``add_arguments`` parsed (options a command does not take keep their defaults)."""
        names = [item.name for item in fields(cls)]
        return cls.from_mapping({name: getattr(namespace, name) for name in names if hasattr(namespace, name)
                                 and not (getattr(namespace, name) is None and name != "model")})

    def replace(self, **changes: Any) -> LaunchOptions:
        """A copy with some options changed (and checked)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what `from_mapping` takes back."""
        return {item.name: (list(value) if isinstance(value := getattr(self, item.name), tuple) else value)
                for item in fields(self)}


def option_specs() -> list[tuple[str, type | Any, Any, OptionSpec]]:
    """(name, type, default, spec) for every option, in order: what a form or a help text is made from."""
    hints = _hints()
    return [(item.name, hints[item.name], None if item.default is MISSING else item.default,
             item.metadata["spec"]) for item in fields(LaunchOptions)]


def option_kind(hint: Any) -> str:
    """How a form takes an option of this type: "text", "integer", "number", "boolean" or "arguments"."""
    base = _base_type(hint)
    if base is tuple:
        return "arguments"
    return {int: "integer", float: "number", bool: "boolean"}.get(base, "text")


def add_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...] = ("job",)) -> None:
    """The argparse options for the options of these groups (engine arguments come after `--`)."""
    for name, hint, default, spec in option_specs():
        if spec.group not in groups or spec.after_dashes:
            continue
        base = _base_type(hint)
        if spec.positional:
            parser.add_argument(name, help=spec.help)
        elif base is bool and spec.negative_flag:
            parser.add_argument(spec.negative_flag, dest=name, action="store_false", default=default,
                                help=spec.help)
        elif base is bool:
            parser.add_argument(spec.flag(name), dest=name, action="store_true", default=default, help=spec.help)
        else:
            # Values are checked by LaunchOptions (one message for every face), so argparse takes text.
            extra: dict[str, Any] = {"nargs": "?", "const": spec.const} if spec.const is not None else {}
            parser.add_argument(spec.flag(name), dest=name, metavar=spec.metavar, choices=spec.choices,
                                help=spec.help, **extra)


def split_engine_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the engine's): everything after the first `--` belongs to the engine."""
    if "--" in argv:
        return argv[: argv.index("--")], argv[argv.index("--") + 1:]
    return argv, []


# --- checking ---------------------------------------------------------------------------------------


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(LaunchOptions)
    return _HINTS


_HINTS: dict[str, Any] | None = None


def _base_type(hint: Any) -> Any:
    """int for `int | None`, tuple for `tuple[str, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    return args[0] if args and origin is not None else hint


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _convert(name: str, hint: Any, value: Any, spec: OptionSpec) -> Any:
    """Text from a form or JSON into the field's type; the value's checks come after, in the class."""
    base = _base_type(hint)
    flag = spec.flag(name)
    if isinstance(value, str) and base is str:
        value = value.strip()  # what a form or a JSON body adds around a value never reaches the script
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if text == "" and _optional(hint):
            return None
        try:
            if base is int:
                return int(text)
            if base is float:
                return float(text)
            if base is bool and text.lower() in ("true", "false", "1", "0", "yes", "no"):
                return text.lower() in ("true", "1", "yes")
            if base is tuple:
                return tuple(shlex.split(text))
        except ValueError:
            pass
        raise InvalidOption(name, f"{flag} takes {_kind(base)}, not {value!r}.")
    if base is str and value == "" and spec.empty_is_none and _optional(hint):
        return None
    if base is tuple and isinstance(value, list):
        return tuple(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _validate(name: str, hint: Any, value: Any, spec: OptionSpec) -> None:
    flag = spec.flag(name)
    if value is None:
        if _optional(hint):
            return
        raise InvalidOption(name, f"{flag} is required.")
    base = _base_type(hint)
    ok = (isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))) or (
        base is float and isinstance(value, int) and not isinstance(value, bool))
    if base is tuple:
        ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    if not ok:
        raise InvalidOption(name, f"{flag} takes {_kind(base)}, not {value!r}.")
    if base is str and value != value.strip():
        raise InvalidOption(name, f"{flag} has spaces or line breaks around {value.strip()!r}.", "Remove them.")
    if spec.choices is not None and value not in spec.choices:
        raise InvalidOption(name, f"{flag} must be one of {', '.join(spec.choices)}, not {value!r}.")
    if base is float and not math.isfinite(value):
        raise InvalidOption(name, f"{flag} must be a finite number, not {value!r}.")
    if spec.minimum is not None and value < spec.minimum:
        raise InvalidOption(name, f"{flag} must be at least {spec.minimum:g}, not {value!r}.", spec.bounds_hint)
    if spec.maximum is not None and value > spec.maximum:
        raise InvalidOption(name, f"{flag} must be at most {spec.maximum:g}, not {value!r}.", spec.bounds_hint)
    if spec.check is not None and (value != "" or spec.empty_is_none):
        try:
            spec.check(value)
        except ConfigError as error:
            raise InvalidOption(name, f"{flag}: {error.message}", error.hint) from None


def _kind(base: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text",
            tuple: "a list of words"}.get(base, str(base))
