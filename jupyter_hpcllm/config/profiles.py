"""Cluster profiles: one typed, resolved config object per cluster.

A profile comes from a built-in preset (``ebi``), from the user's TOML file, or from both: a file
profile named like a preset, or saying ``preset = "ebi"``, overrides only the keys it sets.
The file is ``$HPCLLM_CONFIG`` or ``config.toml`` in the platform's user config directory.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checks import (
    MAX_CPUS,
    MAX_GPUS_PER_NODE,
    MAX_IDLE_MINUTES,
    check_extra_sbatch,
    check_gpu_type,
    check_mem,
    check_name,
    check_number,
    check_text,
    check_time,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["PRESETS", "GpuType", "Profile", "config_path", "load_profile", "profile_names", "starter_config"]

ENGINES = ("vllm", "sglang")
RUNTIMES = ("singularity", "apptainer", "none")
SSH_BACKENDS = ("paramiko", "openssh")
MAX_GPU_MEMORY_GB = 4096.0  # per GPU: more is a typo
MAX_WALLTIME_WARNING_MINUTES = 1440.0


@dataclass(frozen=True)
class GpuType:
    """A GPU type the cluster offers: its Slurm GRES name, how many one job may take, memory per GPU."""

    name: str
    max_count: int
    memory_gb: float
    min_count: int = 1

    def __post_init__(self) -> None:
        # Bounded here, whoever makes one: a count of millions would make planning loop for seconds.
        check_gpu_type(self.name)
        what = f"GPU type {self.name}:"
        check_number(f"{what} max_count", self.max_count, 1, MAX_GPUS_PER_NODE, whole=True, unit=" GPUs per job")
        check_number(f"{what} min_count", self.min_count, 1, self.max_count, whole=True,
                     unit=" (its max_count)")
        check_number(f"{what} memory_gb", self.memory_gb, 0.1, MAX_GPU_MEMORY_GB, unit=" GB per GPU")

    @property
    def counts(self) -> range:
        return range(self.min_count, self.max_count + 1)


@dataclass(frozen=True)
class Profile:
    """Everything jupyter-hpcllm needs to know about one cluster."""

    name: str
    # How to reach the login node. host "local" means: Jupyter already runs on the cluster.
    host: str = "local"
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    known_hosts: str | None = None
    ssh_config: str = "~/.ssh/config"
    connect_timeout: float = 15.0
    command_timeout: float = 60.0
    # Seconds between keepalives that expect a reply: a connection silent for two of them is dead.
    keepalive: float = 15.0
    # "paramiko" (default, portable) or "openssh": the system ssh with a ControlMaster (FIDO keys,
    # Kerberos, an MFA policy satisfied once per master). Not on Windows, whose ssh has no ControlMaster.
    ssh_backend: str = "paramiko"
    # Slurm defaults for the job.
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "4:00:00"
    cpus: int = 16
    mem: str = "32G"
    extra_sbatch: tuple[str, ...] = ()
    prologue: str = ""
    gpu_types: Mapping[str, GpuType] = field(default_factory=dict)
    default_gpu_type: str | None = None
    default_gpus: int = 1
    # Where models and engine images live on the cluster, and how to run the images.
    model_root: str = "~/models"
    runtime: str = "singularity"
    runtime_path: str | None = None
    runtime_args: tuple[str, ...] = ("--nv",)
    binds: tuple[str, ...] = ()
    images: Mapping[str, str] = field(default_factory=dict)
    default_engine: str = "vllm"
    # Where the vLLM image keeps its examples/ (tool chat templates for Llama 3/4, Gemma 3, DeepSeek).
    vllm_examples_dir: str = "/vllm-workspace/examples"
    # Where the SGLang image keeps its tool chat templates (Llama 4 and Gemma 3 need its pythonic ones).
    sglang_examples_dir: str = "/sgl-workspace/sglang/examples/chat_template"
    # Minutes with no request served and no client attached after which a job ends by itself (0: never).
    idle_timeout: float = 60.0
    # Faces warn when less than this many minutes of the job's time limit remain.
    walltime_warning: float = 10.0

    def __post_init__(self) -> None:
        _check_profile(self)

    @property
    def is_local(self) -> bool:
        return self.host in ("", "local", "localhost-no-ssh")

    @property
    def runtime_command(self) -> str:
        return self.runtime_path or self.runtime

    def gpu_type(self, name: str | None) -> GpuType:
        """The named GPU type (or the default), or a ConfigError listing what this cluster offers."""
        name = name or self.default_gpu_type or next(iter(self.gpu_types), None)
        offered = ", ".join(
            f"{g.name} (1–{g.max_count} × {g.memory_gb:g} GB)" for g in self.gpu_types.values()
        )
        if name is None:
            raise ConfigError(
                f"Profile {self.name!r} lists no GPU types.",
                "Add a [profiles.NAME.gpu_types.TYPE] table with max_count and memory_gb to your config.",
            )
        if name not in self.gpu_types:
            raise ConfigError(
                f"GPU type {name!r} is not offered by profile {self.name!r}.",
                f"Use --gpu-type with one of: {offered}.",
            )
        return self.gpu_types[name]

    def image(self, engine: str) -> str:
        if engine not in ENGINES:
            raise ConfigError(f"Unknown engine {engine!r}.", f"Use --engine {' or '.join(ENGINES)}.")
        if self.runtime == "none":
            return ""
        if engine not in self.images:
            raise ConfigError(
                f"Profile {self.name!r} has no container image for {engine}.",
                f"Set images.{engine} = \"/path/to/{engine}.sif\" in the profile, or use --engine "
                f"{' / '.join(e for e in self.images) or 'with an image'}.",
            )
        return self.images[engine]

    def examples_dir(self, engine: str) -> str:
        """Where the engine's image keeps its tool chat templates."""
        return self.vllm_examples_dir if engine == "vllm" else self.sglang_examples_dir

    @property
    def engines(self) -> tuple[str, ...]:
        """The engines this profile can run: those with an image (every one when no container runtime)."""
        if self.runtime == "none":
            return ENGINES
        return tuple(engine for engine in ENGINES if engine in self.images)


