"""Variables in a prompt: `{name}` is the value, `{{name}}` a literal `{name}`, any other brace stays."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["interpolate"]

_FIELD = re.compile(r"\{\{([^{}]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """`{name}` → the variable's value; `{{text}}` → a literal `{text}`. Anything else (code, nested dicts,
    JSON, an unknown name) stays as written: a prompt full of braces never fails (unlike str.format), and
    a lone `}}` closing two dicts is not taken for an escape."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name = match.group(2)
        if name not in namespace:
            return match.group(0)
        try:
            return str(namespace[name])
        except Exception as error:  # a value whose __str__ fails: say which, never a traceback
            raise ConfigError(
                f"{{{name}}} in the prompt cannot be turned into text: str({name}) raised "
                f"{type(error).__name__}: {_said(error)}.",
                f"Convert it first (for example `{name}_text = repr({name})`) and use that, or write "
                f"{{{{{name}}}}} for a literal {{{name}}}.") from None

    return _FIELD.sub(replace, text)


def _said(error: Exception) -> str:
    try:  # an exception's own __str__ may fail too
        return str(error)[:200] or "no message"
    except Exception:
        return "no message"
