"""Not an SGLang module: the ReasoningParser both layouts share (see parser/reasoning_parser.py)."""

from __future__ import annotations

from typing import ClassVar

from sglang._double import REGISTRY, camel


class BaseReasoningFormatDetector:
    """Base of SGLang's reasoning format detectors (in the double they detect nothing)."""

    def __init__(self, think_start_token: str = "<think>", think_end_token: str = "</think>") -> None:
        self.think_start_token, self.think_end_token = think_start_token, think_end_token


def _detector(name: str, module: str) -> type:
    return type(camel(name) + "Detector", (BaseReasoningFormatDetector,), {"__module__": module, "parser_name": name})


def reasoning_parser_class(module: str) -> type:
    class ReasoningParser:
        """Splits reasoning from content with the detector that `model_type` names."""

        DetectorMap: ClassVar[dict[str, type[BaseReasoningFormatDetector]]] = {
            name: _detector(name, module) for name in REGISTRY.reasoning_parsers}

        def __init__(self, model_type: str | None = None, stream_reasoning: bool = True,
                     force_reasoning: bool | None = None) -> None:
            if not model_type:
                raise ValueError("Model type must be specified")
            detector_class = self.DetectorMap.get(model_type.lower())
            if detector_class is None:
                raise ValueError(f"Unsupported model type: {model_type}")
            self.detector = detector_class()

    ReasoningParser.__module__ = module
    return ReasoningParser
