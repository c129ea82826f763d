"""An engine's live numbers, from its Prometheus `/metrics` text, under vLLM's and SGLang's names: requests
running and waiting, generation tokens per second, KV-cache use. `Server.metrics()` reads the text through
the job's relay (`/hpcllm/metrics`, with the key); reading it does not count as using the server."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["EngineMetrics", "parse_metrics", "with_rate"]

# Each figure, and the metric names the engines give it (newest first).
_NAMES = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "kv_cache": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "generation_tokens": ("vllm:generation_tokens_total",),  # a counter: the rate comes from two readings
    "tokens_per_second": ("sglang:gen_throughput",),  # a gauge
}
_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


@dataclass(frozen=True)
class EngineMetrics:
    """What the engine says now (None: it does not say). `kv_cache` is a fraction (0.34 = 34 %)."""

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    tokens_per_second: float | None = None
    generation_tokens: float | None = None  # the counter behind vLLM's tokens per second
    read_at: float = 0.0  # time.monotonic() of the reading

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "read_at"}


def parse_metrics(text: str, read_at: float = 0.0) -> EngineMetrics:
    """The figures in Prometheus text. Several series of one name (per model, per data-parallel rank) add up,
    but KV-cache use, a share of each rank's cache, is the largest of them."""
    values: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            values.setdefault(match.group(1), []).append(value)
    found: dict[str, float] = {}
    for figure, names in _NAMES.items():
        name = next((n for n in names if n in values), None)
        if name is not None:
            found[figure] = max(values[name]) if figure == "kv_cache" else sum(values[name])
    return EngineMetrics(**found, read_at=read_at)


def with_rate(current: EngineMetrics, previous: EngineMetrics | None) -> EngineMetrics:
    """vLLM counts generated tokens: its tokens per second is the growth since the previous reading."""
    if current.tokens_per_second is not None or previous is None:
        return current
    if current.generation_tokens is None or previous.generation_tokens is None:
        return current
    seconds = current.read_at - previous.read_at
    grown = current.generation_tokens - previous.generation_tokens
    if seconds <= 0 or grown < 0:  # no time between, or the engine restarted (the counter began again)
        return current
    return replace(current, tokens_per_second=grown / seconds)
