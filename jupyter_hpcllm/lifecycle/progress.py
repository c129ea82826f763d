"""The stages of a launch, as a face renders them."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "ProgressCallback", "Stage"]


class Stage(enum.Enum):
    SUBMITTED = "submitted"
    REUSED = "reused"
    PENDING = "pending"
    RUNNING = "running"
    LOADING = "loading"
    READY = "ready"


@dataclass(frozen=True)
class Progress:
    """One step of a launch or an attach."""

    stage: Stage
    job_id: str
    message: str
    elapsed: float
    node: str | None = None
    reason: str | None = None
    expected_start: str | None = None
    shards: tuple[int, int] | None = None


ProgressCallback = Callable[[Progress], None]
