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

__all__ = ["Allocation", "MemoryNeed", "choose_allocation", "memory_need", "replica_advice", "tp_fits"]

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
    draft_gb: float = 0.0  # a speculative-decoding draft's weights and cache, beside the model's

    @property
    def detailed_gb(self) -> float:
        return (self.weights_gb + self.draft_gb + self.overhead_gb + self.kv_gb) / ENGINE_SHARE

    @property
    def total_gb(self) -> float:
        return max(self.rule_of_thumb_gb, self.detailed_gb)

    def explain(self) -> str:
        draft = f" + draft {self.draft_gb:.1f}" if self.draft_gb else ""
        return (f"≈ {self.total_gb:.0f} GB: the larger of 1.25 × the weights{' and draft' if draft else ''} "
                f"({self.rule_of_thumb_gb:.1f} GB) and (weights {self.weights_gb:.1f}{draft} + overhead "
                f"{self.overhead_gb:.0f} + KV cache for {self.context:,} tokens {self.kv_gb:.1f}) / {ENGINE_SHARE} "
                f"({self.detailed_gb:.1f} GB)")


def kv_bytes_per_token(facts: ModelFacts, dtype_bytes: int = 2) -> int:
    if facts.is_mla:
        return facts.layers * (facts.kv_lora_rank + facts.qk_rope_head_dim) * dtype_bytes
    return 2 * facts.layers * (facts.kv_heads or 1) * facts.head_dim * dtype_bytes


