"""What a model is, as read from its directory: the data type the planner sizes and types jobs from.
Reading it from the cluster (and caching it) is ``discovery.models``'s job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelFacts"]


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the served name
    path: str  # the directory the engine loads (an HF cache snapshot for cache entries)
    config: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str = ""
    weight_bytes: int = 0
    shards: int = 0
    mtime: float = 0.0

    def _get(self, key: str, default: Any = None) -> Any:
        text = self.config.get("text_config") or {}
        value = self.config.get(key)
        return value if value is not None else text.get(key, default)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type") or "")

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(self.config.get("architectures") or ())

    @property
    def heads(self) -> int | None:
        value = self._get("num_attention_heads")
        return int(value) if value else None

    @property
    def kv_heads(self) -> int | None:
        value = self._get("num_key_value_heads")
        return int(value) if value else self.heads

    @property
    def layers(self) -> int:
        return int(self._get("num_hidden_layers") or 0)

    @property
    def head_dim(self) -> int:
        value = self._get("head_dim")
        if value:
            return int(value)
        hidden = self._get("hidden_size")
        return int(hidden) // self.heads if hidden and self.heads else 128

    @property
    def max_context(self) -> int:
        return int(self._get("max_position_embeddings") or 4096)

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek, Kimi): a compressed KV cache, not split by TP."""
        return bool(self._get("kv_lora_rank"))

    @property
    def weight_gb(self) -> float:
        return self.weight_bytes / 1e9
