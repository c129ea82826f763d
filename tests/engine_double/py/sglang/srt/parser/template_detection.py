"""SGLang's detection of the tool-call and reasoning parsers from a chat template (`--tool-call-parser auto`,
`--reasoning-parser auto`): only in images that support `auto` (image setting auto_parsers=1, the default).
The rules are the double's shortened ones: tests/engine_double/engine_checks.py."""

from sglang._double import REGISTRY, engine_checks, missing

if not REGISTRY.auto_parsers:
    missing("sglang.srt.parser.template_detection")

detect_tool_call_parser = engine_checks.detect_tool_call_parser
detect_reasoning_parser = engine_checks.detect_reasoning_parser
TOOL_CALL_PARSER_RULES = engine_checks.TOOL_CALL_RULES
REASONING_PARSER_RULES = engine_checks.REASONING_RULES

__all__ = ["REASONING_PARSER_RULES", "TOOL_CALL_PARSER_RULES", "detect_reasoning_parser", "detect_tool_call_parser"]
