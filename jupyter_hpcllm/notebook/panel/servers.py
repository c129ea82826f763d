"""Your servers: the user's jobs on the profile (model, engine, state, node, GPUs, time left), with
Attach, Logs and Stop per row. The panel refreshes it while it is shown."""

from __future__ import annotations

import html
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
    """The table; `refresh()` reads the queue (call it from a thread) and says whether anything changed."""

    def __init__(self, session: NotebookSession, report: Report, *, cluster: Callable[[], Cluster],
                 as_name: Callable[[], str], on_stopped: Callable[[str], None]) -> None:
        self.session, self.report = session, report
        self._cluster, self._as_name, self._on_stopped = cluster, as_name, on_stopped
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(7, auto) auto",
                                                          grid_gap="2px 12px"))
        self.note = widgets.HTML("<small>Reading the queue …</small>")
        self.log = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             layout=widgets.Layout(width="8em"))
        self.refresh_button.on_click(lambda _: self.refresh_in_background())
        self.rows: list[tuple[str, ...]] = []
        self.buttons: dict[str, dict[str, Any]] = {}  # job id -> {"attach": Button, "logs": ..., "stop": ...}
        self.box = widgets.VBox([widgets.HBox([widgets.HTML("<b>Your servers</b>"), self.refresh_button]),
                                 self.note, self.grid, self.log])

    def refresh(self) -> bool:
        infos = self._cluster().list()
        rows = [row_cells(info) for info in infos]
        if rows == self.rows:
            return False
        self.rows = rows
        self._show(rows)
        return True

    def refresh_in_background(self) -> None:
        run_in_background(self.refresh, self.report, [self.refresh_button], name="hpcllm-panel-servers")

    def _show(self, rows: list[tuple[str, ...]]) -> None:
        if not rows:
            self.note.value = "<small>No servers of yours on this profile.</small>"
            self.grid.children, self.buttons = (), {}
            return
        self.note.value = ""
        children: list[Any] = [widgets.HTML(f"<b>{name}</b>") for name in _COLUMNS]
        buttons: dict[str, dict[str, Any]] = {}
        for row in rows:
            job = row[0]
            children += [widgets.HTML(html.escape(cell)) for cell in row]
            actions = {
                "attach": widgets.Button(description="Attach", tooltip=f"Connect this notebook to job {job}",
                                         layout=widgets.Layout(width="6em")),
                "logs": widgets.Button(description="Logs", tooltip=f"The engine log of job {job}",
                                       layout=widgets.Layout(width="5em")),
                "stop": widgets.Button(description="Stop", button_style="danger", tooltip=f"Cancel job {job}",
                                       layout=widgets.Layout(width="5em")),
            }
            actions["attach"].on_click(lambda _, job=job: self.attach(job))
            actions["logs"].on_click(lambda _, job=job: self.logs(job))
            actions["stop"].on_click(lambda _, job=job: self.stop(job))
            buttons[job] = actions
            children.append(widgets.HBox(list(actions.values())))
        old = self.grid.children
        self.grid.children, self.buttons = tuple(children), buttons
        for child in old:
            child.close()

    # -- the row's actions (each in the background, its buttons disabled meanwhile)

    def _row_buttons(self, job: str) -> list[Any]:
        return list(self.buttons.get(job, {}).values())

    def attach(self, job: str) -> Any:
        def attach() -> None:
            as_name = self._as_name()
            problem = self.session.variable_problem(as_name)
            if problem:
                raise ConfigError(f"The client variable {as_name!r} {problem}.", "Choose another name above.")
            current = self.session.server
            if current is not None and current.job_id == job and not current.closed:
                return self.report.say(self.session.adopt(current, as_name))
            self.report.say(f"Attaching to job {job} …")
            server = self._cluster().attach(job)
            self.report.say(self.session.adopt(server, as_name))

        return run_in_background(attach, self.report, self._row_buttons(job), name="hpcllm-panel-attach")

    def logs(self, job: str, lines: int = 40) -> Any:
        def logs() -> None:
            self.log.value = log_html(f"engine log of job {job} (last {lines} lines)",
                                      self._cluster().logs(job, lines=lines))

        return run_in_background(logs, self.report, self._row_buttons(job), name="hpcllm-panel-logs")

    def stop(self, job: str) -> Any:
        def stop() -> None:
            state = self._cluster().cancel(job)
            if self.session.server is not None and self.session.server.job_id == job:
                self.session.server.close()
            self.session.forget(job)
            self._on_stopped(job)
            self.report.say(views.stopped_message(job, state.value))
            self.refresh()

        return run_in_background(stop, self.report, self._row_buttons(job), name="hpcllm-panel-stop-row")

