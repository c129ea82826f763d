"""The notebook face: `%hpcllm` and `%%llm`, the streaming renderer and the progress displays."""
