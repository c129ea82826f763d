"""Python functions as OpenAI tools: a JSON schema from the signature, type hints and docstring, and
running the calls the model makes."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["call_tool", "tool_schema"]

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if origin in (list, tuple, set):
        args = typing.get_args(hint)
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin in (dict, Mapping):
        return {"type": "object"}
    if origin is typing.Literal:
        values = list(typing.get_args(hint))
        return {"enum": values, **_json_type(type(values[0]))} if values else {}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {"anyOf": [_json_type(a) for a in options]}
    return {}  # unknown: let the model send any JSON value


def _param_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style ("x: text") or NumPy/Sphinx docstring (":param x: text")."""
    found: dict[str, str] = {}
    for match in re.finditer(r"^\s*(?::param\s+)?(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", doc, re.MULTILINE):
        found.setdefault(match.group(1), match.group(2).strip())
    return found


def tool_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI `tools` entry for a Python function."""
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    doc = inspect.getdoc(function) or ""
    summary = doc.split("\n\n", 1)[0].strip() or f"Call the Python function {function.__name__}."
    described = _param_docs(doc)
    properties: dict[str, Any] = {}
    required = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        schema = _json_type(hints.get(name, parameter.annotation if parameter.annotation is not parameter.empty
                                      else Any))
        if name in described:
            schema["description"] = described[name]
        if parameter.default is parameter.empty:
            required.append(name)
        else:
            try:
                json.dumps(parameter.default)
                schema["default"] = parameter.default
            except TypeError:
                pass
        properties[name] = schema
    return {"type": "function", "function": {
        "name": function.__name__, "description": summary,
        "parameters": {"type": "object", "properties": properties, "required": required}}}


def call_tool(functions: Mapping[str, Callable[..., Any]], name: str, arguments: str) -> tuple[Any, str]:
    """Run one call; returns (value, the text sent back to the model). Errors are answered, not raised:
    the model can read them and try again."""
    if name not in functions:
        return None, f"Error: there is no tool named {name!r}."
    try:
        kwargs = json.loads(arguments or "{}")
    except json.JSONDecodeError as error:
        return None, f"Error: the arguments are not valid JSON ({error})."
    try:
        value = functions[name](**kwargs) if isinstance(kwargs, dict) else functions[name](kwargs)
    except Exception as error:
        return None, f"Error: {type(error).__name__}: {error}"
    try:
        return value, value if isinstance(value, str) else json.dumps(value, default=str)
    except TypeError:
        return value, repr(value)
