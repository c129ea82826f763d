"""ReasoningParser.DetectorMap: the reasoning parser names this image's SGLang registers (newer SGLang; with
image setting registry_layout=old it is sglang.srt.reasoning_parser instead)."""

from sglang._double import REGISTRY, missing

if REGISTRY.layout == "old":
    missing("sglang.srt.parser.reasoning_parser")

from sglang.srt.reasoning_detectors import BaseReasoningFormatDetector, reasoning_parser_class

ReasoningParser = reasoning_parser_class(__name__)

__all__ = ["BaseReasoningFormatDetector", "ReasoningParser"]
