"""Ask an engine image which parser names it really registers (its --help lists them).

One command on the login node per image, cached on disk per image path and modification time, so a
parser name this image's version does not know is caught before anything is submitted.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ..config.profiles import Profile
from ..edge.slurm import image_help_command, image_mtime_command
from ..edge.transport import Transport, run_idempotent
from ..errors import ConfigError
from ..planning.engines import help_argvs, parse_parser_choices
from ..planning.plan import LaunchPlan

__all__ = ["check_plan_parsers", "image_parsers"]


def _cache_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-hpcllm")) / "image-parsers.json"


def _read_cache() -> dict[str, dict[str, list[str]]]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def image_parsers(profile: Profile, transport: Transport, engine: str, *,
                  refresh: bool = False) -> dict[str, tuple[str, ...]]:
    """{"tool": names, "reasoning": names} that the profile's image for `engine` registers."""
    image = profile.image(engine)
    result = run_idempotent(transport, image_mtime_command(image), check=False)
    if result.exit_status != 0:
        raise ConfigError(f"The {engine} image {image} of profile {profile.name!r} does not exist on the cluster.",
                          f"Set images.{engine} in the profile (`hpcllm config show` prints it).")
    key = f"{profile.host}|{image}|{result.stdout.strip()}"
    cache = _read_cache()
    if not refresh and key in cache:
        return {kind: tuple(names) for kind, names in cache[key].items()}
    # Engine images take seconds to import their engine: allow for it.
    command = image_help_command(profile.runtime, profile.runtime_command, image, help_argvs(engine))
    help_text = run_idempotent(transport, command, timeout=max(profile.command_timeout, 120)).stdout
    found = parse_parser_choices(help_text)
    if not any(found.values()):
        tail = help_text.strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(f"The {engine} image {image} did not list its parsers: {tail[0]}",
                          "Check the image path in the profile; launch without --check-parsers meanwhile.")
    cache[key] = {kind: list(names) for kind, names in found.items()}
    target = _cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(cache))
    temporary.replace(target)
    return found


def check_plan_parsers(plan: LaunchPlan, transport: Transport) -> None:
    """Refuse a plan whose parser names the image does not register, naming the nearest ones it does."""
    known = image_parsers(plan.profile, transport, plan.engine)
    for kind, name, flag in (("tool", plan.tool_parser, "--tool-call-parser"),
                             ("reasoning", plan.reasoning_parser, "--reasoning-parser")):
        if name and known[kind] and name not in known[kind]:
            close = difflib.get_close_matches(name, known[kind], n=3, cutoff=0.5)
            raise ConfigError(
                f"The {plan.engine} image {plan.profile.image(plan.engine)} does not know the {kind} parser "
                f"{name!r}.",
                (f"Nearest names it knows: {', '.join(close)}. " if close else "")
                + f"Pass {flag} NAME with one of: {', '.join(known[kind])}.",
            )
