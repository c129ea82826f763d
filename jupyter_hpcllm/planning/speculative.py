"""Speculative decoding: a small draft (or EAGLE head, or the model's own MTP layers) proposes tokens the
model checks in one pass. Which draft, which method, each engine's flags and the memory it takes.

Where the draft comes from, best first: the one the user names; the one the model card's command names
(found under the model root by its Hub name); one beside the model under the model root, named after it
(``Qwen3-8B_eagle3``, ``EAGLE3-Qwen3-8B``, ``Qwen3-8B-draft``). Finding them is I/O
(``discovery.drafts``); everything here is pure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ConfigError
from .engines import Joined, option_name, path_word
from .facts import ModelFacts
from .images import ImageInfo
from .modelcard import CardSpeculative

__all__ = ["SPECULATIVE_FLAGS", "Speculation", "draft_candidates", "plan_speculation"]

# The engines' own speculative options: given after `--` together with --speculative, they would clash.
SPECULATIVE_FLAGS = ("--speculative-config", "--speculative-model", "--num-speculative-tokens",
                     "--speculative-algorithm", "--speculative-draft-model-path", "--speculative-draft-model",
                     "--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens")
METHODS = ("eagle3", "eagle", "draft_model", "mtp")
_SGLANG_ALGORITHM = {"eagle3": "EAGLE3", "eagle": "EAGLE", "mtp": "EAGLE", "draft_model": "STANDALONE"}
# Defaults where the card gives none: what the engines' docs use.
_VLLM_TOKENS = {"eagle3": 3, "eagle": 3, "draft_model": 5, "mtp": 1}
_SGLANG_STEPS = (("num_steps", 3), ("eagle_topk", 1), ("num_draft_tokens", 4))
_DRAFT_WORDS = ("eagle", "draft", "spec", "mtp")


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def draft_candidates(target: str, names: list[str]) -> list[str]:
    """Names under the model root that look like a draft for `target`: named after it, with a draft word
    in the name; EAGLE-3 heads first, then EAGLE, then other drafts."""
    wanted = _normal(target)
    found = [name for name in names
             if wanted and wanted in _normal(name) and _normal(name) != wanted
             and any(word in name.lower() for word in _DRAFT_WORDS)]
    return sorted(found, key=lambda name: ("eagle3" not in name.lower(), "eagle" not in name.lower(), len(name)))


@dataclass(frozen=True)
class Speculation:
    method: str  # one of METHODS
    draft: ModelFacts | None  # None: the model's own MTP layers
    source: str  # where the draft came from
    settings: tuple[tuple[str, int], ...] = ()  # the card's numbers (num_speculative_tokens, num_steps, ...)

    @property
    def extra_gb(self) -> float:
        """The GPU memory the draft takes beside the model: its weights, and a little for its cache."""
        return self.draft.weight_gb * 1.1 if self.draft else 0.0

    def describe(self) -> str:
        what = f"{self.method} with {self.draft.name} ({self.draft.path})" if self.draft else \
            f"{self.method} with the model's own {self.method.upper()} layers"
        extra = f"≈ {self.extra_gb:.1f} GB more GPU memory per replica" if self.draft else "no extra weights"
        return f"{what}, from {self.source}; {extra}"

    def args(self, engine: str) -> tuple[str, ...]:
        settings = dict(self.settings)
        if engine == "vllm":
            tokens = settings.get("num_speculative_tokens", _VLLM_TOKENS[self.method])
            head = '{"method":' + json.dumps(self.method)
            tail = ',"num_speculative_tokens":' + str(int(tokens)) + "}"
            if self.draft is None:
                return ("--speculative-config", head + tail)
            model = path_word(self.draft.path)
            # The draft's path inside JSON: one argv word whose home directory the node's shell fills in.
            return ("--speculative-config", Joined(head + ',"model":"', model, '"' + tail))
        argv = ["--speculative-algorithm", _SGLANG_ALGORITHM[self.method]]
        if self.draft is not None:
            argv += ["--speculative-draft-model-path", path_word(self.draft.path)]
        for name, default in _SGLANG_STEPS:
            argv += [f"--speculative-{name.replace('_', '-')}", str(int(settings.get(name, default)))]
        return tuple(argv)


def method_of(draft: ModelFacts, hinted: str | None) -> str:
    """EAGLE-3 or EAGLE heads say so in their architectures or name; anything else is a plain draft."""
    text = " ".join((*draft.architectures, draft.name)).lower()
    if "eagle3" in text:
        return "eagle3"
    if "eagle" in text:
        return "eagle"
    return hinted if hinted in ("eagle3", "eagle") and not draft.architectures else "draft_model"


def plan_speculation(engine: str, target: ModelFacts, draft: ModelFacts | None, *, source: str,
                     hint: CardSpeculative | None, image: ImageInfo | None,
                     engine_args: tuple[str, ...]) -> Speculation:
    """Check a draft against the model and the engine; refuse what cannot work, saying why."""
    clash = [arg.split("=", 1)[0] for arg in engine_args if option_name(arg) in SPECULATIVE_FLAGS]
    if clash:
        raise ConfigError(f"--speculative sets up speculative decoding, and the engine arguments set it too "
                          f"({', '.join(clash)}).", "Use one or the other: drop --speculative, or those arguments.")
    settings = hint.settings if hint else ()
    if draft is None:
        if hint is None or hint.method != "mtp":
            raise ConfigError(f"No draft model for {target.name}.", "Name one: --speculative DRAFT.")
        if not target.mtp_layers:
            raise ConfigError(f"The model card of {target.name} uses its built-in MTP layers for speculative "
                              "decoding, but its config.json has no num_nextn_predict_layers.",
                              "Name a draft model: --speculative DRAFT.")
        return Speculation("mtp", None, source, settings)
    method = method_of(draft, hint.method if hint else None)
    if draft.problems:
        raise ConfigError(f"Cannot read the draft {draft.name} ({'; '.join(draft.problems)}).",
                          "Fix its files or name another draft: --speculative DRAFT.")
    if method == "draft_model" and target.vocab_size and draft.vocab_size and target.vocab_size != draft.vocab_size:
        raise ConfigError(
            f"The draft {draft.name} has a vocabulary of {draft.vocab_size:,} tokens and {target.name} one of "
            f"{target.vocab_size:,}: a draft model must share the model's tokenizer.",
            "Use a smaller model of the same family, or the model's EAGLE head.")
    architecture = draft.architectures[0] if draft.architectures else ""
    if image is not None and architecture and image.supports(architecture) is False:
        raise ConfigError(f"The {image.label} cannot load the draft {draft.name} ({architecture}).",
                          "Use another draft, or another engine (--engine).")
    if method == "draft_model" and image is not None and image.version:
        since = _PLAIN_DRAFT_SINCE[engine]
        if _older(image.version, since):
            other = "sglang" if engine == "vllm" else "vllm"
            raise ConfigError(f"{image.label} has no speculative decoding with a plain draft model (it came with "
                              f"{'.'.join(map(str, since))}).", f"Use an EAGLE head, or --engine {other}.")
    if any(char in draft.path for char in '"\\') or not draft.path.isprintable():
        # It goes into a JSON value (vLLM's --speculative-config) as it is.
        raise ConfigError(f"The draft's path {draft.path!r} has characters a JSON value cannot hold as they are.",
                          "Move or link the draft to a directory whose path has no quotes or backslashes.")
    return Speculation(method, draft, source, settings)


# Plain draft models: SGLang's STANDALONE came with 0.5; vLLM dropped them in its V1 engine and brought them
# back in 0.14.
_PLAIN_DRAFT_SINCE = {"vllm": (0, 14, 0), "sglang": (0, 5, 0)}


def _older(version: str, than: tuple[int, ...]) -> bool:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    return bool(numbers) and numbers < than