# Bounds of the numeric keys: (low, high, whole number?, unit). Outside them a value is a typo.
_NUMBERS: dict[str, tuple[float, float, bool, str]] = {
    "port": (1, 65535, True, ""),
    "cpus": (1, MAX_CPUS, True, " CPUs"),
    "default_gpus": (1, MAX_GPUS_PER_NODE, True, " GPUs"),
    "connect_timeout": (0.1, 600, False, " seconds"),
    "command_timeout": (0.1, 3600, False, " seconds"),
    "keepalive": (0.1, 3600, False, " seconds"),
    "idle_timeout": (0, MAX_IDLE_MINUTES, False, " minutes (0: never)"),
    "walltime_warning": (0, MAX_WALLTIME_WARNING_MINUTES, False, " minutes"),
}
_CHOICES = {"runtime": RUNTIMES, "default_engine": ENGINES, "ssh_backend": SSH_BACKENDS}
_SLURM_NAMES = ("partition", "account", "qos")
# Checked when connecting, as OpenSSH checks names on its command line (sshtokens: control characters and
# shell metacharacters refused, with the reason); the name is checked above.
_SSH_NAMES = ("name", "host", "user", "proxy_jump")


def _check_profile(profile: Profile) -> None:
    """Every value of a profile, however it was made (a file, a preset, ``Profile(...)`` in Python):
    types, bounds, names Slurm takes, and no control character in anything that reaches the job script
    or a command on the cluster (a line break there would run the rest of the value as a command)."""
    name = profile.name
    prefix = f"Profile {name!r}: "

    def keyed(check: Callable[[], object], what: str = "") -> None:
        try:
            check()
        except ConfigError as error:
            message = error.message
            message = "the " + message[4:] if message.startswith("The ") else message
            raise ConfigError(prefix + what + message, error.hint) from None

    if not isinstance(name, str):
        raise ConfigError(f"A profile name must be text, not {name!r}.")
    keyed(lambda: check_text("the profile name", name))
    for item in fields(Profile):
        key, value = item.name, getattr(profile, item.name)
        if key in _SSH_NAMES:
            continue
        if key in _NUMBERS:
            low, high, whole, unit = _NUMBERS[key]
            if not (key == "port" and value is None):
                keyed(partial(check_number, key, value, low, high, whole=whole, unit=unit))
        elif isinstance(value, str):
            keyed(partial(check_text, key, value, multiline=key == "prologue"))
        elif isinstance(value, tuple):
            for entry in value:
                if not isinstance(entry, str):
                    raise ConfigError(f"{prefix}{key} must be a list of strings, not {value!r}.")
                keyed(partial(check_text, f"the {key} entry", entry))
        elif value is not None and key not in ("gpu_types", "images"):
            raise ConfigError(f"{prefix}{key} must be text, not {value!r}.")
    for key, choices in _CHOICES.items():
        if getattr(profile, key) not in choices:
            raise ConfigError(f"{prefix}{key} must be one of {', '.join(choices)}, not {getattr(profile, key)!r}.")
    keyed(partial(check_time, profile.time), what="time ")
    keyed(partial(check_mem, profile.mem), what="mem ")
    for key in _SLURM_NAMES:
        value = getattr(profile, key)
        if value is not None:
            keyed(partial(check_name, key, value))
    for entry in profile.extra_sbatch:
        keyed(partial(check_extra_sbatch, entry))
    if profile.default_gpu_type is not None:
        keyed(partial(check_gpu_type, profile.default_gpu_type), what="default_gpu_type: ")
    if not isinstance(profile.gpu_types, Mapping) or not all(
            isinstance(gpu, GpuType) and gpu.name == key for key, gpu in profile.gpu_types.items()):
        raise ConfigError(f"{prefix}gpu_types must map each GPU type's name to its GpuType.")
    if not isinstance(profile.images, Mapping):
        raise ConfigError(f"{prefix}images must be a table of engine = image path.")
    for engine, image in profile.images.items():
        if not isinstance(engine, str) or not isinstance(image, str):
            raise ConfigError(f"{prefix}images must be a table of engine = image path, not {dict(profile.images)!r}.")
        keyed(partial(check_text, f"the image for {engine!r}", image))
        keyed(partial(check_text, "an engine name under images", engine))


