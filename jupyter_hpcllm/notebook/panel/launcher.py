"""Launch and watch: the Launch, Cancel and Stop buttons, a progress bar and stage line fed by the
launch handle, and the engine log's tail while the job starts. A ready server is adopted into the
notebook session, exactly as `%hpcllm up` does, so `client` and `%%llm` work in the next cell."""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from ... import views
from ...config.options import LaunchOptions
from ...errors import HpcllmError, JobNotFound, LaunchCancelled
from ...lifecycle import Cluster, LaunchHandle, Progress, Server, Stage
from ..session import NotebookSession
from .background import Poller, Report, run_in_background

__all__ = ["LaunchSection", "fraction", "stage_line"]

_SHARE = {Stage.SUBMITTED: 0.08, Stage.REUSED: 0.08, Stage.PENDING: 0.15, Stage.RUNNING: 0.3,
          Stage.LOADING: 0.35, Stage.READY: 1.0}
LOG_LINES = 15


def fraction(progress: Progress) -> float:
    """How far along a launch is, for the bar: loading moves with the weights read (n/N)."""
    if progress.stage is Stage.LOADING and progress.shards:
        done, total = progress.shards
        return _SHARE[Stage.LOADING] + 0.6 * (done / total if total else 0)
    return _SHARE[progress.stage]


def stage_line(progress: Progress) -> str:
    """The stage, with what a person waiting wants to know: why it waits and until when, the node, n/N."""
    parts = [f"<b>{html.escape(progress.stage.value)}</b>", html.escape(progress.message)]
    if progress.reason:
        parts.append(f"waiting for {html.escape(progress.reason)}")
    if progress.expected_start:
        parts.append(f"expected start {html.escape(progress.expected_start.replace('T', ' '))}")
    if progress.node:
        parts.append(f"node {html.escape(progress.node)}")
    if progress.shards:
        parts.append(f"weights {progress.shards[0]}/{progress.shards[1]}")
    parts.append(f"{progress.elapsed:.0f} s")
    return " · ".join(parts)


def log_html(title: str, text: str) -> str:
    return (f"<div><small>{html.escape(title)}</small><pre style='max-height:14em;overflow:auto;margin:0;"
            f"font-size:85%;background:var(--jp-layout-color2,#f5f5f5);padding:4px'>{html.escape(text)}</pre></div>")


