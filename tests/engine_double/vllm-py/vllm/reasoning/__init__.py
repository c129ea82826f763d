"""vllm.reasoning: ReasoningParserManager. New layout: lazily registered (lazy_parsers, list_registered());
old layout (registry_layout=old): a plain dict `reasoning_parsers` of name -> class, nothing else."""

from vllm._double import REGISTRY, camel, parser_class
from vllm.reasoning.abs_reasoning_parsers import ReasoningParser, ReasoningParserManager

__all__ = ["ReasoningParser", "ReasoningParserManager"]

for _name in REGISTRY.reasoning_parsers:
    _module = "vllm.reasoning." + _name.replace("-", "_") + "_reasoning_parser"
    if REGISTRY.layout == "old":
        ReasoningParserManager.reasoning_parsers[_name] = parser_class(camel(_name) + "ReasoningParser",
                                                                       ReasoningParser, _module, _name)
    else:
        ReasoningParserManager.register_lazy_module(_name, _module, camel(_name) + "ReasoningParser")
