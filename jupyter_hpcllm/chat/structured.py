"""Structured answers: a JSON schema or a pydantic model becomes the request's response_format, and each
answer is parsed and checked against it (guided decoding keeps to the schema, but an answer cut by
max_tokens, or a server without guided decoding, does not)."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ConfigError

__all__ = ["Structure", "structure_of"]


class Structure:
    """What a map asks for and how it reads each answer."""

    def __init__(self, response_format: dict[str, Any] | None, model: Any = None,
                 schema: dict[str, Any] | None = None) -> None:
        self.response_format = response_format
        self.model = model  # a pydantic model class, or None
        self.schema = schema  # a JSON schema to check against, or None
        self.validator = _validator(schema) if schema is not None and model is None else None

    @property
    def parses(self) -> bool:
        return self.response_format is not None and self.response_format.get("type") in ("json_schema", "json_object")

    def read(self, text: str) -> Any:
        """The answer as a value: text as is; JSON parsed and validated (ValueError says why not)."""
        if not self.parses:
            return text
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ValueError(f"the answer is not valid JSON ({_short(str(error))})") from None
        if self.model is not None:
            try:
                return self.model.model_validate(value)
            except Exception as error:  # pydantic.ValidationError
                raise ValueError(f"the answer does not fit {self.model.__name__}: {_short(str(error))}") from None
        if self.validator is not None:
            mismatch = next(iter(self.validator.iter_errors(value)), None)
            if mismatch is not None:
                raise ValueError(f"the answer does not fit the schema: {_short(mismatch.message)}")
        return value


def structure_of(schema: Any = None, response_format: dict[str, Any] | None = None) -> Structure:
    """`schema`: a pydantic model class or a JSON schema (a dict); `response_format`: the OpenAI field as
    is. One of them, or neither (free text)."""
    if schema is not None and response_format is not None:
        raise ConfigError("Give a schema or a response_format, not both.",
                          "A schema (a pydantic model or a JSON schema dict) makes the response_format itself.")
    if response_format is not None:
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise ConfigError(f"response_format must be a dict with a type, not {_short(repr(response_format))}.",
                              'For example {"type": "json_object"}, or pass schema= instead.')
        inner = response_format.get("json_schema") or {}
        return Structure(response_format, schema=inner.get("schema") if isinstance(inner, dict) else None)
    if schema is None:
        return Structure(None)
    if isinstance(schema, dict):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))[:64]
        return Structure({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
                         schema=schema)
    json_schema = getattr(schema, "model_json_schema", None)
    if isinstance(schema, type) and callable(json_schema):
        return Structure({"type": "json_schema", "json_schema": {"name": schema.__name__[:64],
                                                                 "schema": json_schema(), "strict": True}},
                         model=schema)
    raise ConfigError(f"schema must be a pydantic model class or a JSON schema dict, not {type(schema).__name__}.",
                      "For example `class Label(BaseModel): label: str`, then schema=Label.")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _validator(schema: dict[str, Any]) -> Any:
    """A checker for the schema, made once; a schema that is itself wrong is refused before anything is
    sent. None when jsonschema is not installed (then parsed JSON is what is promised)."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return None
    kind = jsonschema.validators.validator_for(schema)
    try:
        kind.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ConfigError(f"The JSON schema is not valid: {_short(error.message)}.",
                          'Check it against https://json-schema.org (types are "string", "integer", '
                          '"number", "boolean", "object", "array").') from None
    return kind(schema)
