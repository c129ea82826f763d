"""How much GPU memory a model needs, and the smallest allocation of the profile that holds it.

Need = the larger of the users' rule of thumb (1.25 × the weight files) and weights + overhead + the
KV cache for the context asked for, over the share of memory the engine uses (0.9). The tensor-parallel
size must divide the attention heads, and KV heads and TP must divide one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.profiles import GpuType, Profile
from ..errors import ConfigError
from .facts import ModelFacts

__all__ = ["Allocation", "MemoryNeed", "choose_allocation", "memory_need", "tp_fits"]

RULE_OF_THUMB = 1.25
ENGINE_SHARE = 0.9  # vLLM's default --gpu-memory-utilization
OVERHEAD_GB = 3.0  # CUDA context, activations, graphs: per GPU, roughly
DEFAULT_CONTEXT = 32768


@dataclass(frozen=True)
class MemoryNeed:
    weights_gb: float
    kv_gb: float
    overhead_gb: float
    context: int
    rule_of_thumb_gb: float

    @property
    def detailed_gb(self) -> float:
        return (self.weights_gb + self.overhead_gb + self.kv_gb) / ENGINE_SHARE

    @property
    def total_gb(self) -> float:
        return max(self.rule_of_thumb_gb, self.detailed_gb)

    def explain(self) -> str:
        return (f"≈ {self.total_gb:.0f} GB: the larger of 1.25 × the weights ({self.rule_of_thumb_gb:.1f} GB) and "
                f"(weights {self.weights_gb:.1f} + overhead {self.overhead_gb:.0f} + KV cache for "
                f"{self.context:,} tokens {self.kv_gb:.1f}) / {ENGINE_SHARE} ({self.detailed_gb:.1f} GB)")


def kv_bytes_per_token(facts: ModelFacts, dtype_bytes: int = 2) -> int:
    if facts.is_mla:
        return facts.layers * (facts.kv_lora_rank + facts.qk_rope_head_dim) * dtype_bytes
    return 2 * facts.layers * (facts.kv_heads or 1) * facts.head_dim * dtype_bytes


def memory_need(facts: ModelFacts, context: int | None = None, gpus: int = 1) -> MemoryNeed:
    context = context or min(facts.max_context, DEFAULT_CONTEXT)
    return MemoryNeed(
        weights_gb=facts.weight_gb,
        kv_gb=kv_bytes_per_token(facts) * context / 1e9,
        overhead_gb=OVERHEAD_GB * gpus,
        context=context,
        rule_of_thumb_gb=RULE_OF_THUMB * facts.weight_gb,
    )


def tp_fits(facts: ModelFacts, tp: int) -> bool:
    heads, kv = facts.heads, facts.kv_heads
    if not heads:
        return True  # nothing known: let the engine decide
    if heads % tp:
        return False
    return facts.is_mla or not kv or kv % tp == 0 or tp % kv == 0


@dataclass(frozen=True)
class Allocation:
    gpu: GpuType
    count: int
    need: MemoryNeed

    @property
    def total_gb(self) -> float:
        return self.gpu.memory_gb * self.count

    def describe(self) -> str:
        return f"{self.count} × {self.gpu.name} ({self.total_gb:g} GB)"


def _candidates(profile: Profile, facts: ModelFacts, context: int | None) -> list[Allocation]:
    options = []
    for gpu in profile.gpu_types.values():
        for count in gpu.counts:
            if tp_fits(facts, count):
                options.append(Allocation(gpu, count, memory_need(facts, context, count)))
    return sorted(options, key=lambda a: (a.total_gb, a.count))


def _fits(allocation: Allocation) -> bool:
    return allocation.total_gb >= allocation.need.total_gb


def choose_allocation(profile: Profile, facts: ModelFacts, *, gpu_type: str | None = None,
                      gpus: int | None = None, context: int | None = None) -> tuple[Allocation, list[str]]:
    """The smallest allocation that holds the model (within the user's choices), and why."""
    if gpu_type is not None:
        profile.gpu_type(gpu_type)  # a clear error for a type the cluster does not offer
    every = _candidates(profile, facts, context)
    fitting = [a for a in every if _fits(a)]
    chosen_type = [a for a in fitting if gpu_type in (None, a.gpu.name)]
    wanted = [a for a in chosen_type if gpus in (None, a.count)]
    name = facts.name
    if gpus is not None and not tp_fits(facts, gpus):
        counts = sorted({a.count for a in every if gpu_type in (None, a.gpu.name)})
        raise ConfigError(
            f"{name} has {facts.heads} attention heads and {facts.kv_heads} KV heads: {gpus} GPUs cannot split "
            "them evenly (the tensor-parallel size must divide the heads).",
            f"Use --gpus {_or(counts)}." if counts else
            "No GPU count this profile offers splits them evenly: check num_attention_heads in its config.json.",
        )
    if wanted:
        best = wanted[0]
        reasons = [f"{name} needs {best.need.explain()}.",
                   f"{best.describe()} is the smallest allocation that holds it"
                   + (f" among your choices (--gpu-type {gpu_type})" if gpu_type and gpus is None else "")
                   + (f" among your choices (--gpus {gpus})" if gpus is not None else "") + "."]
        others = [a.describe() for a in fitting if a != best][:2]
        if others:
            reasons.append(f"Also fits: {', '.join(others)}.")
        return best, reasons
    need = memory_need(facts, context).total_gb
    if not fitting:
        biggest = max(every, key=lambda a: a.total_gb) if every else None
        raise ConfigError(
            f"{name} needs ≈ {need:.0f} GB of GPU memory; the largest allocation profile {profile.name!r} offers "
            f"({biggest.describe() if biggest else 'none'}) is too small.",
            "Use a quantized variant of the model, or a shorter context (-- --max-model-len N).",
        )
    asked = f"{gpus if gpus is not None else ''} × {gpu_type or 'any GPU type'}".strip()
    if gpus is not None and gpu_type is not None:
        gpu = profile.gpu_type(gpu_type)
        asked = f"{gpus} × {gpu.name} {gpu.memory_gb * gpus:g} GB"
    suggestions = []
    same_type = [a for a in chosen_type]
    if same_type and gpus is not None:
        suggestions.append(f"--gpus {same_type[0].count}")
    other_types = [a for a in fitting if a.gpu.name != gpu_type and (gpus is None or a.count == gpus)]
    if other_types:
        suggestions.append(f"--gpu-type {other_types[0].gpu.name}")
    if not suggestions:
        suggestions.append(f"--gpus {fitting[0].count} --gpu-type {fitting[0].gpu.name}")
    raise ConfigError(
        f"{name} needs ≈ {need:.0f} GB; {asked} is too small.",
        f"Use {' or '.join(suggestions)}.",
    )


def _or(values: list[int]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]