def _kind(value: Any) -> str:
    """What a TOML value is, for an error message."""
    if isinstance(value, list):
        return "a list (written [[...]] or [...])"
    return f"{type(value).__name__} {value!r}"[:80]


_EBI = Profile(
    name="ebi",
    host="ihpc.ebi.ac.uk",
    time="4:00:00",
    cpus=16,
    mem="32G",
    gpu_types={
        "a100": GpuType("a100", max_count=4, memory_gb=80),
        "h200": GpuType("h200", max_count=8, memory_gb=141),
    },
    default_gpu_type="a100",
    model_root="/hps/nobackup/saezrodriguez/hf_models",
    runtime="singularity",
    binds=("/hps",),
    images={
        "vllm": "/hps/nobackup/saezrodriguez/singularity_images/vllm-openai_latest.sif",
        "sglang": "/hps/nobackup/saezrodriguez/singularity_images/sglang_latest.sif",
    },
    default_engine="vllm",
)

PRESETS: Mapping[str, Profile] = {"ebi": _EBI}


def config_path() -> Path:
    """The config file in use: ``$HPCLLM_CONFIG``, else the platform's user config dir."""
    if os.environ.get("HPCLLM_CONFIG"):
        return Path(os.environ["HPCLLM_CONFIG"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("jupyter-hpcllm")) / "config.toml"


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        if os.environ.get("HPCLLM_CONFIG"):
            raise ConfigError(
                f"HPCLLM_CONFIG points to {path}, which does not exist.",
                "Create it with `hpcllm config init`, or unset HPCLLM_CONFIG.",
            )
        return {}
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"Cannot read the config file {path}: {error}.", "Fix the file and retry.") from None


