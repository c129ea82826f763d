"""The panel's work off the kernel's main thread: SSH and Slurm calls never block the notebook.

- ``Report``: where every error of the panel lands, as one readable paragraph (never lost in a
  callback's log).
- ``run_in_background``: a button's action in a thread, its button disabled until it ends.
- ``Debounced``: run the latest request once things are quiet (re-planning as the user types).
- ``Poller``: call something now and then while a condition holds, backing off while nothing changes.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import HpcllmError

__all__ = ["Debounced", "Poller", "Report", "explain", "run_in_background"]

_log = logging.getLogger(__name__)


def explain(error: BaseException) -> str:
    """One paragraph: ours say what to do; anything else names itself (and is logged with its traceback)."""
    if isinstance(error, HpcllmError):
        return str(error)
    _log.error("jupyter-hpcllm panel: unexpected error", exc_info=error)
    return f"Unexpected error: {type(error).__name__}: {error}".rstrip(": ")


class Report:
    """Shows a message, or an error, in one HTML widget."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.text = ""  # what is shown, as plain text (for code cells, tests and logs)

    def say(self, text: str) -> None:
        self.text = text
        self.widget.value = f"<div class='hpcllm-message'>{_code(html.escape(text))}</div>" if text else ""

    def error(self, error: BaseException | str) -> None:
        text = self.text = error if isinstance(error, str) else explain(error)
        self.widget.value = (f"<div class='hpcllm-error' style='color:#b00020;white-space:normal'>"
                             f"{_code(html.escape(text))}</div>")

    def clear(self) -> None:
        self.text = self.widget.value = ""


def _code(text: str) -> str:
    """`name` in a message (commands, variables) as code, the way the magics' Markdown shows it."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", text)



def run_in_background(action: Callable[[], object], report: Report, buttons: Iterable[Any] = (),
                      name: str = "hpcllm-panel") -> threading.Thread:
    """Run `action` in a thread with `buttons` disabled until it ends; what it raises goes to `report`."""
    held = [button for button in buttons if not button.disabled]
    for button in held:
        button.disabled = True

    def run() -> None:
        try:
            action()
        except BaseException as error:
            report.error(error)
        finally:
            for button in held:
                button.disabled = False

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class Debounced:
    """`trigger()` runs `work` in a thread once `delay` seconds pass with no further trigger; one run at a
    time, and a trigger during a run makes one more run after it (so the last change is always seen)."""

    def __init__(self, work: Callable[[], None], delay: float, report: Report) -> None:
        self.work, self.delay, self.report = work, delay, report
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._generation = 0  # of the timer that may run: an older one that fired late does nothing
        self._running = False
        self._again = False
        self._closed = False
        self.idle = threading.Event()  # set while nothing is scheduled or running (tests wait on it)
        self.idle.set()

    def trigger(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.idle.clear()
            if self._running:
                self._again = True
                return
            self._schedule()

    def _schedule(self) -> None:
        """(Under the lock.) A new timer; the one before it, if it has not run, never will."""
        if self._timer is not None:
            self._timer.cancel()
        self._generation += 1
        self._timer = threading.Timer(self.delay, self._run, args=(self._generation,))
        self._timer.daemon = True
        self._timer.start()

    def _run(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._closed or self._running:
                return  # superseded (a trigger came as it fired), closed, or a run is on: that one reruns
            self._timer, self._running, self._again = None, True, False
        try:
            self.work()
        except BaseException as error:
            self.report.error(error)
        finally:
            with self._lock:
                self._running = False
                if self._again and not self._closed:
                    self._again = False
                    self._schedule()
                elif self._timer is None:
                    self.idle.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._running:
                self.idle.set()


class Poller:
    """Calls `poll()` (which says whether anything changed) every `interval` seconds while `active()`
    holds, doubling the wait up to `longest` while nothing changes; `wake()` polls at once and resets the
    wait. While not active it stands by, checking again every `interval`. `close()` ends it."""

    def __init__(self, poll: Callable[[], bool], active: Callable[[], bool], report: Report, *,
                 interval: float = 10.0, longest: float = 120.0, name: str = "hpcllm-panel-poll") -> None:
        self.poll, self.active, self.report = poll, active, report
        self.interval, self.longest = interval, longest
        self.wait = interval
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.polls = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def wake(self) -> None:
        self.wait = self.interval
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _run(self) -> None:
        while not self._closed.is_set():
            woken = self._wake.wait(self.wait)
            self._wake.clear()
            if self._closed.is_set():
                return
            if not (woken or self.active()):
                self.wait = self.interval  # standing by: look again soon, poll nothing
                continue
            try:
                self.polls += 1
                changed = self.poll()
            except BaseException as error:
                self.report.error(error)
                changed = False
            self.wait = self.interval if changed else min(self.longest, self.wait * 2)
