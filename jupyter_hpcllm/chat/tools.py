"""Python functions as OpenAI tools: a JSON schema from the signature, type hints and docstring, and
running the calls the model makes.

One pydantic model, built from the signature, gives both: the schema the model is shown and the
validation of the arguments it sends, so what is described is exactly what is accepted. pydantic is
imported only when a tool is used (it comes with openai), so importing jupyter_hpcllm stays cheap.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["call_tool", "tool_schema"]


# --- the docstring ------------------------------------------------------------------------------------

# "x: text", "x (int): text" (Google style) or ":param x: text", ":param int x: text" (Sphinx style).
_PARAM_LINE = re.compile(r"^(?P<indent>[ \t]*)(?::param\s+(?:[^:\n]*\s)?)?(?P<name>\w+)[ \t]*(?:\([^)\n]*\))?[ \t]*:"
                         r"[ \t]*(?P<text>\S.*)$")


def _param_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style ("x: text") or Sphinx-style (":param x: text") docstring;
    lines indented below one continue its description."""
    found: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        match = _PARAM_LINE.match(line)
        if not match or match.group("name") in found:
            continue
        text = [match.group("text").strip()]
        indent = len(match.group("indent").expandtabs())
        for following in lines[i + 1:]:
            if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                break
            text.append(following.strip())
        found[match.group("name")] = " ".join(text)
    return found


_SECTION = re.compile(r"^\s*(?::\w|(?:Args|Arguments|Parameters|Params|Returns|Raises|Examples?)\s*:?\s*$)")


def _summary(function: Callable[..., Any], doc: str) -> str:
    """The docstring's first paragraph, up to its parameters if they start there."""
    lines = []
    for line in doc.split("\n\n", 1)[0].splitlines():
        if _SECTION.match(line):
            break
        lines.append(line)
    return " ".join(" ".join(lines).split()) or f"Call the Python function {function.__name__}."


# --- the signature as a pydantic model ----------------------------------------------------------------


