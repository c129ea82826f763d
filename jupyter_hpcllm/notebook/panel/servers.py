"""Your servers: the user's jobs on the profile (model, engine, state, node, GPUs, time left), with
Attach, Logs and Stop per row. The panel refreshes it while it is shown."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ... import views
from ...errors import ConfigError
from ...lifecycle import Cluster, ServerInfo
from ..session import NotebookSession
from .background import Report, run_in_background
from .launcher import log_html

__all__ = ["ServersTable"]

_COLUMNS = ("Job", "Model", "Engine", "State", "Node", "GPUs", "Time left", "")


def row_cells(info: ServerInfo) -> tuple[str, ...]:
    """The text of one row (what the table shows, and what tells whether it changed)."""
    return (info.job_id, info.model or "?", info.engine or "?", info.state.value, info.node or "—",
            info.gpus or "?", views.time_left_text(info) or "—")


class ServersTable:
    """The table; `refresh()` reads the queue (call it from a thread) and says whether anything changed.
    Each row acts on the cluster it was read from, whatever profile the form shows by then."""

    def __init__(self, session: NotebookSession, report: Report, *, cluster: Callable[[], Cluster],
                 as_name: Callable[[], str]) -> None:
        self.session, self.report = session, report
        self._cluster, self._as_name = cluster, as_name
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(7, auto) auto",
                                                          grid_gap="2px 12px"))
        self.note = widgets.HTML("<small>Reading the queue …</small>")
        self.log = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             layout=widgets.Layout(width="8em"))
        self.refresh_button.on_click(lambda _: self.refresh_in_background())
        self.rows: list[tuple[str, ...]] | None = None  # None: not read yet
        self.buttons: dict[str, dict[str, Any]] = {}  # job id -> {"attach": Button, "logs": ..., "stop": ...}
        self._rows_cluster: Cluster | None = None
        self._busy: set[str] = set()  # jobs with an action running: their buttons stay disabled
        self._refreshing = threading.Lock()  # one refresh at a time: an older list is never shown last
        self._lock = threading.Lock()
        self.box = widgets.VBox([widgets.HBox([widgets.HTML("<b>Your servers</b>"), self.refresh_button]),
                                 self.note, self.grid, self.log])

    def refresh(self) -> bool:
        with self._refreshing:
            cluster = self._cluster()
            infos = cluster.list()
            if cluster is not self._cluster():
                return False  # another profile meanwhile: its own refresh shows its servers
            rows = [row_cells(info) for info in infos]
            if rows == self.rows and cluster is self._rows_cluster:
                return False
            self.rows, self._rows_cluster = rows, cluster
            self._show(rows, cluster)
            return True

    def refresh_in_background(self) -> None:
        run_in_background(self.refresh, self.report, [self.refresh_button], name="hpcllm-panel-servers")

    def forget(self) -> None:
        """Another profile: its table is read anew."""
        self.rows, self._rows_cluster = None, None
        self._place([], {}, "<small>Reading the queue …</small>")

    def _show(self, rows: list[tuple[str, ...]], cluster: Cluster) -> None:
        children: list[Any] = []
        buttons: dict[str, dict[str, Any]] = {}
        if rows:
            children = [widgets.HTML(f"<b>{name}</b>") for name in _COLUMNS]
        for row in rows:
            job, running = row[0], row[3] == "RUNNING"
            children += [widgets.HTML(html.escape(cell)) for cell in row]
            actions = {
                "attach": widgets.Button(description="Attach", layout=widgets.Layout(width="6em"),
                                         tooltip=f"Connect this notebook to job {job}" if running else
                                         f"Job {job} is not running yet"),
                "logs": widgets.Button(description="Logs", tooltip=f"The engine log of job {job}",
                                       layout=widgets.Layout(width="5em")),
                "stop": widgets.Button(description="Stop", button_style="danger", tooltip=f"Cancel job {job}",
                                       layout=widgets.Layout(width="5em")),
            }
            actions["attach"].on_click(lambda _, job=job: self.attach(job, cluster))
            actions["logs"].on_click(lambda _, job=job: self.logs(job, cluster))
            actions["stop"].on_click(lambda _, job=job: self.stop(job, cluster))
            buttons[job] = actions
            children.append(widgets.HBox(list(actions.values())))
        self._place(children, buttons, "" if rows else "<small>No servers of yours on this profile.</small>")

    def _place(self, children: list[Any], buttons: dict[str, dict[str, Any]], note: str) -> None:
        """Swap a new table in. Under the lock: an action ending meanwhile enables the buttons in place, these
        or the ones before."""
        with self._lock:
            old, self.buttons = self.grid.children, buttons
            for job in buttons:
                self._enable(job)
            self.grid.children = tuple(children)
        self.note.value = note
        for child in old:
            child.close()

    def _enable(self, job: str) -> None:
        """(Under the lock.) A row's buttons: disabled while its action runs; Attach only when it runs."""
        running = any(row[0] == job and row[3] == "RUNNING" for row in self.rows or [])
        for name, button in self.buttons.get(job, {}).items():
            button.disabled = job in self._busy or (name == "attach" and not running)

    # -- the row's actions (each in the background, the row's buttons disabled meanwhile)

    def _act(self, job: str, action: Callable[[], object], name: str) -> Any:
        """Run a row's action with its buttons disabled, including the ones a refresh makes meanwhile."""
        with self._lock:
            if job in self._busy:
                return None  # a click on a button that was still shown enabled
            self._busy.add(job)
            current = list(self.buttons.get(job, {}).values())
        for button in current:
            button.disabled = True

        def run() -> None:
            try:
                action()
            finally:
                with self._lock:
                    self._busy.discard(job)
                    self._enable(job)

        return run_in_background(run, self.report, name=name)

    def attach(self, job: str, cluster: Cluster | None = None) -> Any:
        where = cluster or self._cluster()

        def attach() -> None:
            as_name = self._as_name()
            problem = self.session.variable_problem(as_name)
            if problem:
                raise ConfigError(f"The client variable {as_name!r} {problem}.", "Choose another name above.")
            current = self.session.server
            if current is not None and current.job_id == job and not current.closed:
                return self.report.say(self.session.adopt(current, as_name))
            self.report.say(f"Attaching to job {job} …")
            self.report.say(self.session.adopt(where.attach(job, timeout=60), as_name))

        return self._act(job, attach, "hpcllm-panel-attach")

    def logs(self, job: str, cluster: Cluster | None = None, lines: int = 40) -> Any:
        where = cluster or self._cluster()

        def logs() -> None:
            self.log.value = log_html(f"engine log of job {job} (last {lines} lines)", where.logs(job, lines=lines))

        return self._act(job, logs, "hpcllm-panel-logs")

    def stop(self, job: str, cluster: Cluster | None = None) -> Any:
        where = cluster or self._cluster()

        def stop() -> None:
            state = where.cancel(job)
            current = self.session.server
            if current is not None and current.job_id == job:
                current.close()
            self.session.forget(job)  # %%llm forgets it, and so does the panel's launch section
            self.report.say(views.stopped_message(job, state.value))
            self.refresh()

        return self._act(job, stop, "hpcllm-panel-stop-row")
