"""vllm.model_executor (in the double: only the model registry)."""