class _Signature:
    """A function's parameters as a pydantic model. Fields are named p0, p1, ... with the parameter's
    name as alias, so no parameter name can clash with pydantic's own attributes."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.parameters = [p for p in inspect.signature(function).parameters.values()
                           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        self.takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
        self.doc = inspect.getdoc(function) or ""
        types = _hints(function, self.parameters)
        try:
            self.model = self._build(types)
            self._schema(self.model)
        except Exception:
            # A hint pydantic cannot use even as an arbitrary type (an unresolved forward reference...):
            # accept any JSON value there rather than fail every prompt that offers this tool.
            self.model = self._build([hint if _usable(hint) else Any for hint in types])

    def _build(self, types: list[Any]) -> type[BaseModel]:
        from pydantic import ConfigDict, Field, create_model

        described = _param_docs(self.doc)
        fields: dict[str, Any] = {}
        for i, (parameter, hint) in enumerate(zip(self.parameters, types, strict=True)):
            options: dict[str, Any] = {"alias": parameter.name}
            if parameter.name in described:
                options["description"] = described[parameter.name]
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[f"p{i}"] = (hint, Field(default, **options))
        config = ConfigDict(arbitrary_types_allowed=True, extra="allow" if self.takes_kwargs else "forbid")
        return create_model(getattr(self.function, "__name__", "arguments"), __config__=config, **fields)

    @staticmethod
    def _schema(model: type[BaseModel]) -> dict[str, Any]:
        from pydantic.json_schema import GenerateJsonSchema

        class Lenient(GenerateJsonSchema):
            def handle_invalid_for_json_schema(self, schema: Any, error_info: str) -> dict[str, Any]:
                return {}  # an arbitrary class: the model may send any JSON value (validation will tell)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a default that is not JSON is left out of the schema, quietly
            return model.model_json_schema(schema_generator=Lenient)

    def schema(self) -> dict[str, Any]:
        """The parameters' JSON schema: no titles, definitions inlined unless a type is recursive."""
        raw = self._schema(self.model)
        defs = raw.pop("$defs", {})
        schema: dict[str, Any]
        try:
            schema = _tidy(raw, defs, frozenset(), inline=True)
        except _Recursive:
            schema = _tidy(raw, defs, frozenset(), inline=False)
            schema["$defs"] = {name: _tidy(s, defs, frozenset(), inline=False) for name, s in defs.items()}
        return {"type": "object", "properties": schema.pop("properties", {}), "required": schema.pop("required", []),
                **schema}

    def bind(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """The validated (and converted) arguments, as (args, kwargs) for the function. Raises
        pydantic's ValidationError."""
        validated = self.model.model_validate(arguments)
        given = validated.model_fields_set
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for i, parameter in enumerate(self.parameters):
            field = f"p{i}"
            if parameter.kind is parameter.POSITIONAL_ONLY:
                args.append(getattr(validated, field) if field in given else parameter.default)
            elif field in given:
                kwargs[parameter.name] = getattr(validated, field)
        kwargs.update(validated.model_extra or {})  # the function's **kwargs
        return args, kwargs


def _hints(function: Callable[..., Any], parameters: list[inspect.Parameter]) -> list[Any]:
    """The parameters' resolved type hints (Any where there is none, or it cannot be resolved), for a
    function, a method, a class, a functools.partial or a callable object."""
    if inspect.isclass(function):
        target: Any = function.__init__
    elif isinstance(function, functools.partial):
        target = function.func
    elif inspect.isroutine(function):
        target = function
    else:
        target = type(function).__call__
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # one unresolvable hint: resolve the others one by one
        hints = {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    resolved = []
    for parameter in parameters:
        hint = hints.get(parameter.name, parameter.annotation)
        if hint is parameter.empty:
            hint = Any
        elif isinstance(hint, str):
            try:
                hint = eval(hint, dict(namespace))
            except Exception:
                hint = Any
        resolved.append(hint)
    return resolved


def _usable(hint: Any) -> bool:
    from pydantic import ConfigDict, create_model

    try:
        _Signature._schema(create_model("probe", __config__=ConfigDict(arbitrary_types_allowed=True), x=(hint, ...)))
    except Exception:
        return False
    return True


class _Recursive(Exception):
    pass


# Where a JSON schema holds other schemas (everything else, like "default" or "enum", is data).
_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas", "$defs")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")


def _tidy(node: Any, defs: dict[str, Any], seen: frozenset[str], *, inline: bool) -> Any:
    """A copy without pydantic's titles, with `$ref`s to `defs` replaced by the definitions (inline)."""
    if not isinstance(node, dict):
        return node  # a boolean schema
    tidy: dict[str, Any] = {}
    ref = node.get("$ref")
    inlined = inline and isinstance(ref, str) and ref.startswith("#/$defs/")
    if inlined:
        name = str(ref)[len("#/$defs/"):]
        if name in seen:
            raise _Recursive(name)
        tidy.update(_tidy(defs[name], defs, seen | {name}, inline=True))
    for key, value in node.items():
        if (key == "$ref" and inlined) or (key == "title" and isinstance(value, str)):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            tidy[key] = {name: _tidy(item, defs, seen, inline=inline) for name, item in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            tidy[key] = [_tidy(item, defs, seen, inline=inline) for item in value]
        elif key in _SCHEMA_ONE:
            tidy[key] = ([_tidy(item, defs, seen, inline=inline) for item in value] if isinstance(value, list)
                         else _tidy(value, defs, seen, inline=inline))
        else:
            tidy[key] = value  # the field's own description and default win over its type's
    return tidy


# --- the public functions -----------------------------------------------------------------------------


def tool_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI `tools` entry for a Python function."""
    signature = _Signature(function)
    return {"type": "function", "function": {
        "name": function.__name__, "description": _summary(function, signature.doc),
        "parameters": signature.schema()}}


def call_tool(functions: Mapping[str, Callable[..., Any]], name: str, arguments: str) -> tuple[Any, str]:
    """Run one call; returns (value, the text sent back to the model). The arguments are checked against
    the signature before the function runs. Errors are answered, not raised: the model can read them
    and try again."""
    if name not in functions:
        return None, f"Error: there is no tool named {name!r}."
    try:
        payload = json.loads(arguments or "{}")
    except json.JSONDecodeError as error:
        return None, f"Error: the arguments are not valid JSON ({error})."
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        return None, f"Error: invalid arguments: expected a JSON object of named arguments, not {_json_kind(payload)}."
    from pydantic import ValidationError

    signature = _Signature(functions[name])
    try:
        args, kwargs = signature.bind(payload)
    except ValidationError as error:
        return None, f"Error: invalid arguments: {_problems(error, signature)}"
    try:
        value = functions[name](*args, **kwargs)
    except Exception as error:
        return None, f"Error: {type(error).__name__}: {error}"
    if isinstance(value, str):
        return value, value
    try:
        return value, json.dumps(value, default=_jsonable)
    except (TypeError, ValueError):  # ValueError: a circular reference
        return value, repr(value)


def _problems(error: Any, signature: _Signature) -> str:
    """pydantic's errors, one clause each, in the parameters' own names."""
    clauses = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "arguments"
        if problem["type"] == "extra_forbidden":
            names = ", ".join(p.name for p in signature.parameters) or "none"
            clauses.append(f"{where}: not a parameter (the parameters are: {names})")
        elif problem["type"] == "missing":
            clauses.append(f"{where}: required but missing")
        else:
            got = repr(problem.get("input"))
            clauses.append(f"{where}: {problem['msg']} (got {got if len(got) <= 80 else got[:79] + '…'})")
    return "; ".join(clauses) + "."


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _jsonable(value: Any) -> Any:
    """Dataclasses, enums, sets, dates... as JSON values; anything else as its str()."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)
