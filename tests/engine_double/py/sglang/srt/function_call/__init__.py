"""sglang.srt.function_call: the tool-call parsers (format detectors)."""
