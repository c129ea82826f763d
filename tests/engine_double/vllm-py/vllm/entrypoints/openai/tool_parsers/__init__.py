"""vllm.entrypoints.openai.tool_parsers (vLLM <= 0.11.0, image setting registry_layout=old): the tool parsers
are eagerly registered classes in ToolParserManager.tool_parsers; lazy_parsers is empty; no list_registered().
Newer vLLM moved them to vllm.tool_parsers."""

from __future__ import annotations

from typing import ClassVar

from vllm._double import REGISTRY, camel, missing, parser_class

if REGISTRY.layout != "old":
    missing("vllm.entrypoints.openai.tool_parsers")


class ToolParser:
    """Base of the tool parsers (in the double they parse nothing: the double answers by itself)."""

    def __init__(self, tokenizer: object = None) -> None:
        self.model_tokenizer = tokenizer


class ToolParserManager:
    tool_parsers: ClassVar[dict[str, type]] = {}
    lazy_parsers: ClassVar[dict[str, tuple[str, str]]] = {}

    @classmethod
    def get_tool_parser(cls, name: str) -> type:
        if name in cls.tool_parsers:
            return cls.tool_parsers[name]
        raise KeyError(f"tool helper: '{name}' not found in tool_parsers")

    @classmethod
    def register_module(cls, name: str, module: type) -> type:
        cls.tool_parsers[name] = module
        return module


for _name in REGISTRY.tool_parsers:
    _module = "vllm.entrypoints.openai.tool_parsers." + _name.replace("-", "_") + "_tool_parser"
    ToolParserManager.tool_parsers[_name] = parser_class(camel(_name) + "ToolParser", ToolParser, _module, _name)

__all__ = ["ToolParser", "ToolParserManager"]
