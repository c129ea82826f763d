"""Launch and watch: the Launch, Cancel and Stop buttons, a progress bar and stage line fed by the
launch handle, and the engine log's tail while the job starts. A ready server is adopted into the
notebook session, exactly as `%hpcllm up` does, so `client` and `%%llm` work in the next cell."""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Callable
from typing import Any

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
    """One launch at a time; its server stays here until stopped."""

    def __init__(self, session: NotebookSession, report: Report, *, on_change: Callable[[], None]) -> None:
        self.session, self.report, self.on_change = session, report, on_change
        self.launch_button = widgets.Button(description="Launch", button_style="primary", icon="rocket",
                                            disabled=True, tooltip="Submit the job and wait until its API answers")
        self.cancel_button = widgets.Button(description="Cancel", icon="ban", disabled=True,
                                            tooltip="Stop the launch; the job it submitted is cancelled")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                          tooltip="Cancel the running job: its GPUs are freed")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="34em"))
        self.stage = widgets.HTML()
        self.log = widgets.HTML()
        self.handle: LaunchHandle | None = None
        self.server: Server | None = None
        self.cluster: Cluster | None = None
        self._tail: Poller | None = None
        self._starting: threading.Thread | None = None
        self.ended = threading.Event()  # set once the latest launch has ended and the panel shows how
        self._lock = threading.Lock()
        self.plannable = False  # the form's latest plan can be launched
        self.cancel_button.on_click(lambda _: self.cancel())
        self.stop_button.on_click(lambda _: self.stop())
        self.box = widgets.VBox([widgets.HBox([self.launch_button, self.cancel_button, self.stop_button]),
                                 self.progress, self.stage, self.log])

    @property
    def busy(self) -> bool:
        """A launch is in progress, or its server runs here."""
        return (self.handle is not None and not self.handle.done()) or self.server is not None

    def allow(self, plannable: bool) -> None:
        """The form says whether its choices can be launched: the button follows (never while busy)."""
        self.plannable = plannable
        self.launch_button.disabled = not plannable or self.busy

    # -- launching

    def launch(self, cluster: Cluster, options: LaunchOptions, as_name: str) -> threading.Thread:
        """Start a launch (in the background: connecting may take a while) and watch it."""
        if self.busy:
            raise HpcllmError("A launch from this panel is in progress or its server is running.",
                              "Cancel or stop it first.")
        self.report.clear()
        self.ended.clear()
        self.log.value = ""
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.stage.value = f"Connecting to {html.escape(cluster.profile.name)} …"
        self.launch_button.disabled = True

        def start() -> None:
            try:
                cluster.connect()
                handle = cluster.launch(options, on_progress=self._progress)
            except BaseException:
                self.stage.value = ""
                self.allow(self.plannable)
                self.ended.set()
                raise
            with self._lock:
                self.handle, self.cluster = handle, cluster
            self.session.launching = handle
            self.cancel_button.disabled = False
            self._tail = Poller(self._tail_log, lambda: self._engine_started(handle), self.report,
                                interval=2.0, longest=8.0, name="hpcllm-panel-log").start()
            handle.add_done_callback(lambda done: self._finished(done, as_name))

        self._starting = run_in_background(start, self.report, name="hpcllm-panel-launch")
        return self._starting

    def wait(self, timeout: float | None = None) -> Server | None:
        """Wait until the launch has ended and the panel shows it; its server (None if it failed or was
        cancelled: the panel says why). For code cells that drive the panel, and tests."""
        if not self.ended.wait(timeout):
            raise TimeoutError("The launch is still in progress.")
        return self.server

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
            self.report.error(error)
        finally:
            self.ended.set()

    def _end(self, handle: LaunchHandle, as_name: str) -> None:
        if self._tail is not None:
            self._tail.close()
        self.cancel_button.disabled = True
        error = handle.exception()
        if error is None:
            server = handle.result()
            with self._lock:
                self.server = server
            self.progress.value, self.progress.bar_style = 1.0, "success"
            self.report.say(self.session.adopt(server, as_name))
            self.stop_button.disabled = False
        else:
            cancelled = isinstance(error, LaunchCancelled)
            self.progress.bar_style = "warning" if cancelled else "danger"
            self.stage.value = "<b>cancelled</b>" if cancelled else "<b>failed</b>"
            if cancelled:
                self.report.say(str(error))  # whether the job it submitted was cancelled, and its GPUs freed
            else:
                self.report.error(error)
            if self._engine_started_once(handle):
                self._quiet_tail()  # the log says why the engine failed
        self.allow(self.plannable)
        self.on_change()

    @staticmethod
    def _engine_started_once(handle: LaunchHandle) -> bool:
        return any(p.stage in (Stage.RUNNING, Stage.LOADING) for p in handle.history)

    def _quiet_tail(self) -> None:
        with contextlib.suppress(Exception):  # the launch's own error is the story
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
        return run_in_background(handle.stop, self.report, name="hpcllm-panel-cancel")

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
            self.session.forget(server.job_id)
            with self._lock:
                self.server = None
            self.progress.value, self.progress.bar_style = 0.0, ""
            self.stage.value = ""
            self.report.say(views.stopped_message(server.job_id, state.value))
            self.allow(self.plannable)
            self.on_change()

        return run_in_background(stop, self.report, name="hpcllm-panel-stop")

    def stopped_elsewhere(self, job_id: str) -> None:
        """The servers table stopped this job: forget it here too."""
        server = self.server
        if server is not None and server.job_id == job_id:
            server.close()
            with self._lock:
                self.server = None
            self.stop_button.disabled = True
            self.progress.value, self.progress.bar_style = 0.0, ""
            self.stage.value = ""
            self.allow(self.plannable)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()

    def widget(self) -> Any:
        return self.box