class LaunchSection:
    """One launch at a time; its server stays here until stopped. The launch's outcome has a message line
    of its own (`outcome`), so what it says (a job that may still hold GPUs) is not overwritten by others."""

    def __init__(self, session: NotebookSession, *, on_change: Callable[[], None]) -> None:
        self.session, self.on_change = session, on_change
        self.launch_button = widgets.Button(description="Launch", button_style="primary", icon="rocket",
                                            disabled=True, tooltip="Submit the job and wait until its API answers")
        self.cancel_button = widgets.Button(description="Cancel", icon="ban", disabled=True,
                                            tooltip="Stop the launch; the job it submitted is cancelled")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                          tooltip="Cancel the running job: its GPUs are freed")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="34em"))
        self.stage = widgets.HTML()
        self.outcome = Report(widgets.HTML())
        self.log = widgets.HTML()
        self.handle: LaunchHandle | None = None
        self.server: Server | None = None
        self.cluster: Cluster | None = None
        self._tail: Poller | None = None
        self._starting = False  # between Launch and the handle: connecting, planning
        self._closed = False
        self.ended = threading.Event()  # set once the latest launch has ended and the panel shows how
        self.ended.set()
        self._lock = threading.RLock()  # re-entered when a launch ends at once (its done callback runs inline)
        self.plannable = False  # the form's latest plan can be launched
        self.cancel_button.on_click(lambda _: self.cancel())
        self.stop_button.on_click(lambda _: self.stop())
        session.on_stopped.append(self.stopped_elsewhere)
        self.box = widgets.VBox([widgets.HBox([self.launch_button, self.cancel_button, self.stop_button]),
                                 self.progress, self.stage, self.outcome.widget, self.log])

    @property
    def launching(self) -> bool:
        """A launch of this panel is starting or in progress."""
        with self._lock:
            return self._starting or (self.handle is not None and not self.handle.done())

    @property
    def busy(self) -> bool:
        """A launch is starting or in progress, or its server runs here."""
        with self._lock:
            return self.launching or self.server is not None

    def allow(self, plannable: bool) -> None:
        """The form says whether its choices can be launched: the button follows (never while busy)."""
        self.plannable = plannable
        self.launch_button.disabled = not plannable or self.busy

    # -- launching

    def launch(self, cluster: Cluster, options: LaunchOptions, as_name: str) -> threading.Thread:
        """Start a launch (in the background: connecting may take a while) and watch it. Refused while
        another launch of this panel (or of the notebook: `%hpcllm up --background`) is on its way."""
        with self._lock:
            if self._closed:
                raise HpcllmError("This panel is closed.", "Run `%hpcllm panel` for a new one.")
            if self.busy:
                raise HpcllmError("This panel's launch is in progress, or its server is running.",
                                  "Cancel or stop it first (or open another panel).")
            self._starting = True  # from here on, a second click is refused at once
        self.ended.clear()
        self.outcome.clear()
        self.log.value = ""
        self._reset_progress(f"Connecting to {html.escape(cluster.profile.name)} …")
        self.launch_button.disabled = True

        def begin() -> LaunchHandle:
            with self._lock:
                if self._closed:  # closed while connecting: nothing is submitted
                    raise LaunchCancelled("The panel was closed before the job was submitted; nothing was "
                                          "submitted.")
                handle = self.handle = cluster.launch(options, on_progress=self._progress)
                self.cluster, self._starting = cluster, False
                # Registered at once: even if the panel closes now, the ready server is adopted (`client`,
                # %%llm, `%hpcllm down` reach it), never left held by nobody.
                handle.add_done_callback(lambda done: self._finished(done, as_name))
                self._tail = Poller(self._tail_log, lambda: self._engine_started(handle), self.outcome,
                                    interval=2.0, longest=8.0, name="hpcllm-panel-log").start()
                return handle

        def start() -> None:
            try:
                cluster.connect()
                handle = self.session.start_launch(begin)
            except BaseException as error:
                with self._lock:
                    self._starting = False
                self._reset_progress()
                self.outcome.error(error)
                self.allow(self.plannable)
                self.ended.set()
                return
            self.cancel_button.disabled = handle.done()

        return run_in_background(start, self.outcome, name="hpcllm-panel-launch")

    def wait(self, timeout: float | None = None) -> Server | None:
        """Wait until the launch has ended and the panel shows it; its server (None if it failed or was
        cancelled: the panel says why). For code cells that drive the panel, and tests."""
        if not self.ended.wait(timeout):
            raise TimeoutError("The launch is still in progress.")
        return self.server

    def _reset_progress(self, stage: str = "") -> None:
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.stage.value = stage

    def _progress(self, progress: Progress) -> None:
        self.progress.value = fraction(progress)
        self.stage.value = stage_line(progress)

    @staticmethod
    def _engine_started(handle: LaunchHandle) -> bool:
        progress = handle.progress
        return progress is not None and progress.stage in (Stage.RUNNING, Stage.LOADING) and not handle.done()

    def _tail_log(self) -> bool:
        handle, cluster = self.handle, self.cluster
        if handle is None or cluster is None or handle.job_id is None:
            return False
        try:
            text = cluster.logs(handle.job_id, lines=LOG_LINES)
        except JobNotFound:  # the engine has not written its log yet
            return False
        shown = log_html(f"engine log of job {handle.job_id} (last {LOG_LINES} lines)", text)
        changed: bool = shown != self.log.value
        self.log.value = shown
        return changed

    def _finished(self, handle: LaunchHandle, as_name: str) -> None:
        try:
            self._end(handle, as_name)
        except BaseException as error:  # a done callback's error would only reach a log
            self.outcome.error(error)
        finally:
            self.ended.set()

    def _end(self, handle: LaunchHandle, as_name: str) -> None:
        if self._tail is not None:
            self._tail.close()
        self.cancel_button.disabled = True
        error = handle.exception()
        if error is None and handle.result().closed:  # Cancel was clicked as it became ready: stopped already
            error = LaunchCancelled(f"The launch of {handle.options.model} was cancelled as it became ready; job "
                                    f"{handle.job_id} was stopped.")
        if error is None:
            server = handle.result()
            with self._lock:
                self.server = server
            self.progress.value, self.progress.bar_style = 1.0, "success"
            self.stop_button.disabled = False
            self.outcome.say(self.session.adopt(server, as_name))
            self._quiet_tail()  # the engine's start-up lines, however quickly it came up
        else:
            cancelled = isinstance(error, LaunchCancelled)
            self.progress.bar_style = "warning" if cancelled else "danger"
            self.stage.value = "<b>cancelled</b>" if cancelled else "<b>failed</b>"
            if cancelled:
                self.outcome.say(str(error))  # whether the job it submitted was cancelled, and its GPUs freed
            else:
                self.outcome.error(error)
            if self._engine_started_once(handle):
                self._quiet_tail()  # the log says why the engine failed
        self.allow(self.plannable)
        self.on_change()

    @staticmethod
    def _engine_started_once(handle: LaunchHandle) -> bool:
        return any(p.stage in (Stage.RUNNING, Stage.LOADING) for p in handle.history)

    def _quiet_tail(self) -> None:
        with contextlib.suppress(Exception):  # the launch's own outcome is the story
            self._tail_log()

    # -- stopping

    def cancel(self) -> threading.Thread | None:
        """Cancel the launch in progress; the job it submitted is cancelled (its GPUs freed). How it ended
        is told when the launch ends (`_finished`)."""
        handle = self.handle
        if handle is None or handle.done():
            return None
        self.cancel_button.disabled = True
        self.stage.value = "Cancelling …"

        def cancel() -> None:
            handle.stop()
            self.ended.wait(30)  # the panel has shown how the launch ended (and may have adopted its server)
            if handle.done() and handle.exception() is None and handle.job_id is not None:
                # It became ready just as Cancel was clicked: stop() stopped the server too; the notebook and
                # this panel (stopped_elsewhere) forget it, as after `%hpcllm down`.
                self.session.forget(handle.job_id)
                self.outcome.say(f"Cancelled: job {handle.job_id} had just become ready; it was stopped, "
                                 "its GPUs are free.")

        return run_in_background(cancel, self.outcome, name="hpcllm-panel-cancel")

    def stop(self) -> threading.Thread | None:
        """Stop the server this panel launched: its job is cancelled."""
        server = self.server
        if server is None:
            return None
        self.stop_button.disabled = True

        def stop() -> None:
            try:
                state = server.down()
            except BaseException:
                self.stop_button.disabled = False
                raise
            self.session.forget(server.job_id)  # %%llm forgets it; so does this panel (stopped_elsewhere)
            self.outcome.say(views.stopped_message(server.job_id, state.value))

        return run_in_background(stop, self.outcome, name="hpcllm-panel-stop")

    def stopped_elsewhere(self, job_id: str) -> None:
        """A face (this panel, its table, `%hpcllm down`) stopped this job: forget it here too."""
        with self._lock:
            server = self.server
            if server is None or server.job_id != job_id:
                return
            self.server = None
        server.close()
        self.stop_button.disabled = True
        self._reset_progress()
        self.allow(self.plannable)
        self.on_change()

    def close(self) -> None:
        """No new launch, no log tail. A launch already submitted goes on and its server is adopted when
        ready (`%hpcllm down` stops it)."""
        with self._lock:
            self._closed = True
            tail = self._tail
        if self.stopped_elsewhere in self.session.on_stopped:
            self.session.on_stopped.remove(self.stopped_elsewhere)
        if tail is not None:
            tail.close()
