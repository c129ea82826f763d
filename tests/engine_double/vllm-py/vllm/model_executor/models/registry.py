"""vLLM's model registry: the architectures this image's vLLM implements (fake_engine.Registry)."""

from __future__ import annotations

from collections.abc import KeysView

from vllm._double import REGISTRY


class _ModelRegistry:
    def __init__(self, models: dict[str, tuple[str, str]]) -> None:
        self.models = models

    def get_supported_archs(self) -> KeysView[str]:
        return self.models.keys()  # as vLLM: a keys view, not a list

    def register_model(self, model_arch: str, model_cls: object) -> None:
        self.models[model_arch] = ("vllm.model_executor.models", str(model_cls))


ModelRegistry = _ModelRegistry({arch: ("vllm.model_executor.models", arch) for arch in REGISTRY.architectures})
