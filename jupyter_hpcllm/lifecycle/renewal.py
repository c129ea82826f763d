"""A renewal in the background, followed like a launch: what the lab sidebar's Renew starts.

``Cluster.renew`` runs in a thread of its own over a Server that holds no lease; the face reads the
progress, and can give it up: before the successor serves, its job is cancelled and the old job keeps
serving (the holders waiting for it give up too); once it serves, the renewal finishes (the holders are
already moving, and the old job stops after the grace).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import LaunchCancelled
from .progress import Progress, Stage

if TYPE_CHECKING:
    from .cluster import Cluster
    from .server import Server

__all__ = ["Renewal"]


class Renewal:
    """The renewal of one job: `start()`, then `progress`, `job_id` (the successor once submitted), `done()`,
    `exception()`, `cancelled()` and `stop()` from any thread."""

    def __init__(self, cluster: Cluster, job_id: str) -> None:
        self.cluster = cluster
        self.old = job_id
        self._future: Future[str] = Future()
        self._progress: Progress | None = None
        self._server: Server | None = None
        self._stopped = threading.Event()
        self._given_up: set[str | None] = set()
        self._lock = threading.Lock()

    def start(self) -> Renewal:
        threading.Thread(target=self._run, name=f"hpcllm-renewal-{self.old}", daemon=True).start()
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
        return self._stopped.is_set() and self.exception() is not None

    def stop(self) -> None:
        """Give the renewal up, unless its successor serves already (then it finishes)."""
        self._stopped.set()
        with self._lock:
            progress, server = self._progress, self._server
        if server is not None:
            server.close()  # a successor answering right now is refused (renew sees the server closed)
        if progress is None or progress.stage is not Stage.READY:
            self._give_up(progress.job_id if progress else None)

    def _report(self, progress: Progress) -> None:
        if progress.stage is Stage.READY:  # (renew's message names this process's own forward)
            progress = replace(progress, message=f"Job {progress.job_id} took over from job {self.old} with the "
                               f"same key; the notebooks holding job {self.old} move to it, then job {self.old} stops.")
        with self._lock:
            self._progress = progress
        if self._stopped.is_set() and progress.stage is not Stage.READY:
            self._give_up(progress.job_id)  # stopped before this successor was submitted

    def _give_up(self, successor: str | None) -> None:
        with self._lock:  # once per successor (None: the record only)
            if successor in self._given_up:
                return
            self._given_up.add(successor)
        self.cluster.give_up_renewal(self.old, successor)

    def _run(self) -> None:
        server: Server | None = None
        try:
            server = self.cluster.attach(self.old, timeout=60, hold=False)
            with self._lock:
                self._server = server
            if self._stopped.is_set():
                raise LaunchCancelled(f"The renewal of job {self.old} was stopped.")
            self.cluster.renew(server, on_progress=self._report)
            self._future.set_result(server.job_id)
        except BaseException as error:  # the old job keeps serving: the face says why
            self._future.set_exception(error)
        finally:
            if server is not None:
                server.close()
