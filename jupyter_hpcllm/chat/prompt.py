"""`%%llm`: a cell as a prompt, the answer streamed in place (Markdown, reasoning folded above it), with
optional Python tools. Works against any OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tools import call_tool, tool_schema

__all__ = ["Endpoint", "Renderer", "interpolate", "run_prompt"]

MAX_TOOL_ROUNDS = 10


@dataclass
class Endpoint:
    """Where `%%llm` sends prompts: a server we launched, or any OpenAI-compatible URL (`%hpcllm use`)."""

    client: Any  # openai.OpenAI
    model: str
    label: str


_FIELD = re.compile(r"\{\{([^{}]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """`{name}` → the variable's value; `{{text}}` → a literal `{text}`. Anything else (code, nested dicts,
    JSON, an unknown name) stays as written: a prompt full of braces never fails (unlike str.format), and
    a lone `}}` closing two dicts is not taken for an escape."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name = match.group(2)
        return str(namespace[name]) if name in namespace else match.group(0)

    return _FIELD.sub(replace, text)


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
                 display: Callable[..., Any] | None = None, interval: float = 0.1, growth: float = 1.25) -> None:
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

    def _render(self) -> None:
        if not self.rich:
            return
        from IPython.display import Markdown, display

        show = self._display or display
        self.renders += 1
        self._last_time = time.monotonic()
        self._last_size = len(self.answer.content) + len(self.answer.reasoning)
        if self._handle is None:
            self._handle = show(Markdown(self.markdown()), display_id=True)
        else:
            self._handle.update(Markdown(self.markdown()))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REASONING_FIELDS = ("reasoning", "reasoning_content")
_declared: dict[type, tuple[str, ...]] = {}


def _delta_reasoning(delta: Any) -> str:
    """vLLM sends `reasoning` (older: `reasoning_content`), SGLang `reasoning_content`: read both. The
    openai client keeps fields it does not declare in `model_extra`; a plain dict lookup there costs far
    less per chunk than getattr on a missing pydantic attribute (an exception each time)."""
    extra = getattr(delta, "model_extra", None)
    if extra:
        found = extra.get("reasoning") or extra.get("reasoning_content")
        if found:
            return str(found)
    kind = type(delta)
    if kind not in _declared:
        fields = getattr(kind, "model_fields", {})
        _declared[kind] = tuple(name for name in _REASONING_FIELDS if name in fields)
    for name in _declared[kind]:
        value = getattr(delta, name, None)
        if value:
            return str(value)
    return ""


def run_prompt(endpoint: Endpoint, messages: list[dict[str, Any]], renderer: Renderer, *,
               functions: Mapping[str, Callable[..., Any]] | None = None, stream: bool = True,
               **request: Any) -> list[dict[str, Any]]:
    """Send the conversation, render the answer, run tool calls until the model answers. Returns the
    messages this turn added (assistant and tool messages), for a kept conversation."""
    functions = functions or {}
    tools = [tool_schema(f) for f in functions.values()]
    added: list[dict[str, Any]] = []
    for _ in range(MAX_TOOL_ROUNDS):
        options = dict(request, model=endpoint.model, messages=messages + added)
        if tools:
            options["tools"] = tools
        content, calls = _stream(endpoint, options, renderer) if stream else _complete(endpoint, options, renderer)
        if not calls:
            added.append({"role": "assistant", "content": content})
            break
        added.append({"role": "assistant", "content": content or None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]})
        for call in calls:
            _, text = call_tool(functions, call["name"], call["arguments"])
            renderer.tool(call["name"], call["arguments"], text)
            added.append({"role": "tool", "tool_call_id": call["id"], "content": text})
    renderer.finish()
    return added


def _stream(endpoint: Endpoint, options: dict[str, Any], renderer: Renderer) -> tuple[str, list[dict[str, str]]]:
    content = ""
    calls: dict[int, dict[str, str]] = {}
    for chunk in endpoint.client.chat.completions.create(stream=True, **options):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning = _delta_reasoning(delta)
        if reasoning:
            renderer.reasoning(reasoning)
        if delta.content:
            content += delta.content
            renderer.content(delta.content)
        for call in delta.tool_calls or ():
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = call.id or slot["id"]
            if call.function is not None:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)]


def _complete(endpoint: Endpoint, options: dict[str, Any], renderer: Renderer) -> tuple[str, list[dict[str, str]]]:
    message = endpoint.client.chat.completions.create(**options).choices[0].message
    reasoning = _delta_reasoning(message)
    if reasoning:
        renderer.reasoning(reasoning)
    if message.content:
        renderer.content(message.content)
    calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments or ""}
             for c in message.tool_calls or ()]
    return message.content or "", calls


def parse_json_answer(text: str) -> Any:
    """The JSON in an answer: all of it, a ```json fence, or the first object or array in the prose."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
        if not starts:
            raise
        return json.JSONDecoder().raw_decode(body[min(starts):])[0]


def code_of(text: str) -> str:
    """The code in an answer: the first fenced block if there is one, else all of it."""
    fenced = re.search(r"```[\w+-]*\s*\n(.*?)```", text, re.DOTALL)
    return (fenced.group(1) if fenced else text).strip("\n")
