"""The launch panel: an ipywidgets form that knows the cluster.

    %hpcllm panel                    # or: import jupyter_hpcllm; jupyter_hpcllm.panel()

Pick a profile and a model (listed with size, family and suggested allocation), adjust how it runs, and
see the plan before any GPU-hour is spent: what the model needs, the allocation, the GPU-hours held, and
why a choice cannot work (Launch is then disabled). Launch shows the progress and the engine log; the
ready client lands in the namespace as with `%hpcllm up`, so `%%llm` in the next cell talks to it. Below,
your servers on the profile, with Attach, Logs and Stop.

Every SSH and Slurm call runs in a thread: the kernel stays free. Closing the panel stops its polling.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ...config.options import LaunchOptions
from ...config.profiles import profile_names
from ...errors import HpcllmError, InvalidOption
from ...lifecycle import Cluster, cluster_for
from ...views import PlanView, plan_view, problem_view
from ..session import NotebookSession, ask, session_for
from .background import Debounced, Poller, Report, run_in_background
from .form import LaunchForm, model_entries
from .launcher import LaunchSection
from .servers import ServersTable

__all__ = ["Panel", "panel"]

REPLAN_DELAY = 0.4  # seconds of quiet before a change re-plans
SERVERS_EVERY, SERVERS_LONGEST = 15.0, 120.0  # the table's refresh while shown, backing off to this


class Panel(widgets.VBox):
    """The whole panel. Its parts: `form`, `launcher` (with `launcher.handle` once launched), `servers`."""

    def __init__(self, shell: Any, profile: str | None = None, *, clusters: Callable[[str], Cluster] | None = None,
                 replan_delay: float = REPLAN_DELAY, poll_every: float = SERVERS_EVERY,
                 poll_longest: float = SERVERS_LONGEST) -> None:
        """`clusters` gives the Cluster of a profile name (default: the shared one per profile, as the
        magics use, asking in the notebook what the login node asks)."""
        names, default = profile_names()
        chosen = profile or default
        self._clusters = clusters or (lambda name: cluster_for(name, prompt=ask))
        self.cluster: Cluster = self._clusters(chosen)  # an unknown profile: the clear error, with the known ones
        self.session: NotebookSession = session_for(shell)
        self.message = widgets.HTML()
        self.report = Report(self.message)
        self.form = LaunchForm(names, chosen)
        self.plan_box = widgets.HTML()
        self.script_toggle = widgets.ToggleButton(description="Show script", icon="file-code-o",
                                                  tooltip="The sbatch script Launch submits")
        self.script_box = widgets.HTML()
        self.plan: Any = None  # the latest LaunchPlan (when it can be launched)
        self.view: PlanView | None = None
        self._plan_lock = threading.Lock()
        self._revision = 0  # counts the form's changes; a plan is launched only if made from the latest
        self._plan_revision = -1
        self._plan_as_name = "client"
        self._plan_cluster: Cluster | None = None  # the cluster the plan shown was made for
        self._launch_requested: int | None = None  # the form's revision when Launch was clicked before its plan
        self.launcher = LaunchSection(self.session, on_change=self._launches_changed)
        self.servers = ServersTable(self.session, self.report, cluster=lambda: self.cluster,
                                    as_name=lambda: self.form.as_name.value.strip())
        self.planner = Debounced(self._replan, replan_delay, self.report)
        self._loading: list[Any] = []  # the background loads of models, parser names and servers
        self.reload_button = widgets.Button(icon="refresh", tooltip="Read the models and parser names again",
                                            layout=widgets.Layout(width="3em"))
        self.reload_button.on_click(lambda _: self.reload())
        close = widgets.Button(icon="times", tooltip="Close the panel (a server it started keeps running)",
                               layout=widgets.Layout(width="3em"))
        close.on_click(lambda _: self.close())
        form = self.form
        section = lambda title: widgets.HTML(f"<h4 style='margin:8px 0 2px'>{title}</h4>")  # noqa: E731
        super().__init__([
            widgets.HBox([widgets.HTML("<h3 style='margin:0'>HPC LLM launch panel</h3>"), close],
                         layout=widgets.Layout(justify_content="space-between", width="44em")),
            self.message,
            section("Where and what"), form.profile, form.search, form.model,
            widgets.HBox([form.models_note, self.reload_button], layout=widgets.Layout(align_items="center")),
            section("How"), form.engine, widgets.HBox([form.gpu_type, form.gpus]),
            widgets.HBox([form.text["time"], form.text["cpus"]]), widgets.HBox([form.text["mem"],
                                                                                form.text["partition"]]),
            widgets.HBox([form.text["account"], form.text["replicas"]]),
            widgets.HBox([form.tool_call_parser, form.reasoning_parser]), form.parsers_note, form.text["speculative"],
            form.engine_args, form.as_name,
            section("The plan"), self.plan_box, self.script_toggle, self.script_box,
            section("Launch"), self.launcher.box,
            self.servers.box,
        ], layout=widgets.Layout(padding="6px"))
        self._view_count = 0  # the front end counts its views: the table refreshes only while shown
        self._observe()
        self.launcher.launch_button.on_click(lambda _: self.launch())
        self._profile_changed(first=True)
        self.poller = Poller(self.servers.refresh, lambda: bool(self._view_count), self.report,
                             interval=poll_every, longest=poll_longest, name="hpcllm-panel-servers").start()
        # Shown again (a notebook reopened, a view added): refresh at once.
        self.observe(lambda change: self.poller.wake() if change.new else None, "_view_count")

    # -- reacting to the form

    def _observe(self) -> None:
        form = self.form
        form.profile.observe(lambda _: self._profile_changed(), "value")
        form.search.observe(lambda _: form.filter_models(), "value")
        form.model.observe(self._model_changed, "value")
        form.gpu_type.observe(self._gpu_type_changed, "value")
        form.gpus.observe(self._allocation_changed, "value")
        form.engine.observe(self._engine_changed, "value")
        for widget in (*form.text.values(), form.tool_call_parser, form.reasoning_parser, form.engine_args,
                       form.as_name):
            widget.observe(self._changed, "value")
        self.script_toggle.observe(lambda _: self._show_script(), "value")

    def _changed(self, change: Any = None) -> None:
        """Any change of what the form holds, the user's or its own (a filtered list, a reset parser):
        the plan shown is no longer the form's until the planner has run."""
        with self._plan_lock:
            self._revision += 1
        self.launcher.allow(False)  # until the new plan says it can be launched
        self.planner.trigger()

    def _model_changed(self, change: Any) -> None:
        if not self.form.changing_itself:
            self.form.allocation_chosen = False  # a new model: its suggested allocation
        self._changed()

    def _gpu_type_changed(self, change: Any) -> None:
        self.form.set_counts(self.cluster.profile)
        self._allocation_changed(change)

    def _allocation_changed(self, change: Any) -> None:
        if not self.form.changing_itself:
            self.form.allocation_chosen = True
        self._changed()

    def _engine_changed(self, change: Any) -> None:
        if not self.form.changing_itself:
            self._load_parser_names()
        self._changed()

    def _profile_changed(self, first: bool = False) -> None:
        """A profile: its choices in the form, then (in the background) its models, parsers and servers."""
        if self.form.changing_itself:
            return
        self._changed()  # whatever happens next, the plan shown is not the form's any more
        name = self.form.profile.value
        try:
            cluster = self.cluster if first else self._clusters(name)
        except HpcllmError as error:  # its section of the config file is wrong: stay on the one before
            with self.form.quietly():
                self.form.profile.value = self.cluster.profile.name
            return self.report.error(error)
        self.cluster = cluster
        self.form.set_profile(cluster.profile)
        self.servers.forget()
        self.form.set_models([])
        self.plan_box.value = "<i>Choose a model.</i>"
        self.launcher.allow(False)
        self.reload()

    def reload(self) -> None:
        """Read the profile's models, parser names and servers (again: after fixing what stopped them, a host
        key to trust, a login, a model copied in). The form keeps its choices."""
        self.report.clear()
        cluster = self.cluster
        where = cluster.profile
        self.form.models_note.value = (f"<small>Reading the models under {html.escape(where.model_root)} on "
                                       f"{html.escape(where.host)} …</small>")

        def load() -> None:
            try:
                cluster.connect()
                entries = model_entries(cluster.models())
            except BaseException:
                if cluster is self.cluster:
                    self.form.models_note.value = "<small>The models could not be read (see above); ↻ reads them " \
                                                  "again.</small>"
                raise
            if cluster is self.cluster:
                self.form.set_models(entries)
            self.servers.refresh()

        self._loading.append(run_in_background(load, self.report, [self.reload_button], name="hpcllm-panel-models"))
        self._load_parser_names()

    def _load_parser_names(self) -> None:
        """The override lists: the parser names the engine's image registers (cached per image)."""
        cluster, engine = self.cluster, self.form.engine.value
        self.form.parsers_note.value = ""

        def load() -> None:
            try:
                names = cluster.parsers(engine)
            except HpcllmError as error:
                if cluster is not self.cluster or engine != self.form.engine.value:
                    return  # another profile or engine meanwhile: its own load tells
                self.form.set_parser_names((), ())
                self.form.parsers_note.value = (f"<small>The image's parser names are not available "
                                                f"({html.escape(str(error))}); automatic choice still works.</small>")
                return
            if cluster is self.cluster and engine == self.form.engine.value:
                self.form.set_parser_names(names.get("tool", ()), names.get("reasoning", ()))

        self._loading.append(run_in_background(load, self.report, name="hpcllm-panel-parsers"))

    # -- the plan, live

    def _replan(self) -> None:
        """In the planner's thread: plan the form's choices; show the plan, or why it cannot work."""
        with self._plan_lock:
            revision = self._revision
        form, cluster = self.form, self.cluster
        as_name = form.as_name.value.strip()
        plan, view = None, None
        if form.model.value:
            try:
                problem = self.session.variable_problem(as_name) if as_name else "is empty"
                if problem:
                    raise InvalidOption("as_name", f"The client variable {as_name!r} {problem}.",
                                        "Choose a Python variable name, e.g. client.")
                options = LaunchOptions.from_mapping(form.values(suggested_allocation=not form.allocation_chosen))
                plan = cluster.plan(options)
                view = plan_view(plan)
            except HpcllmError as error:
                plan, view = None, problem_view(error)
        with self._plan_lock:
            if revision != self._revision or cluster is not self.cluster:
                return  # the form changed meanwhile: the next run shows the plan of what it holds now
            self.plan, self.view = (plan if view is not None and view.ok else None), view
            self._plan_revision, self._plan_as_name, self._plan_cluster = revision, as_name, cluster
            requested, self._launch_requested = self._launch_requested, None
        form.mark(view.field if view else None)
        self.plan_box.value = _plan_html(view) if view else "<i>Choose a model.</i>"
        self._show_script()
        self.launcher.allow(view is not None and view.ok)
        if requested == revision:  # Launch was clicked on exactly these choices
            self._launch_plan(plan, view, as_name, cluster)
        elif requested is not None:
            self._not_launched("Not launched: the form changed after you clicked Launch. Check the plan, then "
                               "click Launch again.")
        if plan is not None and not form.allocation_chosen:
            form.set_allocation(plan.gpu_type, plan.gpus)  # the suggestion, preselected (plans once more)

    def _show_script(self) -> None:
        shown = self.script_toggle.value and self.plan is not None
        self.script_box.value = (f"<pre style='max-height:20em;overflow:auto;font-size:85%'>"
                                 f"{html.escape(self.plan.script)}</pre>" if shown else "")

    def settle(self, timeout: float = 60.0) -> Panel:
        """Wait until the models and parser names are loaded and the plan shows the form's choices (for
        code cells that drive the panel, and tests)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._loading):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._loading = [thread for thread in self._loading if thread.is_alive()]
        if self._loading or not self.planner.idle.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("The panel is still loading or planning.")
        return self

    # -- launching and closing

    def launch(self) -> Any:
        """Launch the plan shown (the Launch button); returns the thread that starts it. Clicked before the
        plan of the latest change is ready, it launches once that plan is, if the form has not changed again
        by then (and the plan can be launched)."""
        with self._plan_lock:
            current = self._plan_revision == self._revision
            if not current:
                self._launch_requested = self._revision
            plan, view, as_name, cluster = self.plan, self.view, self._plan_as_name, self._plan_cluster
        if not current:
            self.launcher.ended.clear()  # `launcher.wait()` waits for this launch, not the one before
            self.launcher.outcome.say("Launching as soon as the plan of your latest choices is ready …")
            return None
        return self._launch_plan(plan, view, as_name, cluster)

    def _launch_plan(self, plan: Any, view: PlanView | None, as_name: str, cluster: Cluster | None) -> Any:
        """Launch this plan on the cluster it was made for (never another profile chosen since)."""
        if plan is None or view is None or not view.ok or cluster is None:
            return self._not_launched("Not launched: " + (view.problem if view is not None else "choose a model."))
        try:
            return self.launcher.launch(cluster, plan.options, as_name)
        except HpcllmError as error:
            return self._not_launched(str(error))

    def _not_launched(self, message: str) -> None:
        self.launcher.outcome.error(message)
        if not self.launcher.launching:
            self.launcher.ended.set()

    def _launches_changed(self) -> None:
        self.poller.wake()  # the table shows the new (or stopped) job

    def close(self) -> None:
        """Stop the polling, the planner and the log tail, and close the widgets. A server launched here
        keeps running (`%hpcllm down` or the table's Stop end it)."""
        if not hasattr(self, "poller"):  # closed (garbage-collected) before it was whole
            super().close()
            return
        self.poller.close(timeout=0)
        self.planner.close()
        with self._plan_lock:
            requested, self._launch_requested = self._launch_requested, None
        self.launcher.close()
        if requested is not None and not self.launcher.launching:
            self.launcher.ended.set()  # the launch it was waiting for will not happen
        for part in _parts(self)[:-1]:
            part.close()
        super().close()


def _plan_html(view: PlanView) -> str:
    if not view.ok:
        return (f"<div style='color:#b00020'><b>Cannot launch:</b> {html.escape(view.problem)}</div>")
    details = "".join(f"<li>{html.escape(line)}</li>" for line in view.details)
    return (f"<div><b>{html.escape(view.headline)}</b><br>{html.escape(view.cost)}"
            f"<ul style='margin:2px 0'>{details}</ul></div>")


def _parts(widget: Any) -> list[Any]:
    """This widget last, after what it holds: the widgets inside it, and its layout and style (widgets
    too, in the kernel's registry until closed)."""
    inside = [part for child in getattr(widget, "children", ()) for part in _parts(child)]
    own = [part for part in (getattr(widget, "layout", None), getattr(widget, "style", None)) if part is not None]
    return [*inside, *own, widget]


def panel(profile: str | None = None) -> Panel:
    """The launch panel, for this notebook (its client and %%llm go to this kernel's namespace)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise HpcllmError("The launch panel runs in a notebook (a Jupyter kernel).",
                          "From a script, use jupyter_hpcllm.up(...) or the `hpcllm` command.")
    # %%llm talks to what the panel launches: make sure the magics are there.
    shell.extension_manager.load_extension("jupyter_hpcllm")
    return Panel(shell, profile)
