"""What a model card recommends: the serving command lines in its README.md, read for their parsers,
the flags the model needs and its speculative-decoding setup. The first of the three sources of parser
choices (see ``planning.parsers``): a card is written with the model, the family table after it.

Cards write commands in Markdown: fenced blocks, inline code, lines continued with a backslash, shell
prompts, environment variables and `pip install` lines before them, comments after them. Only options
a card spells out count: a command without ``--reasoning-parser`` says nothing about reasoning (vLLM,
for one, fills gpt-oss's parser in by itself).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

__all__ = ["CardAdvice", "CardSpeculative", "card_advice", "card_commands"]

# Where an engine's command starts in a line, and which engine it is.
_STARTS = (
    (re.compile(r"(?:^|[\s`(])vllm\s+serve(?=\s|$)"), "vllm"),
    (re.compile(r"(?:^|[\s`(])vllm\.entrypoints\.openai\.api_server(?=\s|$)"), "vllm"),
    (re.compile(r"(?:^|[\s`(])sglang\.launch_server(?=\s|$)"), "sglang"),
    (re.compile(r"(?:^|[\s`(])sglang\s+serve(?=\s|$)"), "sglang"),
)
# Flags a model needs whatever the allocation: taken from the card (with their value, if they take one).
REQUIRED_FLAGS = {"--trust-remote-code": False, "--chat-template": True, "--tokenizer-mode": True,
                  "--config-format": True, "--load-format": True}
_TOOL = ("--tool-call-parser",)
_REASONING = ("--reasoning-parser",)
_SPECULATIVE = ("--speculative-config", "--speculative-algorithm", "--speculative-draft-model-path",
                "--speculative-draft-model", "--speculative-num-steps", "--speculative-eagle-topk",
                "--speculative-num-draft-tokens", "--speculative-model", "--num-speculative-tokens")
_TAKES_NO_VALUE = {"--trust-remote-code", "--enable-auto-tool-choice", "--enable-expert-parallel",
                   "--enable-metrics", "--enable-dp-attention", "--disable-log-requests", "--headless"}


@dataclass(frozen=True)
class CardSpeculative:
    """The speculative decoding a card's command sets up: the method (eagle, eagle3, draft_model, mtp,
    ngram), the draft it names (a Hub id or a path; None for built-in MTP heads) and the engine's own
    numbers (steps, top-k, draft tokens)."""

    method: str
    draft: str | None = None
    settings: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class CardCommand:
    engine: str
    options: tuple[tuple[str, str | None], ...]  # (option, value) in the order written; names normalised
    text: str  # the command as the card writes it, on one line


@dataclass(frozen=True)
class CardAdvice:
    """What a card says for one engine (None: the card does not say)."""

    engine: str
    tool: str | None = None
    reasoning: str | None = None
    flags: tuple[str, ...] = ()  # e.g. ("--trust-remote-code", "--chat-template", "examples/x.jinja")
    speculative: CardSpeculative | None = None
    command: str = ""  # the first command it comes from

    @property
    def says_anything(self) -> bool:
        return bool(self.tool or self.reasoning or self.flags or self.speculative)


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, fence markers dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            if pending:
                lines.append(pending)
            pending = ""
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        lines.append(pending + line.strip())
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _words(command: str) -> list[str]:
    for cut in (" && ", " || ", " | ", "; ", " # ", " &"):
        command = command.split(cut, 1)[0]
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote: take the words as written
        return command.split()


def _options(words: list[str]) -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("--") or len(word) < 3:
            continue
        name, equals, value = word.partition("=")
        name = "--" + name[2:].replace("_", "-")
        if equals:
            found.append((name, value))
        elif name not in _TAKES_NO_VALUE and index < len(words) and not words[index].startswith("--"):
            found.append((name, words[index]))
            index += 1
        else:
            found.append((name, None))
    return tuple(found)


def card_commands(text: str) -> list[CardCommand]:
    """Every vLLM or SGLang serving command a card's text holds, in order."""
    commands = []
    for line in _logical_lines(text):
        spans = re.findall(r"`([^`]+)`", line) if line.count("`") >= 2 else [line]
        for span in spans:
            span = re.sub(r"^\s*(?:\$|>|#)\s+", "", span)
            for pattern, engine in _STARTS:
                match = pattern.search(span)
                if match:
                    rest = span[match.end():]
                    commands.append(CardCommand(engine, _options(_words(rest)), span[match.start():].strip(" `(")))
                    break
    return commands


