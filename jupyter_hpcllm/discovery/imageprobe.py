"""Ask an engine image what it holds (``planning.images``): one remote command per image, cached on disk
per image path and modification time, so a new image is asked again and an unchanged one never.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..config.profiles import Profile
from ..edge.slurm import TIMED_OUT, image_mtime_command, image_python_command, probe_exit
from ..edge.transport import Transport, run_idempotent
from ..errors import CommandTimeout, ConfigError
from ..planning.images import PROBE, ImageInfo, parse_probe

__all__ = ["image_info", "profile_images"]

_lock = threading.Lock()
PROBE_TIMEOUT = 180.0  # seconds: SGLang's model registry imports every model module


def _cache_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-hpcllm")) / "image-probes.json"


def _read_cache() -> dict[str, object]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, info: ImageInfo) -> None:
    with _lock:
        cache = _read_cache()
        cache[key] = info.as_json()
        target = _cache_file()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(f".{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps(cache))
            temporary.replace(target)  # atomic: a reader never sees half a file
        except OSError:
            pass  # a read-only home only costs the next plan a probe


def image_info(profile: Profile, transport: Transport, engine: str, *, refresh: bool = False) -> ImageInfo:
    """What the profile's image for `engine` says of itself (cached per image path and mtime). An image
    that does not exist is refused; one that cannot answer gives an ImageInfo whose `problems` say why."""
    image = profile.image(engine)
    examples = profile.examples_dir(engine)
    if profile.runtime == "none":
        # No image file to date the engine by: its answers are kept for a day.
        key_part, path = time.strftime("%Y-%m-%d"), "(no container)"
    else:
        result = run_idempotent(transport, image_mtime_command(image), check=False)
        if result.exit_status != 0:
            raise ConfigError(f"The {engine} image {image} of profile {profile.name!r} does not exist on the cluster.",
                              f"Set images.{engine} in the profile (`hpcllm config show` prints it).")
        key_part, path = result.stdout.strip(), image
    key = f"{profile.host}|{engine}|{path}|{examples}|{profile.prologue.strip()}|{key_part}"
    cached = None if refresh else ImageInfo.from_json(_read_cache().get(key), path)
    if cached is not None:
        return cached
    timeout = max(profile.command_timeout, PROBE_TIMEOUT)
    command = image_python_command(profile.runtime, profile.runtime_command, image, PROBE, (engine, examples),
                                   prologue=profile.prologue, timeout=timeout - 10)
    try:
        output = run_idempotent(transport, command, timeout=timeout).stdout
    except CommandTimeout:
        return _slow(key, engine, path, timeout)
    if probe_exit(output) in TIMED_OUT:  # the login node ended it (`timeout`): a slow start, not an answer
        return _slow(key, engine, path, timeout)
    info = parse_probe(output, engine, path)
    # Kept per image and mtime, a failure too (an image without python stays one): `hpcllm parsers
    # --refresh` asks again.
    _write_cache(key, info)
    return info


def _slow(key: str, engine: str, path: str, timeout: float) -> ImageInfo:
    """What to go by when the image did not answer in time (not kept: the next plan asks again). The
    answer of an earlier probe of the same image path, if any: a plan that changes with the login node's
    load would not find its twin job, and queue a second one. Else nothing (the family table decides)."""
    said = f"the image did not answer within {timeout:.0f} s"
    prefix = key.rsplit("|", 1)[0] + "|"
    earlier = [info for stored_key, value in _read_cache().items() if stored_key.startswith(prefix)
               and (info := ImageInfo.from_json(value, path)) is not None
               and (info.tool_parsers is not None or info.architectures is not None)]
    if earlier:
        last = earlier[-1]  # the cache keeps insertion order: the newest last
        return replace(last, problems=(*last.problems, f"{said}: its answer to an earlier probe is used"))
    return ImageInfo(engine, path, problems=(said,))


def profile_images(profile: Profile, transport: Transport, engines: tuple[str, ...] | None = None,
                   ) -> dict[str, ImageInfo]:
    """Every image of the profile (or of `engines`) that exists, asked; a missing one is left out when
    another engine may be chosen, and refused when it is the only one asked for."""
    wanted = engines or profile.engines
    found: dict[str, ImageInfo] = {}
    missing: ConfigError | None = None
    for engine in wanted:
        try:
            found[engine] = image_info(profile, transport, engine)
        except ConfigError as error:
            missing = missing or error
    if not found and missing is not None:
        raise missing
    return found