def _profiles_table(path: Path) -> tuple[dict[str, Any], str]:
    """The config file's [profiles] table, and the default profile's name."""
    data = _read_config(path)
    default = data.get("default_profile")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"default_profile in {path} must be a profile name in quotes, not {default!r}.",
                          'Write it as default_profile = "NAME".')
    table = data.get("profiles", {})
    if not isinstance(table, dict):
        raise ConfigError(f"profiles in {path} must be a table of [profiles.NAME] sections, not {_kind(table)}.",
                          "Write each profile as a [profiles.NAME] section (`hpcllm config init` writes a "
                          "starter file).")
    return table, os.environ.get("HPCLLM_PROFILE") or default or "ebi"


def profile_names(path: Path | None = None) -> tuple[list[str], str]:
    """(every profile a face can offer: the config file's and the built-in presets, the default one)."""
    table, default = _profiles_table(path or config_path())
    return sorted(set(PRESETS) | set(table)), default


def load_profile(name: str | None = None, path: Path | None = None) -> Profile:
    """Resolve a profile by name (None: ``$HPCLLM_PROFILE``, the file's ``default_profile``, else ebi)."""
    path = path or config_path()
    table, default = _profiles_table(path)
    name = name or default
    known = sorted(set(PRESETS) | set(table))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"Unknown profile {name!r}; known profiles: {', '.join(known)}.",
            f"{suggestion}Define it under [profiles.{name}] in {path} (`hpcllm config init` writes a "
            "starter file)." if name.isprintable() else "Profile names are one line of printable text.",
        )
    section = table.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"profiles.{name} in {path} must be a table of keys, not {_kind(section)}.",
                          f"Write it as a [profiles.{name}] section with one key = value per line.")
    overrides = dict(section)
    base_name = overrides.pop("preset", name if name in PRESETS else None)
    if base_name is not None and not isinstance(base_name, str):
        raise ConfigError(f"Profile {name!r}: preset must be the name of a built-in preset in quotes, not "
                          f"{base_name!r}.", f"Built-in presets: {', '.join(PRESETS)}.")
    if base_name is not None and base_name not in PRESETS:
        raise ConfigError(
            f"Profile {name!r} names preset {base_name!r}, which does not exist.",
            f"Built-in presets: {', '.join(PRESETS)}.",
        )
    base = PRESETS[base_name] if base_name else Profile(name=name)
    return _apply(replace(base, name=name), overrides, path)


_FIELD_TYPES = {f.name: f.type for f in fields(Profile)}


