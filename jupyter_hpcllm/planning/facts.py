"""What a model is, as read from its directory: the data type the planner sizes and types jobs from.
Reading it from the cluster (and caching it) is ``discovery.models``'s job.

A ``config.json`` is whatever its author (or a broken download) wrote: every value is read defensively.
A value of the wrong type or out of range is treated as not given, and ``problems`` says which, so one
bad config costs its own model a sizing, never ``hpcllm models`` its whole table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelFacts"]

# Larger than any real model's heads, layers or context: keeps the arithmetic of the sizing in floats.
_LARGEST = 2**31 - 1

# The config keys the planner reads as whole numbers (from the config, or its text_config).
_WHOLE_KEYS = ("num_attention_heads", "num_key_value_heads", "num_hidden_layers", "head_dim", "hidden_size",
               "max_position_embeddings", "kv_lora_rank", "qk_rope_head_dim")


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the served name
    path: str  # the directory the engine loads (an HF cache snapshot for cache entries)
    config: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str = ""
    weight_bytes: int = 0
    shards: int = 0
    mtime: float = 0.0
    problem: str = ""  # what could not be read (config.json not JSON, a directory unreadable...), if anything
    card: str = ""  # the model card (README.md): the serving commands its authors recommend

    @property
    def vocab_size(self) -> int | None:
        return self._whole("vocab_size")

    @property
    def mtp_layers(self) -> int:
        """Multi-token-prediction layers in the model's own files (DeepSeek, GLM): a built-in draft."""
        return self._whole("num_nextn_predict_layers") or 0

    def _raw(self, key: str) -> Any:
        config = self.config if isinstance(self.config, Mapping) else {}
        text = config.get("text_config")
        value = config.get(key)
        if value is None and isinstance(text, Mapping):
            value = text.get(key)
        return value

    def _whole(self, key: str) -> int | None:
        """A positive whole number from the config, or None (not given, or not a usable number)."""
        value = self._raw(key)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _LARGEST:
            return None
        return value

    @property
    def problems(self) -> tuple[str, ...]:
        """What is wrong with what was read, one short sentence each (empty: nothing)."""
        found = [self.problem] if self.problem else []
        if not isinstance(self.config, Mapping):
            return (*found, "config.json is not a JSON object")
        text = self.config.get("text_config")
        if text is not None and not isinstance(text, Mapping):
            found.append(f"text_config in config.json is {_shown(text)}, not an object")
        for key in _WHOLE_KEYS:
            value = self._raw(key)
            if value is not None and self._whole(key) is None and not (key == "kv_lora_rank" and value in (0, False)):
                found.append(f"{key} in config.json is {_shown(value)}, not a positive whole number")
        for key, expected in (("model_type", str), ("architectures", list)):
            value = self.config.get(key)
            if value is not None and not isinstance(value, expected):
                found.append(f"{key} in config.json is {_shown(value)}, not {'text' if expected is str else 'a list'}")
        heads, kv = self.heads, self._whole("num_key_value_heads")
        if heads and kv and kv > heads:
            found.append(f"num_key_value_heads ({kv}) is more than num_attention_heads ({heads}) in config.json")
        return tuple(found)

    @property
    def model_type(self) -> str:
        value = self._raw_top("model_type")
        return value if isinstance(value, str) else ""

    @property
    def architectures(self) -> tuple[str, ...]:
        value = self._raw_top("architectures")
        return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()

    def _raw_top(self, key: str) -> Any:
        return self.config.get(key) if isinstance(self.config, Mapping) else None

    @property
    def heads(self) -> int | None:
        return self._whole("num_attention_heads")

    @property
    def kv_heads(self) -> int | None:
        return self._whole("num_key_value_heads") or self.heads

    @property
    def layers(self) -> int:
        return self._whole("num_hidden_layers") or 0

    @property
    def head_dim(self) -> int:
        value = self._whole("head_dim")
        if value:
            return value
        hidden = self._whole("hidden_size")
        return max(1, hidden // self.heads) if hidden and self.heads else 128

    @property
    def max_context(self) -> int:
        return self._whole("max_position_embeddings") or 4096

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek, Kimi): a compressed KV cache, not split by TP."""
        return self._whole("kv_lora_rank") is not None

    @property
    def kv_lora_rank(self) -> int:
        return self._whole("kv_lora_rank") or 512

    @property
    def qk_rope_head_dim(self) -> int:
        return self._whole("qk_rope_head_dim") or 64

    @property
    def weight_gb(self) -> float:
        return self.weight_bytes / 1e9


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
