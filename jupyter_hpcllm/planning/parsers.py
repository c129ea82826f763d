"""Which tool-call and reasoning parsers, and which flags the model needs: three sources, best first.

1. the model card (its serving commands, see ``planning.modelcard``): written with the model;
2. the engine image (its registries, see ``planning.images``): a name it does not register would stop
   the engine at start-up, and SGLang's ``auto`` reads the format from the chat template;
3. the family table (``planning.families``): what we know of the family.

The user's choice always wins. Every choice keeps its source and what the other sources said, so the
faces can show disagreements.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ..errors import InvalidOption
from .engines import passes, path_word
from .families import Family
from .images import ImageInfo
from .modelcard import CardAdvice

__all__ = ["ParserChoice", "ParserPlan", "choose_parsers"]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
KINDS = {"tool": "tool-call parser", "reasoning": "reasoning parser"}
AUTO = "auto"


@dataclass(frozen=True)
class ParserChoice:
    kind: str  # "tool" or "reasoning"
    name: str | None  # None: no parser
    source: str  # "your choice", "model card", "sglang image (...)", "qwen3 in the family table", ...
    others: tuple[str, ...] = ()  # what the other sources said, where they disagree: "model card: hermes"

    def describe(self) -> str:
        text = f"{KINDS[self.kind]} {self.name or '—'} ({self.source})"
        return text + (f"; {', '.join(self.others)}" if self.others else "")


@dataclass(frozen=True)
class ParserPlan:
    tool: ParserChoice
    reasoning: ParserChoice
    extra_args: tuple[str, ...] = ()  # flags the model needs, before the user's engine arguments
    flag_sources: tuple[str, ...] = ()  # "--trust-remote-code (model card)"
    notes: tuple[str, ...] = ()


def _choose(kind: str, user: str | None, card: str | None, family: Family | None, table: str | None,
            image: ImageInfo | None, engine: str, notes: list[str], plugin: bool = False) -> ParserChoice:
    table_source = f"{family.name} in the family table" if family else ""
    said = [(source, name) for source, name, present in (("model card", card, card is not None),
                                                          (table_source, table, family is not None)) if present]
    registered = image.registered(kind) if image else None

    def others(chosen: str | None) -> tuple[str, ...]:
        return tuple(f"{source}: {name or 'none'}" for source, name in said if name != chosen)

    if user is not None:
        field = "tool_call_parser" if kind == "tool" else "reasoning_parser"
        if user == AUTO and engine != "sglang":
            raise InvalidOption(field, f"`auto` is SGLang's: {engine} has no {KINDS[kind]} that detects the format.",
                                "Name the parser, or leave it to the plan (or use --engine sglang).")
        # An image that answered without template detection cannot take `auto`; one that could not answer may.
        if user == AUTO and image is not None and image.registered(kind) is not None and not image.auto_parsers:
            raise InvalidOption(field, f"The {image.label} cannot detect the {KINDS[kind]} from the chat template "
                                "(`auto` came with newer SGLang).", "Name the parser, or leave it to the plan.")
        if user and user != AUTO and registered is not None and user not in registered and not plugin:
            close = difflib.get_close_matches(user, registered, n=3, cutoff=0.5)
            flag = "--tool-call-parser" if kind == "tool" else "--reasoning-parser"
            raise InvalidOption(field, f"The {image.label if image else 'image'} does not register the {KINDS[kind]} "
                                f"{user!r}: the engine would stop at start-up.",
                                (f"Nearest names it knows: {', '.join(close)}. " if close else "")
                                + f"Pass {flag} NAME with one of: {', '.join(registered)}"
                                + (" (or a plugin's, with -- --tool-parser-plugin FILE)." if kind == "tool" else "."))
        return ParserChoice(kind, user or None, "your choice", others(user or None))
    for source, name in said:
        if name is None or registered is None or name in registered:
            return ParserChoice(kind, name, source, others(name))
        notes.append(f"The {KINDS[kind]} {name!r} ({source}) is not used: the {image.label if image else 'image'} "
                     "does not register it.")
    if engine == "sglang" and image is not None and image.auto_parsers:
        why = "no source names one it registers" if said else "the model's family is not known"
        return ParserChoice(kind, AUTO, f"{image.label}: detects it from the chat template, as {why}",
                            others(AUTO))
    return ParserChoice(kind, None, "no source names one" if not said else "none registered", others(None))


def choose_parsers(engine: str, family: Family | None, card: CardAdvice | None, image: ImageInfo | None, *,
                   tool_call_parser: str | None, reasoning_parser: str | None, engine_args: tuple[str, ...],
                   examples_dir: str, model_path: str) -> ParserPlan:
    """The parsers and required flags for one engine, each with its source."""
    notes: list[str] = []
    defaults = family.parsers(engine) if family else None
    card_tool = card.tool if card and card.tool and _NAME.fullmatch(card.tool) else None
    card_reasoning = card.reasoning if card and card.reasoning and _NAME.fullmatch(card.reasoning) else None
    # A plugin registers tool parsers the image's registry does not list: trust the user's name then.
    plugin = passes(engine_args, "--tool-parser-plugin")
    tool = _choose("tool", tool_call_parser, card_tool, family, defaults.tool if defaults else None, image, engine,
                   notes, plugin)
    reasoning = _choose("reasoning", reasoning_parser, card_reasoning, family,
                        defaults.reasoning if defaults else None, image, engine, notes)
    extra: list[str] = []
    sources: list[str] = []
    for flag, value in _card_flags(card.flags if card else ()):
        if passes(engine_args, flag) or flag in extra:
            continue
        if flag == "--chat-template" and value is not None:
            path = _template_path(value, examples_dir, model_path)
            if path is None:
                notes.append(f"The model card's --chat-template {value} is not a template of the image or the model "
                             "(a path on its author's machine?): not used.")
                continue
            value = path
        extra += [flag] + ([value] if value is not None else [])
        sources.append(f"{flag}{' ' + value if value else ''} (model card)")
    for flag in defaults.extra_args if defaults else ():
        if not passes(engine_args, flag) and flag not in extra:
            extra.append(flag)
            sources.append(f"{flag} (family table)")
    template = defaults.tool_chat_template if defaults else None
    if (template and tool.name and tool.name == defaults.tool and "--chat-template" not in extra  # type: ignore[union-attr]
            and not passes(engine_args, "--chat-template")):
        if image is not None and image.templates is not None and template not in image.templates:
            notes.append(f"The {image.label} has no {template} in {examples_dir}: tool calls may not parse "
                         "(pass -- --chat-template PATH with a tool chat template).")
        else:
            path = f"{examples_dir.rstrip('/')}/{template}"
            extra += ["--chat-template", path_word(path)]
            sources.append(f"--chat-template {path} (family table: the image's tool chat template)")
    return ParserPlan(tool, reasoning, tuple(extra), tuple(sources), tuple(notes))


# What a model card may add to the engine's command, and the values each flag may take: a card is text from
# the model's repository, so nothing else of it reaches the command (no --load-format dummy from a benchmark).
_CARD_VALUES: dict[str, tuple[str, ...] | None] = {
    "--trust-remote-code": (),
    "--tokenizer-mode": ("auto", "slow", "mistral", "custom", "hf"),
    "--config-format": ("auto", "hf", "mistral"),
    "--load-format": ("auto", "safetensors", "pt", "mistral", "gguf", "fastsafetensors"),
    "--chat-template": None,  # checked by _template_path
}
_TEMPLATE = re.compile(r"(?:\./)?[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*")


def _card_flags(flags: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """The card's (flag, value) pairs that may reach the command."""
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(flags):
        flag = flags[index]
        allowed = _CARD_VALUES.get(flag, ())
        takes_value = allowed is None or bool(allowed)
        value = flags[index + 1] if takes_value and index + 1 < len(flags) else None
        index += 2 if takes_value else 1
        if flag not in _CARD_VALUES or (takes_value and (value is None or value.startswith("-"))):
            continue
        if allowed and value not in allowed:
            continue
        pairs.append((flag, value))
    return pairs


def _template_path(value: str, examples_dir: str, model_path: str) -> str | None:
    """A card's --chat-template as a path in the image: `examples/...` is the engine's examples directory
    (vLLM's examples/, SGLang's examples/chat_template/), a relative file the model's directory; a name
    without a suffix is one of the engine's built-in templates. None: nothing the job can see (an absolute
    path is one on the card author's machine)."""
    if not _TEMPLATE.fullmatch(value) or ".." in value.split("/"):
        return None
    relative = value.removeprefix("./")
    for prefix in ("examples/chat_template/", "examples/"):
        if relative.startswith(prefix):
            return path_word(f"{examples_dir.rstrip('/')}/{relative[len(prefix):]}")
    if relative.endswith((".jinja", ".json")):
        return path_word(f"{model_path.rstrip('/')}/{relative}")
    return relative if "/" not in relative else None
