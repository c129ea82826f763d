"""Validation of values that reach Slurm directives, shell text or a remote command: one place, used by
the launch options, the profile and the job spec. sbatch does not parse shell quoting in ``#SBATCH``
lines, and a line break anywhere in a value would start a new line of the script, so these are strict:
every pattern matches the whole value (``fullmatch``, ASCII only), and no value has a control character.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

__all__ = [
    "HOME_PREFIXES",
    "LAUNCHER_SBATCH_OPTIONS",
    "MAX_CPUS",
    "MAX_GPUS_PER_NODE",
    "MAX_IDLE_MINUTES",
    "check_extra_sbatch",
    "check_gpu_type",
    "check_gres",
    "check_mem",
    "check_model_name",
    "check_name",
    "check_number",
    "check_text",
    "check_time",
    "home_relative",
]

# C0 controls (line feed, carriage return, tab, escape...), DEL, C1 controls (NEL among them) and the
# Unicode line and paragraph separators: a line break to bash, sbatch or Python's splitlines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

_TIME = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?", re.ASCII)
_MEM = re.compile(r"([1-9][0-9]*)([KMGT]?)", re.ASCII | re.IGNORECASE)
_NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*"
_NAME = re.compile(rf"{_NAME_PART}(?:,{_NAME_PART})*", re.ASCII)
_GPU_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", re.ASCII)
_MODEL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*", re.ASCII)
_SBATCH_ITEM = re.compile(r"(?:#SBATCH[ \t]+)?--([a-z][a-z0-9-]*)(?:=([^\s\x00-\x1f\x7f-\x9f\u2028\u2029]+))?")

MAX_TIME_MINUTES = 365 * 24 * 60  # a year: longer is a typo (Slurm reads a huge number as no limit)
MAX_MEM_MB = 64 * 1024 * 1024  # 64 TB per node: more is a typo
MAX_NAME = 200  # characters in a partition, account, QOS or GPU type name
MAX_GPUS_PER_NODE = 64  # the largest GPU nodes have 16; a bigger count is a typo (and a long plan)
MAX_CPUS = 1024  # CPUs per task: the largest nodes have a few hundred cores
MAX_IDLE_MINUTES = 10080  # a week

_GRES = re.compile(r"gpu(?::([^:]+))?:([0-9]+)", re.ASCII)

# A path that starts with one of these is relative to the home directory on the cluster.
HOME_PREFIXES = ("~/", "$HOME/", "${HOME}/")

# The sbatch options the launcher sets itself (or that would take the job's output, node or shape away
# from what the script and `hpcllm` expect): a profile's extra_sbatch may not set them again.
LAUNCHER_SBATCH_OPTIONS = frozenset({
    "job-name", "nodes", "ntasks", "ntasks-per-node", "gres", "gpus", "gpus-per-node", "gpus-per-task",
    "cpus-per-task", "mem", "mem-per-cpu", "mem-per-gpu", "time", "output", "error", "input", "partition",
    "account", "qos", "comment", "wrap", "array", "chdir", "export", "export-file", "parsable", "wait",
    "test-only", "hold", "open-mode", "dependency", "kill-on-invalid-dep", "get-user-env", "uid", "gid",
})


def check_text(what: str, value: str, *, multiline: bool = False) -> str:
    """No control characters (with ``multiline``: none but line feed and tab, for shell text like the
    prologue). A line break in a value would end its line of the script and run the rest as a command."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (bytes that were not UTF-8): no file can hold it
            raise ConfigError(f"{what} {value.encode('utf-8', 'backslashreplace').decode()[:60]!r} is not valid "
                              "text (it came from bytes that are not UTF-8).", "Type it again as plain text.") from None
    found = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value)
    if found:
        allowed = " (line breaks and tabs are fine there)" if multiline else ""
        raise ConfigError(
            f"{what} {_show(value)} contains the control character {found.group()!r}.",
            f"Remove it{allowed}: a control character in a value would change the job script or the command "
            "run on the cluster.",
        )
    return value


def check_time(value: str) -> str:
    # The value as it will be written: a space or line break around it is refused, not stripped here,
    # since the caller puts `value` itself into the #SBATCH line.
    text = value
    match = _TIME.fullmatch(text)
    ok = match is not None and all(int(part) < 60 for part in (match.group(3), match.group(4)) if part)
    if match is not None and ok:
        ok = 0 < _minutes(match) <= MAX_TIME_MINUTES
    if not ok or text in ("0", ""):
        raise ConfigError(
            f"{_show(value)} is not a Slurm time limit (up to 365 days).",
            "Use minutes (90), HH:MM:SS (4:00:00) or D-HH:MM:SS (1-12:00:00).",
        )
    return text


