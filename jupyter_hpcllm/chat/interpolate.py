"""Variables in a prompt: `{name}` is the value, `{{name}}` a literal `{name}`, any other brace stays."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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
        return str(namespace[name]) if name in namespace else match.group(0)

    return _FIELD.sub(replace, text)
