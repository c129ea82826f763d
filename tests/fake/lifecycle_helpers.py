"""What the in-memory lifecycle tests share besides fixtures: a fake clock and small readers."""

from __future__ import annotations

import threading
import time
from typing import Any

from jupyter_hpcllm.edge.fake import FakeTransport
from jupyter_hpcllm.lifecycle import Progress, Stage

JOIN = 10.0  # seconds any thread or event is waited for, at most


class Clock:
    """Fake time: moves only when the code under test sleeps."""

    def __init__(self, max_sleeps: int | None = None) -> None:
        self.now = 1000.0
        self.sleeps = 0
        self.max_sleeps = max_sleeps  # a loop that should end but does not fails instead of hanging

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        assert self.max_sleeps is None or self.sleeps <= self.max_sleeps, "a polling loop did not end"
        self.now += seconds
        # A millisecond of real time per sleep: a launch that waits in the queue (for hours of this clock,
        # up to its default timeout) must not end before the test has looked at it.
        time.sleep(0.001)


def stages(history: list[Progress]) -> list[Stage]:
    return [p.stage for p in history]


def sent(fake: FakeTransport, prefix: str) -> list[str]:
    return [c for c in fake.commands if c.startswith(prefix)]


def reached(stage: Stage) -> tuple[threading.Event, Any]:
    """An event set once a progress of `stage` is reported, and the callback that sets it."""
    event = threading.Event()
    return event, lambda p: event.set() if p.stage is stage else None
