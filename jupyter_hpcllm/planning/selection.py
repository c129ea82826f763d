"""`--engine auto`: an engine whose image loads the model's architecture, the profile's default first."""

from __future__ import annotations

from collections.abc import Mapping

from ..config.options import LaunchOptions
from ..config.profiles import Profile
from ..errors import ConfigError
from .engines import passes
from .facts import ModelFacts
from .images import ImageInfo

__all__ = ["AUTO", "choose_engine"]

AUTO = "auto"
# The engine loads any architecture through Transformers with this: its own registry does not decide.
_ANY_ARCHITECTURE = "--model-impl"


def choose_engine(profile: Profile, options: LaunchOptions, facts: ModelFacts | None,
                  images: Mapping[str, ImageInfo]) -> tuple[str, str]:
    """(engine, why). Auto is the default when the profile has both images; an engine the user names is
    refused only when its image says it cannot load the model."""
    engines = profile.engines
    if images:  # connected: an engine whose image is missing is no choice
        engines = tuple(engine for engine in engines if engine in images) or engines
    default = profile.default_engine if profile.default_engine in engines or not engines else engines[0]
    asked = options.engine or (AUTO if len(engines) > 1 else default)
    architecture = facts.architectures[0] if facts is not None and facts.architectures else ""
    flexible = passes(options.engine_args, _ANY_ARCHITECTURE)
    if asked != AUTO:
        image = images.get(asked)
        if architecture and not flexible and image is not None and image.supports(architecture) is False:
            others = [e for e in engines if e != asked and images.get(e) and images[e].supports(architecture)]
            untried = [e for e in profile.engines if e != asked and e not in images]
            suggestion = (f"Use --engine {others[0]} (its image loads it), " if others else
                          f"Try --engine {untried[0]} (or auto), " if untried else "Use ")
            transformers = " or -- --model-impl transformers (vLLM's Transformers backend)" if asked == "vllm" else ""
            raise ConfigError(
                f"The {image.label} cannot load {facts.name if facts else 'the model'}: its architecture "
                f"{architecture} is not among the {len(image.architectures or ())} it supports.",
                suggestion + f"a newer {asked} image (images.{asked} in the profile){transformers}.")
        return asked, "your choice" if options.engine else "the profile's engine"
    if not architecture or flexible:
        why = "the model's architecture is not known" if not architecture else "-- --model-impl loads any"
        return default, f"auto: the profile's default ({why})"
    order = [default, *(e for e in engines if e != default)]
    verdicts = {engine: images[engine].supports(architecture) if engine in images else None for engine in order}
    for engine in order:
        if verdicts[engine]:
            said = f"auto: the {images[engine].label} loads {architecture}"
            if engine != default:
                said += f", the {default} image{_version(images, default)} does not" if verdicts[default] is False \
                    else f"; the {default} image could not say"
            return engine, said
    if all(verdict is False for verdict in verdicts.values()):
        there = "; ".join(images[e].label for e in order)
        raise ConfigError(f"No engine image of profile {profile.name!r} loads {architecture} (the architecture of "
                          f"{facts.name if facts else 'the model'}): {there}.",
                          "Ask your cluster's admins for newer engine images (images.vllm / images.sglang in the "
                          "profile), or pass -- --model-impl transformers to try vLLM's Transformers backend.")
    # No image says yes: one that could not say is a better bet than one that said no.
    unknown = next(engine for engine in order if verdicts[engine] is None)
    refused = [f"the {e} image{_version(images, e)} does not load it" for e in order if verdicts[e] is False]
    return unknown, "auto: " + "; ".join([*refused, f"the {unknown} image could not say which architectures it loads"])


def _version(images: Mapping[str, ImageInfo], engine: str) -> str:
    version = images[engine].version if engine in images else ""
    return f" ({version})" if version else ""
