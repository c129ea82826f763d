"""Showing `up`'s stages: one live, updating display in a notebook; plain lines in a terminal."""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from ..lifecycle import EngineMetrics, Progress, ServerInfo, Stage
from ..views import metrics_rows, status_rows

__all__ = ["ProgressView", "StatusView"]

_LABELS = {Stage.SUBMITTED: "Submitted", Stage.REUSED: "Reusing", Stage.PENDING: "Pending",
           Stage.RUNNING: "Running", Stage.LOADING: "Loading", Stage.READY: "Ready"}


class ProgressView:
    """Call it with each Progress. `rich`: an HTML display updated in place (display_id), whose elapsed
    time keeps ticking between stages (a job can wait in the queue for an hour without a new stage)."""

    def __init__(self, rich: bool, title: str, *, tick: float = 1.0, display: Any = None) -> None:
        self.rich = rich
        self.title = title
        self.last: Progress | None = None
        self._handle: Any = None
        self._display = display
        self._tick = tick
        self._seen_at = 0.0
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        self._seen_at = time.monotonic()
        if not self.rich:
            print(f"[{progress.elapsed:6.1f}s] {progress.message}", flush=True)
            return
        self._show(progress)
        if progress.stage is Stage.READY:
            self.stop()
        elif self._ticker is None:
            self._ticker = threading.Thread(target=self._run_ticker, name="hpcllm-progress", daemon=True)
            self._ticker.start()

    def _show(self, progress: Progress) -> None:
        from IPython.display import display

        shown = _Shown(self.html(progress), f"{self.title}: {progress.message} ({progress.elapsed:.0f} s)")
        with self._lock:
            if self._handle is None:
                self._handle = (self._display or display)(shown, display_id=True)
            else:
                self._handle.update(shown)

    def refresh(self) -> None:
        """Show the latest stage again with the time elapsed since it was reported."""
        last = self.last
        if last is not None:
            self._show(replace(last, elapsed=last.elapsed + time.monotonic() - self._seen_at))

    def _run_ticker(self) -> None:
        while not self._stopped.wait(self._tick):
            self.refresh()

    def stop(self) -> None:
        """Stop the ticking (on ready, failure or interrupt)."""
        self._stopped.set()

    def error(self, message: str) -> None:
        self.stop()
        if not self.rich or self._handle is None:
            print(message, file=sys.stderr)
            return
        self._handle.update(_Shown(f"<div style='color:#b00'><b>{html.escape(self.title)}</b>: "
                                   f"{html.escape(message)}</div>", f"{self.title}: {message}"))

    def html(self, progress: Progress) -> str:
        rows = [("stage", _LABELS[progress.stage]), ("job", progress.job_id)]
        if progress.reason:
            rows.append(("waiting for", progress.reason))
        if progress.expected_start:
            rows.append(("expected start", progress.expected_start.replace("T", " ")))
        if progress.node:
            rows.append(("node", progress.node))
        rows.append(("elapsed", f"{progress.elapsed:.0f} s"))
        bar = ""
        if progress.shards:
            done, total = progress.shards
            bar = (f"<div>weights {done}/{total} <progress value='{done}' max='{total}' "
                   "style='width:12em'></progress></div>")
        cells = "".join(f"<tr><td style='text-align:left;padding-right:1em'>{html.escape(k)}</td>"
                        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return (f"<div><b>{html.escape(self.title)}</b> — {html.escape(progress.message)}"
                f"<table>{cells}</table>{bar}</div>")


class _Shown:
    """HTML for a notebook, with a plain-text form (what nbconvert, a log or a terminal front end shows)."""

    def __init__(self, data: str, text: str) -> None:
        self.data = data
        self.text = text

    def _repr_html_(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return self.text


class StatusView:
    """`%hpcllm status`: a table in a notebook, lines in a terminal; the engine's live numbers when known."""

    def __init__(self, info: ServerInfo, metrics: EngineMetrics | None = None) -> None:
        self.info = info
        self.metrics = metrics

    def rows(self) -> list[tuple[str, str]]:
        return status_rows(self.info) + (metrics_rows(self.metrics) if self.metrics is not None else [])

    def __repr__(self) -> str:
        return "\n".join(f"{k:15} {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><td style='text-align:left'>{html.escape(k)}</td>"
                        f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f"<table>{cells}</table>"
