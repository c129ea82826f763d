"""Showing an answer while it streams: Markdown updated in place in a notebook, text in a terminal.

In a notebook each display is a raw MIME bundle: the Markdown, and the answer's own text as text/plain
(what nbconvert to text, a console or a copy shows; IPython's Markdown object would give its repr)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Renderer"]


@dataclass
class Answer:
    content: str = ""
    reasoning: str = ""
    tools: list[tuple[str, str, str]] = field(default_factory=list)  # (name, arguments, result text)


class Renderer:
    """Shows an answer while it streams. In a notebook: one Markdown display updated in place, at most
    every `interval` seconds and only once the text has grown by `growth` since the last render, so the
    number of renders grows with the log of the length and the total cost stays linear. In a terminal:
    the text as it comes."""

    def __init__(self, rich: bool, *, show_reasoning: bool = True, fmt: str = "markdown",
                 display: Callable[..., Any] | None = None, interval: float = 0.1, growth: float = 1.25,
                 metadata: dict[str, Any] | None = None) -> None:
        self.rich = rich and fmt != "text"
        self.show_reasoning = show_reasoning
        self.fmt = fmt
        self.answer = Answer()
        self.renders = 0
        self._display = display
        self._handle: Any = None
        self._interval = interval
        self._growth = growth
        self._last_time = 0.0
        self._last_size = 0
        self._printed_reasoning = False
        self.metadata = metadata or {}  # the output's metadata: how the answer was made (provenance)

    # -- events
    def reasoning(self, text: str) -> None:
        self.answer.reasoning += text
        if not self.rich and self.show_reasoning:
            if not self._printed_reasoning:
                sys.stdout.write("[reasoning] ")
                self._printed_reasoning = True
            sys.stdout.write(text)
            sys.stdout.flush()
        self._maybe_render()

    def content(self, text: str) -> None:
        if not self.rich:
            if self._printed_reasoning and not self.answer.content:
                sys.stdout.write("\n\n")
            sys.stdout.write(text)
            sys.stdout.flush()
        self.answer.content += text
        self._maybe_render()

    def tool(self, name: str, arguments: str, result: str) -> None:
        self.answer.tools.append((name, arguments, result))
        if not self.rich:
            sys.stdout.write(f"\n[tool] {name}({arguments}) -> {result}\n")
            sys.stdout.flush()
            self._printed_reasoning = False  # the next round's reasoning gets its own label
        self._render()

    def finish(self) -> None:
        if self.rich:
            self._render()
        elif not self.answer.content.endswith("\n"):
            sys.stdout.write("\n")

    # -- rendering
    def markdown(self) -> str:
        parts = []
        if self.answer.reasoning and self.show_reasoning:
            parts.append(f"<details><summary>Reasoning</summary>\n\n{self.answer.reasoning.strip()}\n\n</details>\n")
        for name, arguments, result in self.answer.tools:
            parts.append(f"> 🔧 `{name}({_short(arguments)})` → `{_short(result)}`\n")
        body = self.answer.content
        if self.fmt in ("code", "json") and body and not body.lstrip().startswith("```"):
            body = f"```{'json' if self.fmt == 'json' else 'python'}\n{body}\n```"
        parts.append(body)
        return "\n".join(parts)

    def _maybe_render(self) -> None:
        if not self.rich:
            return
        size = len(self.answer.content) + len(self.answer.reasoning)
        now = time.monotonic()
        if now - self._last_time >= self._interval and size >= self._last_size * self._growth:
            self._render()

    def plain(self) -> str:
        """The answer as text/plain: its text, or (before there is any) what the Markdown shows."""
        return self.answer.content if self.answer.content.strip() else self.markdown()

    def _render(self) -> None:
        if not self.rich:
            return
        if self._display is not None:
            show = self._display
        else:
            from IPython.display import display as show
        self.renders += 1
        self._last_time = time.monotonic()
        self._last_size = len(self.answer.content) + len(self.answer.reasoning)
        bundle = {"text/markdown": self.markdown(), "text/plain": self.plain()}
        if self._handle is None:
            self._handle = show(bundle, raw=True, display_id=True, metadata=self.metadata)
        else:
            self._handle.update(bundle, raw=True, metadata=self.metadata)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
