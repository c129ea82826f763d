"""One TypeScript interface per JSON model: labextension/src/models.ts mirrors
jupyter_hpcllm/serverext/models.py, interface for interface, field for field, type for type."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from jupyter_hpcllm.serverext import models

TS = Path(__file__).resolve().parent.parent / "labextension" / "src" / "models.ts"


def typescript(hint: object) -> str:
    """A Python type hint as models.ts writes it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if arg is type(None) else typescript(arg) for arg in args)
    if origin is list:
        inner = typescript(args[0])
        return f"({inner})[]" if " " in inner else f"{inner}[]"
    if origin is dict:
        return f"Record<{typescript(args[0])}, {typescript(args[1])}>"
    if hint in (int, float):
        return "number"
    return {str: "string", bool: "boolean"}.get(hint, getattr(hint, "__name__", str(hint)))  # a model by name


def interfaces(text: str) -> dict[str, dict[str, str]]:
    found = {}
    for name, body in re.findall(r"export interface (\w+) \{([^}]*)\}", text):
        found[name] = dict(re.findall(r"^\s*(\w+): ([^;]+);", body, re.MULTILINE))
    return found


def test_every_model_has_its_interface_with_the_same_fields_and_types():
    python = {name: {field: typescript(hint) for field, hint in typing.get_type_hints(getattr(models, name)).items()}
              for name in models.__all__}
    assert interfaces(TS.read_text()) == python


def test_the_converter_can_tell_types_apart():
    assert typescript(list[list[str]]) == "string[][]" and typescript(int | None) == "number | null"
    assert typescript(dict[str, models.ParsersModel]) == "Record<string, ParsersModel>"
    changed = interfaces(TS.read_text().replace("kv_cache: number | null;", "kv_cache: number;"))
    assert changed["MetricsModel"]["kv_cache"] != typescript(typing.get_type_hints(models.MetricsModel)["kv_cache"])
