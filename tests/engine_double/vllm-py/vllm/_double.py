"""Not part of vLLM: this stub's link to the engine double (tests/engine_double/fake_engine.py) and to the
image's registry (its settings may override the parser and architecture lists)."""

from __future__ import annotations

import os
import re
import sys

_DOUBLE = os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))
if _DOUBLE not in sys.path:
    sys.path.append(_DOUBLE)
import fake_engine  # noqa: E402

REGISTRY = fake_engine.Registry("vllm")


def missing(module: str) -> None:
    """Fail this import as Python fails for a module that is not there (this image's vLLM lacks it)."""
    raise ModuleNotFoundError(f"No module named '{module}'", name=module)


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def parser_class(class_name: str, base: type, module: str, name: str) -> type:
    """A registered parser: a class of the right name and base that parses nothing (the double answers itself)."""
    return type(class_name, (base,), {"__module__": module, "parser_name": name})
