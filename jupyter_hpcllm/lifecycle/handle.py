"""A launch in progress: ``Cluster.launch`` returns a ``LaunchHandle`` at once and works in a thread.

The handle keeps the latest progress and its history, calls registered callbacks, can be cancelled
from any thread (the job it submitted is cancelled too, so no GPU is held for nobody) and gives the
``Server`` (or the error) like a future: ``result(timeout)``, ``done()``, ``exception()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from ..config.options import LaunchOptions
from ..errors import HpcllmError, JobFailed, LaunchCancelled, TransportError
from .progress import Progress, ProgressCallback, Stage
from .walltime import default_wait

if TYPE_CHECKING:
    from ..planning.plan import LaunchPlan
    from .cluster import Cluster
    from .server import Server

__all__ = ["LaunchHandle"]

_log = logging.getLogger(__name__)
_POLL = 0.25
_STUCK = 2.0  # seconds a stopped launch may take to reach its own scancel before stop() sends one


class LaunchHandle:
    """One launch: plan → reuse a twin or submit → wait until the API answers."""

    def __init__(self, cluster: Cluster, options: LaunchOptions, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None) -> None:
        self.cluster = cluster
        self.options = options
        self.plan: LaunchPlan | None = None
        self.job_id: str | None = None
        self.submitted = False  # True once sbatch returned: then cancelling cancels the job
        self.freed: bool | None = None  # after a cancel or failure: whether scancel of our job went through
        self._clock = clock
        self._pause = sleep  # an injected sleep (tests); None: wait on the cancel event itself
        self._future: Future[Server] = Future()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._history: list[Progress] = []
        self._callbacks: list[ProgressCallback] = []
        self._done_callbacks: list[Callable[[LaunchHandle], None]] = []
        self._thread = threading.Thread(target=self._run, name=f"hpcllm-launch-{options.model}", daemon=True)

    def __repr__(self) -> str:
        where = f"job {self.job_id}" if self.job_id else "not submitted"
        state = "done" if self.done() else (self.progress.stage.value if self.progress else "planning")
        return f"<LaunchHandle {self.options.model}: {where}, {state}>"

    def start(self) -> LaunchHandle:
        self._thread.start()
        return self

    # -- what a face reads

    @property
    def progress(self) -> Progress | None:
        """The latest progress (None before the first)."""
        with self._lock:
            return self._history[-1] if self._history else None

    @property
    def history(self) -> list[Progress]:
        with self._lock:
            return list(self._history)

    def add_callback(self, callback: ProgressCallback) -> None:
        """Call `callback` with every progress, the ones so far first (from the launch's thread later)."""
        with self._lock:
            self._callbacks.append(callback)
            past = list(self._history)
        for progress in past:
            _call(callback, progress)

    def add_done_callback(self, callback: Callable[[LaunchHandle], None]) -> None:
        """Call `callback(handle)` once the launch has ended (at once if it has)."""
        with self._lock:
            if not self._future.done():
                self._done_callbacks.append(callback)
                return
        _call(callback, self)

    # -- future-like

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Server:
        """The ready `Server`; raises what ended the launch, or TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Short waits, so a Ctrl-C (or IPython's interrupt) reaches a main thread waiting here at once.
            remaining = _POLL if deadline is None else min(_POLL, max(0.0, deadline - time.monotonic()))
            try:
                return self._future.result(remaining)
            except FutureTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"The launch of {self.options.model} is still in progress.") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except FutureTimeout:
            raise TimeoutError(f"The launch of {self.options.model} is still in progress.") from None

    def cancel(self) -> bool:
        """Stop the launch from any thread; the job it submitted is cancelled. False if it had ended."""
        with self._lock:
            if self._future.done():
                return False
            self._cancel.set()
            return True

    def cancelled(self) -> bool:
        return self._future.done() and isinstance(self._future.exception(), LaunchCancelled)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the launch's thread has finished (its cancel sent); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancel and wait until the job it submitted is cancelled, through further Ctrl-Cs (bounded).
        If it had just become ready, the job it submitted is stopped all the same: the user interrupted.
        If the launch is stuck on a dead connection, the job is cancelled over a new one and this returns
        while the stuck step waits out its timeout."""
        deadline = time.monotonic() + timeout
        if not self.cancel():
            self._stop_ready_server()
            return
        # The launch's thread sends the scancel as soon as its current step returns; a step stuck on a
        # dead connection would hold the GPUs until it times out, so after a moment scancel from here too,
        # over a new connection (a second scancel of the same job changes nothing).
        stuck_at, rescued = time.monotonic() + _STUCK, False
        while time.monotonic() < deadline:
            try:
                if self.join(min(_POLL, max(0.0, deadline - time.monotonic()))):
                    break
                if not rescued and time.monotonic() >= stuck_at and self.submitted and self.job_id is not None:
                    rescued = True
                    self.freed = self.cluster.cancel_quietly(self.job_id, fresh=True) or bool(self.freed)
                    if self.freed:
                        break  # the GPUs are free; the stuck step ends the launch (cancelled) on its own
            except KeyboardInterrupt:
                continue  # a second Ctrl-C: the cancel is already on its way, finish it
        self._stop_ready_server()

    def _stop_ready_server(self) -> None:
        if self._future.done() and self._future.exception() is None:
            server = self._future.result()
            if self.submitted:
                self.freed = self.cluster.cancel_quietly(server.job_id)
            server.close()

    # -- the launch's thread

    def _report(self, progress: Progress) -> None:
        with self._lock:
            self._history.append(progress)
            callbacks = list(self._callbacks)
        for callback in callbacks:
            _call(callback, progress)

    def _sleep(self, seconds: float) -> None:
        if self._pause is not None and seconds > 0 and not self._cancel.is_set():
            self._pause(seconds)
        if self._cancel.wait(0 if self._pause is not None else seconds):
            raise LaunchCancelled(f"The launch of {self.options.model} was cancelled.")

    def _run(self) -> None:
        started = self._clock()
        try:
            self._sleep(0)
            plan = self.plan = self.cluster.plan(self.options)
            self._sleep(0)
            if self.options.reuse:
                # One job per plan: looking for a twin and submitting happen under one lock on the cluster.
                job_id, reused = self.cluster.submit_or_reuse(plan)
            else:
                job_id, reused = self.cluster.submit(plan), False
            self.job_id = job_id
            if reused:
                self._report(Progress(Stage.REUSED, job_id, f"Reusing job {job_id} with the same model and "
                                      "options.", self._clock() - started))
            else:
                self.submitted = True
                self._report(Progress(Stage.SUBMITTED, job_id, f"Submitted job {job_id} ({plan.spec.gres}, "
                                      f"{plan.spec.time}).", self._clock() - started))
            # No wait without an end: by default, as long as the job's own time limit (at least an hour).
            timeout = self.options.timeout if self.options.timeout is not None else default_wait(plan.spec.time)
            server = self.cluster.wait(self.job_id, report=self._report, timeout=timeout,
                                       submitted=self.submitted, sleep=self._sleep, started=started)
            if self.options.renew:
                server.renew_automatically()
            with self._lock:  # cancel() decides under the same lock: either it sees the result or we see it
                published = not self._cancel.is_set()
                if published:
                    self._future.set_result(server)
            if not published:  # cancelled just as it became ready
                server.close()
                raise LaunchCancelled(f"The launch of {self.options.model} was cancelled.")
        except BaseException as error:
            connection_failed = isinstance(error, TransportError)
            if self._cancel.is_set() and isinstance(error, Exception) and not isinstance(error, LaunchCancelled):
                # Stopped by the user: what the stop caused on the way (the job seen cancelled, a step that
                # broke) is not the story; the cancel is.
                error = LaunchCancelled(f"The launch of {self.options.model} was cancelled.")
            try:
                self._fail(error, fresh=connection_failed)
            finally:
                if not self._future.done():  # whatever failed while failing, the launch ends
                    self._future.set_exception(error)
        self._finished()

    def _fail(self, error: BaseException, *, fresh: bool) -> None:
        if self.submitted and self.job_id is not None:
            # Cancelled, timed out or failed: never leave an allocation behind that nobody will use. If the
            # connection is what failed (`fresh`), the scancel goes over a new one.
            freed = self.cluster.cancel_quietly(self.job_id, fresh=fresh)
            freed = self.freed = freed or bool(self.freed)  # stop() may have cancelled it already
            if not freed and isinstance(error, HpcllmError) and not isinstance(error, (LaunchCancelled, JobFailed)):
                # The job may still hold its GPUs: say which, and how to free them.
                error.hint = " ".join(filter(None, [error.hint, (
                    f"Job {self.job_id} may still hold its GPUs and cancelling it failed: stop it with "
                    f"`hpcllm down {self.job_id}`, or `scancel {self.job_id}` on the login node.")]))
            if isinstance(error, LaunchCancelled):
                error = LaunchCancelled(
                    f"The launch of {self.options.model} was cancelled"
                    + (f"; job {self.job_id} was cancelled, its GPUs are free." if freed else
                       f", but cancelling job {self.job_id} failed.")
                    , "" if freed else f"Run `scancel {self.job_id}` on the cluster (or `hpcllm down {self.job_id}`).")
        self._future.set_exception(error)

    def _finished(self) -> None:
        with self._lock:
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            _call(callback, self)


def _call(callback: Callable[..., object], argument: object) -> None:
    """A face's callback failing must not stop the launch (its job would be left waiting)."""
    try:
        callback(argument)
    except Exception:
        _log.exception("a jupyter-hpcllm progress callback failed")
