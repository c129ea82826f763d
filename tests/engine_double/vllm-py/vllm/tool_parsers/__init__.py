"""vllm.tool_parsers (vLLM >= 0.11.1): the built-in tool parsers register lazily, by module path and class name,
so their names are in ToolParserManager.lazy_parsers and list_registered(), not in .tool_parsers."""

from vllm._double import REGISTRY, camel, missing

if REGISTRY.layout == "old":
    missing("vllm.tool_parsers")

from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager

__all__ = ["ToolParser", "ToolParserManager"]


def register_lazy_tool_parsers() -> None:
    for name in REGISTRY.tool_parsers:
        module = "vllm.tool_parsers." + name.replace("-", "_") + "_tool_parser"
        ToolParserManager.register_lazy_module(name, module, camel(name) + "ToolParser")


register_lazy_tool_parsers()