def _minutes(match: re.Match[str]) -> float:
    """The time limit in minutes, as sbatch reads it: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, first, second, third = match.groups()
    numbers = [int(n) for n in (first, second, third) if n is not None]
    if days is not None:
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        return int(days) * 1440 + hours * 60 + minutes + seconds / 60
    if len(numbers) == 3:
        return numbers[0] * 60 + numbers[1] + numbers[2] / 60
    if len(numbers) == 2:
        return numbers[0] + numbers[1] / 60
    return numbers[0]


def check_mem(value: str) -> str:
    text = value  # as written into the #SBATCH line: nothing around it (see check_time)
    match = _MEM.fullmatch(text)
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    if match is None or int(match.group(1)) * scale[match.group(2).upper()] > MAX_MEM_MB:
        raise ConfigError(
            f"{_show(value)} is not a Slurm memory size (up to 64T).",
            "Use a whole number with an optional unit K, M, G or T, e.g. 32G or 64000M.",
        )
    return text


def check_name(what: str, value: str) -> str:
    """A partition, account or QOS name (a comma-separated list of them, as sbatch takes)."""
    if len(value) > MAX_NAME or not _NAME.fullmatch(value):
        raise ConfigError(
            f"{what} {_show(value)} has characters Slurm does not allow here.",
            "Use letters, digits, '.', '_', '+' and '-' only (names separated by commas), starting with a "
            f"letter, digit or '_', {MAX_NAME} characters at most.",
        )
    return value


def check_gpu_type(value: str) -> str:
    """A GPU type: the GRES type name of ``--gres=gpu:TYPE:N``."""
    if len(value) > MAX_NAME or not _GPU_TYPE.fullmatch(value):
        raise ConfigError(
            f"GPU type {_show(value)} is not a GRES type name.",
            "Use letters, digits, '.', '_', '+' and '-' only, starting with a letter or digit (e.g. a100, h200).",
        )
    return value


def check_extra_sbatch(entry: str) -> str:
    """One extra sbatch option: ``--option=value`` or ``--flag`` (a leading ``#SBATCH`` is fine), not one
    the launcher sets itself. Returns it without the ``#SBATCH``."""
    check_text("The extra_sbatch entry", entry)
    match = _SBATCH_ITEM.fullmatch(entry.strip())
    if match is None:
        raise ConfigError(
            f"The extra_sbatch entry {_show(entry)} is not one sbatch option.",
            "Write each as its own list item, --option=value or --flag (e.g. \"--constraint=ib\"), with no "
            "spaces in the value.",
        )
    # sbatch (getopt_long) takes any unambiguous abbreviation: --arr is --array, --outp is --output.
    taken = sorted(option for option in LAUNCHER_SBATCH_OPTIONS if option.startswith(match.group(1)))
    if taken:
        exact = match.group(1) in taken
        raise ConfigError(
            f"The extra_sbatch entry {_show(entry)} sets --{match.group(1) if exact else taken[0]}, which "
            "jupyter-hpcllm sets itself" + ("." if exact else " (sbatch takes abbreviations of its options)."),
            "Remove it; GPUs, time, memory, CPUs, partition, account and QOS are profile keys and launch options "
            "of their own.",
        )
    return entry.strip().removeprefix("#SBATCH").strip()


def check_gres(value: str) -> str:
    """``gpu:TYPE:N`` or ``gpu:N``, with a safe type name and 1 to MAX_GPUS_PER_NODE GPUs."""
    match = _GRES.fullmatch(value)
    if match is None or not 1 <= int(match.group(2)) <= MAX_GPUS_PER_NODE:
        raise ConfigError(f"The GPU request {_show(value)} is not gpu:TYPE:N with N from 1 to {MAX_GPUS_PER_NODE}.")
    if match.group(1) is not None:
        check_gpu_type(match.group(1))
    return value


def check_number(what: str, value: object, low: float, high: float, *, whole: bool = False,
                 unit: str = "") -> float:
    """A number (a whole one with ``whole``; never a bool, NaN or infinity) from ``low`` to ``high``."""
    kind = "a whole number" if whole else "a number"
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or (whole and not isinstance(number, int)) or not low <= number <= high:
        shown = _show(value) if isinstance(value, str) else repr(value)[:80]
        raise ConfigError(f"{what} must be {kind} from {low:g} to {high:g}{unit}, not {shown}.",
                          "Larger values are almost surely a typo.")
    return number


def home_relative(path: str) -> str | None:
    """The part after the home directory of ``~``, ``~/x``, ``$HOME/x`` or ``${HOME}/x`` (``""`` for the
    home itself); None for any other path."""
    if path in ("~", "$HOME", "${HOME}"):
        return ""
    for prefix in HOME_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


def check_model_name(model: str) -> str:
    """A name under the model root, or an absolute (or home-relative: ``~/``, ``$HOME/``) path made of
    safe names. Returns it stripped, with a home-relative path written ``~/...``."""
    check_text("The model name", model)
    model = model.strip().rstrip("/")
    rest = home_relative(model)
    if rest is not None:
        model = "~/" + rest
    parts = model.split("/")
    absolute = model.startswith("/") or rest is not None
    check = parts[1:] if absolute else parts
    if not model or not all(_MODEL_PART.fullmatch(p) for p in check if p) or ".." in parts or model == "~/":
        raise ConfigError(
            f"{_show(model)} is not a model name jupyter-hpcllm accepts.",
            "Give a directory name under the profile's model root (letters, digits, '.', '_', '+', '-'), "
            "or an absolute path made of such names.",
        )
    return model


def _show(value: str, limit: int = 80) -> str:
    """A value as an error message shows it: quoted, escapes visible, long ones cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 2] + "…" + text[-1]