def _apply(profile: Profile, overrides: dict[str, Any], path: Path) -> Profile:
    """Overlay the TOML keys on a profile, checking every key and type."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _FIELD_TYPES or key == "name":
            close = difflib.get_close_matches(key, list(_FIELD_TYPES), n=1)
            raise ConfigError(
                f"Unknown key {key!r} in profile {profile.name!r} of {path}.",
                f"Did you mean {close[0]!r}?" if close else "See `hpcllm config init` for the keys.",
            )
        changes[key] = _coerce(profile.name, key, value)
    return replace(profile, **changes)  # checked whole by Profile.__post_init__


def _coerce(profile: str, key: str, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"Profile {profile!r}: {key} must be {expected}, not {value!r}.")

    if key == "gpu_types":
        if not isinstance(value, dict):
            raise bad("a table of GPU types")
        return {gpu_name: _gpu_type(profile, gpu_name, spec) for gpu_name, spec in value.items()}
    if key == "images":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad("a table of engine = image path")
        return dict(value)
    if key in ("extra_sbatch", "runtime_args", "binds"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if key in _NUMBERS and _NUMBERS[key][2]:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if key in _NUMBERS:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number of " + ("minutes" if "minutes" in _NUMBERS[key][3] else "seconds"))
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    if value == "" and "None" in str(_FIELD_TYPES[key]):
        return None  # `partition = ""` unsets what a preset set
    return value


_GPU_KEYS = ("max_count", "memory_gb", "min_count")


def _gpu_type(profile: str, name: str, spec: Any) -> GpuType:
    """One [profiles.X.gpu_types.NAME] table: whole counts, a number of GB, nothing else."""
    example = "a table with max_count and memory_gb, e.g. { max_count = 4, memory_gb = 80 }"
    where = f"Profile {profile!r}: gpu_types.{name}"
    if not isinstance(spec, dict) or "max_count" not in spec or "memory_gb" not in spec:
        raise ConfigError(f"{where} must be {example}, not {spec!r}.")
    unknown = [key for key in spec if key not in _GPU_KEYS]
    if unknown:
        raise ConfigError(f"{where} has the unknown key {unknown[0]!r}.", f"Its keys are {', '.join(_GPU_KEYS)}.")
    counts = {key: spec.get(key, 1) for key in ("max_count", "min_count")}
    for key, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool):
            raise ConfigError(f"{where}: {key} must be a whole number of GPUs, not {count!r}.")
    memory = spec["memory_gb"]
    if not isinstance(memory, (int, float)) or isinstance(memory, bool):
        raise ConfigError(f"{where}: memory_gb must be a number of GB, not {memory!r}.")
    try:
        return GpuType(name, max_count=counts["max_count"], memory_gb=float(memory), min_count=counts["min_count"])
    except ConfigError as error:
        raise ConfigError(f"Profile {profile!r}: {error.message}", error.hint) from None


def render_profile(profile: Profile) -> str:
    """The resolved profile as TOML, for `hpcllm config show`."""
    lines = [f"[profiles.{profile.name}]"]
    tables: list[str] = []
    for f in fields(Profile):
        value = getattr(profile, f.name)
        if f.name == "name" or value is None:
            continue
        if f.name == "gpu_types":
            for gpu in value.values():
                tables.append(
                    f"[profiles.{profile.name}.gpu_types.{gpu.name}]\n"
                    f"min_count = {gpu.min_count}\nmax_count = {gpu.max_count}\nmemory_gb = {gpu.memory_gb:g}"
                )
        elif f.name == "images":
            body = "\n".join(f"{k} = {_toml(v)}" for k, v in value.items())
            tables.append(f"[profiles.{profile.name}.images]\n{body}")
        else:
            lines.append(f"{f.name} = {_toml(value)}")
    return "\n\n".join(["\n".join(lines), *tables]) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    import json

    return json.dumps(str(value))


def starter_config() -> str:
    """A commented config file for `hpcllm config init`."""
    return '''\
# jupyter-hpcllm configuration. One [profiles.NAME] table per cluster.
# `hpcllm config show [--profile NAME]` prints a profile as resolved.

default_profile = "ebi"

# The built-in "ebi" preset reproduces EBI's runbook; set only what differs for you.
[profiles.ebi]
# host = "ihpc.ebi.ac.uk"          # a Host alias from ~/.ssh/config works too, with all its settings
# user = "yourname"                 # default: from ~/.ssh/config, else your local user name
# identity_file = "~/.ssh/id_ed25519"

# A cluster of your own:
# [profiles.mycluster]
# host = "login.example.org"        # "local" when Jupyter already runs on the cluster (no SSH)
# port = 22
# proxy_jump = "bastion.example.org"  # a chain "a,b" (first hop first) or "none"; ~/.ssh/config's ProxyJump applies too
# keepalive = 15                    # seconds; a connection silent for two keepalives is replaced
# ssh_backend = "paramiko"          # or "openssh": the system ssh with a ControlMaster (FIDO keys, Kerberos, MFA)
# known_hosts = "~/.ssh/known_hosts"
# partition = "gpu"
# account = "mylab"
# qos = "normal"
# time = "4:00:00"                  # Slurm time: MM, HH:MM:SS or D-HH:MM:SS
# cpus = 16
# mem = "32G"
# extra_sbatch = ["--constraint=ib"]
# prologue = "module load cuda/12.4"
# model_root = "/shared/models"
# runtime = "apptainer"             # singularity, apptainer or none
# runtime_path = "/usr/bin/apptainer"
# runtime_args = ["--nv"]
# binds = ["/shared"]
# default_engine = "vllm"           # or "sglang"
# default_gpu_type = "a100"
# idle_timeout = 60                 # minutes with no request and no client before a job ends itself; 0: never
# walltime_warning = 10             # minutes: warn when less than this remains of a job's time limit
#
# [profiles.mycluster.images]
# vllm = "/shared/images/vllm-openai_latest.sif"
# sglang = "/shared/images/sglang_latest.sif"
#
# [profiles.mycluster.gpu_types.a100]
# max_count = 4
# memory_gb = 80
'''
