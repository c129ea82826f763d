"""A renewal that can be given up from another thread, and the background renewal a face follows like a
launch (what the lab sidebar's Renew starts).

A renewal has one commit point: once its successor answers with the job's key, the renewer commits (and
marks it on the login node: the job's other holders move only then). Before it, `stop()` gives the renewal
up: the renewer's waits end at once, and it cancels the successor it submitted and drops its claim, nobody
having moved. After it, stopping changes nothing: the holders are moving, and the old job stops after the
grace. Only the renewer that owns the claim ever cancels or drops anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import LaunchCancelled
from .progress import Progress, Stage

if TYPE_CHECKING:
    from .cluster import Cluster
    from .server import Server

__all__ = ["Renewal", "RenewalControl"]


class RenewalControl:
    """Stop, or commit: whichever comes first wins, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.committed = False

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> bool:
        """Give the renewal up; False if it had committed (then it finishes)."""
        with self._lock:
            if self.committed:
                return False
            self._stopped.set()
            return True

    def commit(self) -> bool:
        """The successor takes over; False if the renewal was stopped first."""
        with self._lock:
            if self._stopped.is_set():
                return False
            self.committed = True
            return True

    def pausing(self, sleep: Callable[[float], None], *, real: bool) -> Callable[[float], None]:
        """A sleep for the renewal's waits that ends them, with LaunchCancelled, once stopped (`real`: wake at
        the stop itself; else call the injected `sleep`, e.g. a test's, and look after it)."""

        def pause(seconds: float) -> None:
            if not self.stopped:
                if real:
                    self._stopped.wait(seconds)
                else:
                    sleep(seconds)
            if self.stopped:
                raise LaunchCancelled("The renewal was given up.")

        return pause


class Renewal:
    """The renewal of one job in a thread of its own: `start()`, then `progress`, `job_id` (the successor
    once submitted), `done()`, `exception()`, `cancelled()` and `stop()` from any thread."""

    def __init__(self, cluster: Cluster, job_id: str) -> None:
        self.cluster = cluster
        self.old = job_id
        self.control = RenewalControl()
        self._future: Future[str] = Future()
        self._progress: Progress | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"hpcllm-renewal-{job_id}", daemon=True)

    def start(self) -> Renewal:
        self._thread.start()
        return self

    @property
    def progress(self) -> Progress | None:
        with self._lock:
            return self._progress

    @property
    def job_id(self) -> str:
        """The successor once submitted (every step of a renewal is about it), the old job before."""
        progress = self.progress
        return progress.job_id if progress is not None else self.old

    def done(self) -> bool:
        return self._future.done()

    def exception(self) -> BaseException | None:
        return self._future.exception() if self._future.done() else None

    def cancelled(self) -> bool:
        return self.control.stopped and self.exception() is not None

    def stop(self, timeout: float | None = None) -> None:
        """Give the renewal up unless it committed; with `timeout`, wait that long for its thread to clean
        up (a Jupyter server stopping: a successor must not be left to nobody)."""
        self.control.stop()
        if timeout is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _report(self, progress: Progress) -> None:
        if progress.stage is Stage.READY:  # (renew's message names this process's own forward)
            progress = replace(progress, message=f"Job {progress.job_id} took over from job {self.old} with the "
                               f"same key; the notebooks holding job {self.old} move to it, then job {self.old} stops.")
        with self._lock:
            self._progress = progress

    def _run(self) -> None:
        server: Server | None = None
        try:
            server = self.cluster.attach(self.old, timeout=60, hold=False)
            if self.control.stopped:
                raise LaunchCancelled(f"The renewal of job {self.old} was stopped.")
            self.cluster.renew(server, on_progress=self._report, control=self.control)
            self._future.set_result(server.job_id)
        except BaseException as error:  # the old job keeps serving: the face says why
            self._future.set_exception(error)
        finally:
            if server is not None:
                server.close()
