"""SGLang's model registry: the architectures this image's SGLang implements (fake_engine.Registry)."""

from __future__ import annotations

from collections.abc import KeysView

from sglang._double import REGISTRY


class _ModelRegistry:
    def __init__(self, models: dict[str, str]) -> None:
        self.models = models

    def get_supported_archs(self) -> KeysView[str]:
        return self.models.keys()  # as SGLang: a keys view, not a list


ModelRegistry = _ModelRegistry({arch: "sglang.srt.models." + arch for arch in REGISTRY.architectures})
