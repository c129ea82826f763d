from __future__ import annotations

from typing import ClassVar

from vllm._double import REGISTRY, missing, parser_class

if REGISTRY.layout == "old":
    missing("vllm.tool_parsers")


class ToolParser:
    """Base of the tool parsers (in the double they parse nothing: the double answers by itself)."""

    def __init__(self, tokenizer: object = None) -> None:
        self.model_tokenizer = tokenizer


class ToolParserManager:
    """vLLM's registry of tool parsers: eagerly registered classes, and lazily registered module paths."""

    tool_parsers: ClassVar[dict[str, type]] = {}
    lazy_parsers: ClassVar[dict[str, tuple[str, str]]] = {}

    @classmethod
    def register_lazy_module(cls, name: str, module_path: str, class_name: str) -> None:
        cls.lazy_parsers[name] = (module_path, class_name)

    @classmethod
    def register_module(cls, name: str, module: type) -> type:
        cls.tool_parsers[name] = module
        return module

    @classmethod
    def get_tool_parser(cls, name: str) -> type:
        if name in cls.tool_parsers:
            return cls.tool_parsers[name]
        if name in cls.lazy_parsers:
            module_path, class_name = cls.lazy_parsers[name]
            cls.tool_parsers[name] = parser_class(class_name, ToolParser, module_path, name)
            return cls.tool_parsers[name]
        raise KeyError(f"Tool parser '{name}' not found. Available parsers: {', '.join(cls.list_registered())}")

    @classmethod
    def list_registered(cls) -> list[str]:
        """Names of all eagerly and lazily registered tool parsers."""
        return sorted(set(cls.tool_parsers) | set(cls.lazy_parsers))
