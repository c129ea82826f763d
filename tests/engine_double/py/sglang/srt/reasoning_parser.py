"""ReasoningParser.DetectorMap at its older path (image setting registry_layout=old; newer SGLang has it in
sglang.srt.parser.reasoning_parser)."""

from sglang._double import REGISTRY, missing

if REGISTRY.layout != "old":
    missing("sglang.srt.reasoning_parser")

from sglang.srt.reasoning_detectors import BaseReasoningFormatDetector, reasoning_parser_class

ReasoningParser = reasoning_parser_class(__name__)

__all__ = ["BaseReasoningFormatDetector", "ReasoningParser"]
