"""vLLM as the engine double's stand-in image holds it: its version and its registries, at vLLM's module paths
(see tests/engine_double/fake_engine.py). Serving is `vllm serve` (vllm-bin/vllm)."""

from vllm.version import __version__, __version_tuple__

__all__ = ["ModelRegistry", "__version__", "__version_tuple__"]


def __getattr__(name: str) -> object:  # vLLM exports ModelRegistry lazily too
    if name == "ModelRegistry":
        from vllm.model_executor.models import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module 'vllm' has no attribute '{name}'")