def _speculative(options: dict[str, str | None]) -> CardSpeculative | None:
    config = options.get("--speculative-config")
    if config:
        try:
            data = json.loads(config)
        except (ValueError, RecursionError):  # a card is anyone's text: deep nesting included
            data = None
        if isinstance(data, dict) and isinstance(data.get("method", "draft_model"), str):
            method = str(data.get("method") or "draft_model").lower()
            draft = data.get("model") if isinstance(data.get("model"), str) else None
            tokens = data.get("num_speculative_tokens")
            numbers: tuple[tuple[str, int], ...] = (("num_speculative_tokens", tokens),) if isinstance(
                tokens, int) and not isinstance(tokens, bool) and 0 < tokens <= MAX_SPECULATIVE_NUMBER else ()
            return CardSpeculative("mtp" if method in ("deepseek_mtp", "mtp") else method, draft, numbers)
    if options.get("--speculative-model"):  # vLLM before --speculative-config
        tokens = _number(options.get("--num-speculative-tokens"))
        draft = options["--speculative-model"]
        method = "eagle3" if draft and "eagle3" in draft.lower() else "eagle" if draft and "eagle" in draft.lower() \
            else "draft_model"
        return CardSpeculative(method, draft, (("num_speculative_tokens", tokens),) if tokens else ())
    algorithm = (options.get("--speculative-algorithm") or "").upper()
    if algorithm:
        draft = options.get("--speculative-draft-model-path") or options.get("--speculative-draft-model")
        settings = tuple((name.removeprefix("--speculative-").replace("-", "_"), number)
                         for name in ("--speculative-num-steps", "--speculative-eagle-topk",
                                      "--speculative-num-draft-tokens")
                         if (number := _number(options.get(name))))
        method = {"EAGLE": "eagle" if draft else "mtp", "NEXTN": "mtp", "EAGLE3": "eagle3",
                  "STANDALONE": "draft_model", "NGRAM": "ngram"}.get(algorithm, algorithm.lower())
        return CardSpeculative(method, draft, settings)
    return None


MAX_SPECULATIVE_NUMBER = 256  # steps, top-k and draft tokens: real setups use at most a few dozen


def _number(value: str | None) -> int | None:
    """A card's count, if it is one we would pass on (a typo of thousands of digits is not)."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 4:
        return None
    number = int(value)
    return number if 0 < number <= MAX_SPECULATIVE_NUMBER else None


def card_advice(text: str, engine: str) -> CardAdvice:
    """What the card's commands for `engine` say: the first explicit value of each, and every required
    flag any of them passes."""
    tool = reasoning = None
    flags: list[str] = []
    speculative = None
    first = ""
    for command in card_commands(text):
        if command.engine != engine:
            continue
        options = dict(command.options)
        said = False
        for name in _TOOL:
            if tool is None and options.get(name):
                tool, said = options[name], True
        for name in _REASONING:
            if reasoning is None and options.get(name):
                reasoning, said = options[name], True
        for name, takes_value in REQUIRED_FLAGS.items():
            if name in options and name not in flags:
                value = options[name]
                if takes_value and not value:
                    continue
                flags += [name, value] if takes_value and value else [name]
                said = True
        if speculative is None and any(name in options for name in _SPECULATIVE):
            speculative = _speculative(options)
            said = said or speculative is not None
        if said and not first:
            first = command.text
    return CardAdvice(engine, tool, reasoning, tuple(flags), speculative, first)

