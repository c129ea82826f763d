"""How many requests a map keeps in flight: a pure step from what the engine says (its /metrics).

vLLM and SGLang reach their throughput only with many requests running at once, up to their own limit
(vLLM's --max-num-seqs, SGLang's --max-running-requests, or the KV cache, whichever is less); past it,
requests wait in the engine's queue, which costs memory on both ends and gains nothing. So: double while
the engine runs everything we send and nothing waits; once requests wait, hold what it runs plus a small
queue (an eighth, at least 2), so that a finished request is replaced without a round trip's gap.
"""

from __future__ import annotations

__all__ = ["FIRST_LIMIT", "next_limit"]

FIRST_LIMIT = 16


def next_limit(limit: int, *, running: float | None, waiting: float | None, in_flight: int, ceiling: int) -> int:
    """The next in-flight limit, from the current one, the engine's running and waiting requests (None: it
    does not say) and how many we have in flight."""
    if running is None or waiting is None:
        return limit
    if waiting > 0:
        held = int(running)
        return max(1, min(ceiling, held + max(2, held // 8)))
    # Ours all run (but the few between the client and the engine at the moment of reading): offer more.
    if in_flight >= limit and running >= in_flight - max(1, in_flight // 8):
        return min(ceiling, limit * 2)
    return limit
