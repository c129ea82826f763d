"""A prompt to any OpenAI-compatible endpoint: the answer streamed to a sink (reasoning, content, tool
calls), Python functions as tools run here. No UI: a face passes the sink that shows the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .tools import call_tool, tool_schema

__all__ = ["AnswerSink", "Endpoint", "code_of", "parse_json_answer", "run_prompt"]

MAX_TOOL_ROUNDS = 10


@dataclass
class Endpoint:
    """Where `%%llm` sends prompts: a server we launched, or any OpenAI-compatible URL (`%hpcllm use`)."""

    client: Any  # openai.OpenAI
    model: str
    label: str


class AnswerSink(Protocol):
    """What receives an answer as it arrives (the notebook's Renderer, a test's recorder)."""

    def reasoning(self, text: str) -> None: ...
    def content(self, text: str) -> None: ...
    def tool(self, name: str, arguments: str, result: str) -> None: ...
    def finish(self) -> None: ...


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


def run_prompt(endpoint: Endpoint, messages: list[dict[str, Any]], renderer: AnswerSink, *,
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


def _stream(endpoint: Endpoint, options: dict[str, Any], renderer: AnswerSink) -> tuple[str, list[dict[str, str]]]:
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


def _complete(endpoint: Endpoint, options: dict[str, Any], renderer: AnswerSink) -> tuple[str, list[dict[str, str]]]:
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
