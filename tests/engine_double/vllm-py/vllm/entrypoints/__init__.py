"""vllm.entrypoints (in the double: only the older tool-parser registry path)."""
