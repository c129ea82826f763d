"""FunctionCallParser.ToolCallParserEnum: the tool-call parser names this image's SGLang registers."""

from __future__ import annotations

from typing import ClassVar

from sglang._double import REGISTRY, camel
from sglang.srt.function_call.base_format_detector import BaseFormatDetector


def _detector(name: str) -> type:
    return type(camel(name) + "Detector", (BaseFormatDetector,), {"__module__": __name__, "parser_name": name})


class FunctionCallParser:
    """Parses tool calls out of a model's text with the detector that `tool_call_parser` names."""

    ToolCallParserEnum: ClassVar[dict[str, type[BaseFormatDetector]]] = {
        name: _detector(name) for name in REGISTRY.tool_parsers}

    def __init__(self, tools: list, tool_call_parser: str) -> None:
        detector_class = self.ToolCallParserEnum.get(tool_call_parser)
        if detector_class is None:
            raise ValueError(f"Unsupported tool_call_parser: {tool_call_parser}")
        self.detector = detector_class()
        self.tools = tools
