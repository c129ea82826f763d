"""vllm.entrypoints.openai (in the double: only the older tool-parser registry path)."""