def memory_need(facts: ModelFacts, context: int | None = None, gpus: int = 1, draft_gb: float = 0.0) -> MemoryNeed:
    """What one copy of the model needs on `gpus` GPUs (with a speculative draft of `draft_gb`)."""
    context = context or min(facts.max_context, DEFAULT_CONTEXT)
    return MemoryNeed(
        weights_gb=facts.weight_gb,
        kv_gb=kv_bytes_per_token(facts) * context / 1e9,
        overhead_gb=OVERHEAD_GB * gpus,
        context=context,
        rule_of_thumb_gb=RULE_OF_THUMB * (facts.weight_gb + draft_gb),
        draft_gb=draft_gb,
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
    """`count` GPUs of one type, holding `replicas` copies of the model on count / replicas GPUs each."""

    gpu: GpuType
    count: int
    need: MemoryNeed  # of one replica
    replicas: int = 1

    @property
    def tensor_parallel(self) -> int:
        return self.count // self.replicas

    @property
    def total_gb(self) -> float:
        return self.gpu.memory_gb * self.count

    @property
    def replica_gb(self) -> float:
        return self.gpu.memory_gb * self.tensor_parallel

    def describe(self) -> str:
        copies = f", {self.replicas} replicas of {self.tensor_parallel}" if self.replicas > 1 else ""
        return f"{self.count} × {self.gpu.name} ({self.total_gb:g} GB{copies})"


def _candidates(profile: Profile, facts: ModelFacts, context: int | None, replicas: int = 1,
                draft_gb: float = 0.0) -> list[Allocation]:
    options = []
    for gpu in profile.gpu_types.values():
        for count in gpu.counts:
            if count % replicas == 0 and tp_fits(facts, count // replicas):
                options.append(Allocation(gpu, count, memory_need(facts, context, count // replicas, draft_gb),
                                          replicas))
    return sorted(options, key=lambda a: (a.total_gb, a.count))


def _fits(allocation: Allocation) -> bool:
    return allocation.replica_gb >= allocation.need.total_gb


def choose_allocation(profile: Profile, facts: ModelFacts, *, gpu_type: str | None = None,
                      gpus: int | None = None, context: int | None = None, replicas: int = 1,
                      draft_gb: float = 0.0) -> tuple[Allocation, list[str]]:
    """The smallest allocation that holds `replicas` copies of the model (within the user's choices), and
    why."""
    if gpu_type is not None:
        profile.gpu_type(gpu_type)  # a clear error for a type the cluster does not offer
    if gpus is not None and gpus % replicas:
        raise ConfigError(f"{gpus} GPUs cannot be shared evenly by {replicas} replicas.",
                          f"Use --gpus {replicas * max(1, gpus // replicas)} (a multiple of --replicas).")
    every = _candidates(profile, facts, context, replicas, draft_gb)
    if not every and replicas > 1:
        most = max((g.max_count for g in profile.gpu_types.values()), default=0)
        raise ConfigError(f"{replicas} replicas of {facts.name} need a GPU count that is a multiple of {replicas} "
                          f"and splits its heads evenly; profile {profile.name!r} allows at most {most} GPUs per job.",
                          "Use fewer --replicas.")
    fitting = [a for a in every if _fits(a)]
    chosen_type = [a for a in fitting if gpu_type in (None, a.gpu.name)]
    wanted = [a for a in chosen_type if gpus in (None, a.count)]
    name = facts.name
    if gpus is not None and not tp_fits(facts, gpus // replicas):
        counts = sorted({a.count for a in every if gpu_type in (None, a.gpu.name)})
        per = f" per replica ({gpus} over {replicas} replicas)" if replicas > 1 else ""
        raise ConfigError(
            f"{name} has {facts.heads} attention heads and {facts.kv_heads} KV heads: {gpus // replicas} GPUs{per} "
            "cannot split them evenly (the tensor-parallel size must divide the heads).",
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
        advice = replica_advice(best, facts, context)
        return best, reasons + ([advice] if advice else [])
    need = memory_need(facts, context, draft_gb=draft_gb).total_gb
    if not fitting:
        biggest = max(every, key=lambda a: a.total_gb) if every else None
        raise ConfigError(
            f"{name} needs ≈ {need:.0f} GB of GPU memory{' per replica' if replicas > 1 else ''}; the largest "
            f"allocation profile {profile.name!r} offers ({biggest.describe() if biggest else 'none'}) is too small.",
            ("Use fewer --replicas, a " if replicas > 1 else "Use a ")
            + "quantized variant of the model, or a shorter context (-- --max-model-len N).",
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


def _kv_room(facts: ModelFacts, gpu_gb: float, gpus: int, draft_gb: float) -> tuple[float, float]:
    """(GB, tokens) left for the KV cache by one copy of the model on `gpus` GPUs of `gpu_gb` each."""
    room = max(0.0, gpu_gb * gpus * ENGINE_SHARE - facts.weight_gb - draft_gb - OVERHEAD_GB * gpus)
    per_token = kv_bytes_per_token(facts)
    return room, (room * 1e9 / per_token if per_token else 0.0)


def replica_advice(allocation: Allocation, facts: ModelFacts, context: int | None = None) -> str:
    """When replicas beat a larger tensor-parallel size (or the other way round), in this allocation's
    numbers; '' when there is no choice to explain."""
    memory, draft = allocation.gpu.memory_gb, allocation.need.draft_gb
    whole = allocation.count
    if allocation.replicas > 1:
        per_gb, per_tokens = _kv_room(facts, memory, allocation.tensor_parallel, draft)
        one_gb, one_tokens = _kv_room(facts, memory, whole, draft)
        gpus = f"{allocation.tensor_parallel} GPU" + ("s" if allocation.tensor_parallel > 1 else "")
        return (f"{allocation.replicas} replicas of {gpus}: each holds the weights "
                f"({facts.weight_gb:.0f} GB) and has ≈ {per_gb:.0f} GB for its KV cache (≈ {per_tokens:,.0f} tokens), "
                f"with a scheduler of its own; one server on {whole} GPUs would have ≈ {one_gb:.0f} GB "
                f"(≈ {one_tokens:,.0f} tokens) in one scheduler. Replicas serve more people at once when the weights "
                "are a small part of a replica's memory; a larger tensor-parallel size is better for long contexts "
                "and the latency of single requests.")
    half = whole // 2
    if whole >= 2 and whole % 2 == 0 and tp_fits(facts, half):
        need = memory_need(facts, context, half, draft).total_gb
        if memory * half >= need:
            per_gb, _ = _kv_room(facts, memory, half, draft)
            return (f"Serving many people at once? The model also fits on {half} GPUs: --replicas 2 would run two "
                    f"copies (≈ {per_gb:.0f} GB of KV cache each) instead of one on {whole}.")
    return ""


def _or(values: list[int]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]
