"""Validation of values that reach Slurm directives or shell text: one place, used by the launch options
and by the job spec. sbatch does not parse shell quoting in ``#SBATCH`` lines, so these are strict."""

from __future__ import annotations

import re

from ..errors import ConfigError

__all__ = ["check_mem", "check_model_name", "check_name", "check_time"]

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^[1-9]\d*[KMGT]?$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")


def check_time(value: str) -> str:
    match = _TIME.match(value.strip())
    ok = bool(match) and all(int(part) < 60 for part in (match.group(3), match.group(4)) if part)  # type: ignore[union-attr]
    if not ok or value.strip() in ("0", ""):
        raise ConfigError(
            f"{value!r} is not a Slurm time limit.",
            "Use minutes (90), HH:MM:SS (4:00:00) or D-HH:MM:SS (1-12:00:00).",
        )
    return value.strip()


def check_mem(value: str) -> str:
    if not _MEM.match(value.strip()):
        raise ConfigError(
            f"{value!r} is not a Slurm memory size.",
            "Use a whole number with an optional unit K, M, G or T, e.g. 32G or 64000M.",
        )
    return value.strip()


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise ConfigError(
            f"{what} {value!r} has characters Slurm does not allow here.",
            "Use letters, digits, '.', '_', '+' and '-' only.",
        )
    return value



_MODEL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_model_name(model: str) -> str:
    """A name under the model root, or an absolute (or ``~/``) path made of safe names."""
    model = model.strip().rstrip("/")
    parts = model.split("/")
    absolute = model.startswith("/") or model.startswith("~/")
    check = parts[1:] if absolute else parts
    if not model or not all(_MODEL_PART.match(p) for p in check if p) or ".." in parts:
        raise ConfigError(
            f"{model!r} is not a model name jupyter-hpcllm accepts.",
            "Give a directory name under the profile's model root (letters, digits, '.', '_', '+', '-'), "
            "or an absolute path made of such names.",
        )
    return model
