"""The launch panel in a real InteractiveShell over the shipped FakeTransport: the form, the live plan,
launch / cancel / stop, the servers table, errors in the panel, threads, polling and closing."""

from __future__ import annotations

import threading
import time

import pytest
from fake_clusters import recording, shared_clusters
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.edge.fake import DEFAULT_MODELS, FakeTransport
from jupyter_hpcllm.lifecycle import shared as shared_module
from jupyter_hpcllm.notebook import panel as panel_module
from jupyter_hpcllm.notebook.panel import Panel
from jupyter_hpcllm.notebook.session import session_for

# A model no allocation of one GPU holds: 120 B parameters in bf16 (≈ 240 GB).
BIG = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 8192,
       "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 90, "max_position_embeddings": 32768,
       "vocab_size": 151936, "intermediate_size": 24576}


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    (tmp_path / "c.toml").write_text('[profiles.other]\npreset = "ebi"\nmodel_root = "/elsewhere"\n')
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    yield ip
    InteractiveShell.clear_instance()


@pytest.fixture
def fake(monkeypatch):
    """Every profile reaches one FakeTransport; the threads that use it are recorded."""
    transport = recording(FakeTransport(models={**DEFAULT_MODELS, "Big-120B": BIG}, pending_probes=2))
    cluster_for, clusters = shared_clusters(transport)
    monkeypatch.setattr(panel_module, "cluster_for", cluster_for)
    monkeypatch.setattr(shared_module, "cluster_for", cluster_for)
    monkeypatch.setattr("jupyter_hpcllm.notebook.magics.cluster_for", cluster_for)
    yield transport
    for cluster in clusters.values():
        cluster.close()


@pytest.fixture
def panel(shell, fake):
    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    before = set(threading.enumerate())
    made = Panel(shell, "ebi", replan_delay=0.01, poll_every=0.02, poll_longest=0.02).settle()
    made.threads_before = before  # what other tests left running is not this panel's
    yield made
    made.close()


def threads_of(panel: Panel, *prefixes: str) -> list[threading.Thread]:
    """The panel's threads still running (made since it was; named by the package)."""
    return [t for t in threading.enumerate()
            if t not in panel.threads_before and t.name.startswith(prefixes or ("hpcllm-panel",))]


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def choose(panel: Panel, model: str, **values) -> Panel:
    panel.form.model.value = model
    for name, value in values.items():
        widget = panel.form.text.get(name) or getattr(panel.form, name)
        widget.value = value
    return panel.settle()


def test_the_form_offers_what_the_profile_and_its_model_root_have(panel):
    form = panel.form
    assert form.profile.options == ("ebi", "other") and form.profile.value == "ebi"
    assert [name for _, name in form.model.options] == ["Big-120B", "gpt-oss-20b", "Qwen3-8B"]
    label = dict((name, label) for label, name in form.model.options)["Qwen3-8B"]
    assert "17.0 GB" in label and "qwen3" in label and "suggested 1 × a100" in label
    assert [value for _, value in form.gpu_type.options] == ["a100", "h200"]
    assert [value for _, value in form.gpus.options] == [1, 2, 3, 4]  # the ebi preset's a100: 1–4
    assert form.text["time"].placeholder == "4:00:00" and form.text["mem"].placeholder == "32G"
    assert panel.servers.rows == [] and "No servers of yours" in panel.servers.note.value
    form.search.value = "qwen3 17"
    assert [name for _, name in form.model.options] == ["Qwen3-8B"] and "1 of 3" in form.models_note.value
    form.search.value = ""
    form.gpu_type.value = "h200"
    assert [value for _, value in form.gpus.options] == list(load_profile("ebi").gpu_types["h200"].counts)


def test_choosing_a_model_plans_it_and_preselects_its_allocation(panel):
    assert panel.launcher.launch_button.disabled  # nothing chosen yet
    choose(panel, "Big-120B")
    view = panel.view
    assert view.ok and view.gpu_type == "h200" and view.gpus == 2, view
    assert (panel.form.gpu_type.value, panel.form.gpus.value) == ("h200", 2)
    assert view.headline.startswith("needs ≈ ") and view.headline.endswith("→ 2 × h200, tensor-parallel 2")
    assert view.gpu_hours == 8.0 and "8 GPU-hours" in panel.plan_box.value
    assert "qwen3" in " ".join(view.details) and not panel.launcher.launch_button.disabled
    # Each choice with its source: the engine `auto` picked (both images), the parsers from the family table.
    assert panel.form.engine.value == "auto" and "engine: vllm (auto: the vllm image" in panel.plan_box.value
    assert "tool-call parser hermes (qwen3 in the family table)" in panel.plan_box.value
    # Replicas and speculative decoding are offered as the other options are.
    panel.form.text["replicas"].value = "2"
    panel.settle()
    assert panel.plan.replicas == 2 and panel.plan.gpus % 2 == 0
    panel.form.text["replicas"].value = ""
    panel.settle()
    panel.script_toggle.value = True
    assert "#SBATCH --gres=gpu:h200:2" in panel.script_box.value
    choose(panel, "Big-120B", time="1:00:00")
    assert panel.view.gpu_hours == 2.0


def test_a_choice_that_cannot_work_says_why_and_cannot_be_launched(panel, fake):
    choose(panel, "Big-120B")
    panel.form.gpu_type.value = "a100"
    panel.form.gpus.value = 1
    panel.settle()
    view = panel.view
    assert not view.ok and view.field == "gpus" and "is too small" in view.problem
    assert "Cannot launch" in panel.plan_box.value and "too small" in panel.plan_box.value
    assert panel.launcher.launch_button.disabled
    assert panel.form.gpus.layout.border and not panel.form.model.layout.border  # the option at fault is marked
    panel.launch()  # even called directly: nothing is submitted
    assert "Not launched" in panel.launcher.outcome.text and "too small" in panel.launcher.outcome.text
    assert not [c for c in fake.commands if "sbatch" in c]

    panel.form.gpus.value = 4
    panel.settle()
    assert panel.view.ok and not panel.form.gpus.layout.border
    for field, value, says in (("time", "99:99", "not a Slurm time limit"), ("cpus", "many", "a whole number"),
                               ("as_name", "Out", "IPython's own names"),
                               ("engine_args", "--tensor-parallel-size 2", "set by jupyter-hpcllm")):
        widget = panel.form.text.get(field) or getattr(panel.form, field)
        widget.value = value
        panel.settle()
        assert not panel.view.ok and panel.view.field == field and says in panel.view.problem, (field, panel.view)
        assert panel.launcher.launch_button.disabled
        widget.value = "client" if field == "as_name" else ""
        panel.settle()
        assert panel.view.ok


def test_launch_reaches_ready_and_the_client_is_the_notebooks(panel, shell, fake, capsys):
    choose(panel, "Qwen3-8B")
    panel.launcher.launch_button.click()
    server = panel.launcher.wait(30)
    assert server is not None, panel.launcher.outcome.text
    assert panel.launcher.progress.value == 1.0 and "ready" in panel.launcher.stage.value
    assert "Ready: `client` talks to Qwen3-8B" in panel.launcher.outcome.text
    stages = [p.stage.value for p in panel.launcher.handle.history]
    assert stages[0] == "submitted" and "pending" in stages and stages[-1] == "ready"
    assert [m.id for m in shell.user_ns["client"].models.list()] == ["Qwen3-8B"]
    shell.run_cell_magic("llm", "--no-stream", "hello from the panel")  # %%llm just works, as after %hpcllm up
    assert "hello from the panel" in capsys.readouterr().out
    assert panel.launcher.launch_button.disabled and not panel.launcher.stop_button.disabled
    panel.launcher.stop_button.click()
    until(lambda: "cancelled" in panel.launcher.outcome.text)
    assert f"Job {server.job_id} cancelled" in panel.launcher.outcome.text
    assert f"scancel {server.job_id}" in fake.commands
    assert session_for(shell).server is None and not panel.launcher.launch_button.disabled
    # No SSH or Slurm work ran on the kernel's main thread.
    assert "MainThread" not in fake.threads and fake.threads


def test_cancel_while_pending_cancels_the_job(panel, fake):
    fake.pending_probes = 10_000
    choose(panel, "Qwen3-8B")
    panel.launch()
    until(lambda: panel.launcher.handle and panel.launcher.handle.progress
          and panel.launcher.handle.progress.stage.value == "pending")
    assert "waiting for Priority" in panel.launcher.stage.value
    job = panel.launcher.handle.job_id
    panel.launcher.cancel_button.click()
    assert panel.launcher.wait(10) is None
    assert f"scancel {job}" in fake.commands and fake.jobs[job].state == "CANCELLED"
    assert f"job {job} was cancelled, its GPUs are free" in panel.launcher.outcome.text
    assert not panel.launcher.launch_button.disabled and panel.launcher.cancel_button.disabled


def test_a_failed_launch_lands_in_the_panel_as_one_paragraph(panel, fake):
    fake.sbatch_error = "sbatch: error: Invalid account or account/partition combination specified"
    choose(panel, "Qwen3-8B")
    panel.launch()
    assert panel.launcher.wait(10) is None
    text = panel.launcher.outcome.text
    assert "Invalid account" in text and "Traceback" not in text and len(text.splitlines()) == 1
    assert panel.launcher.progress.bar_style == "danger" and not panel.launcher.launch_button.disabled


def test_the_servers_table_attach_logs_stop(panel, shell, fake):
    cluster = panel.cluster
    handle = cluster.launch("gpt-oss-20b")
    job = handle.result(30).job_id
    assert panel.servers.refresh()
    assert [row[0] for row in panel.servers.rows] == [job]
    assert panel.servers.rows[0][1:6] == ("gpt-oss-20b", "vllm", "RUNNING", "gpu01", "1 × a100")
    assert not panel.servers.refresh()  # nothing changed
    panel.form.as_name.value = "llm"
    panel.servers.buttons[job]["attach"].click()
    until(lambda: "Ready: `llm`" in panel.report.text)
    assert [m.id for m in shell.user_ns["llm"].models.list()] == ["gpt-oss-20b"]
    assert session_for(shell).server.job_id == job
    panel.servers.logs(job).join(10)
    assert f"engine log of job {job}" in panel.servers.log.value
    panel.servers.stop(job).join(10)
    assert f"Job {job} cancelled" in panel.report.text and session_for(shell).server is None
    assert panel.servers.rows == [] and "No servers" in panel.servers.note.value


def test_the_table_refreshes_only_while_the_panel_is_shown_and_closing_stops_everything(panel, fake):
    time.sleep(0.2)
    assert panel.poller.polls == 0  # no view in a front end: it stands by
    panel._view_count = 1  # what the front end says when it shows the panel
    deadline = time.monotonic() + 5
    while panel.poller.polls < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel.poller.polls >= 3
    panel.close()
    time.sleep(0.1)
    polls = panel.poller.polls
    time.sleep(0.2)
    assert panel.poller.polls == polls and panel.poller.closed
    assert not threads_of(panel)


def test_panel_magic_and_function(shell, fake, capsys, monkeypatch):
    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **_: shown.append(obj))
    shell.run_line_magic("hpcllm", "panel --profile other")
    assert isinstance(shown[0], Panel) and shown[0].form.profile.value == "other"
    shown[0].close()
    result = shell.run_cell("%hpcllm panel --profile nope")
    assert isinstance(result.error_in_exec, UsageError) and "Unknown profile 'nope'" in str(result.error_in_exec)
    import jupyter_hpcllm

    made = jupyter_hpcllm.panel()
    assert isinstance(made, Panel) and made.form.profile.value == "ebi"
    made.close()


def test_an_error_from_a_python_call_shows_one_paragraph_in_a_notebook(shell, capsys):
    result = shell.run_cell("import jupyter_hpcllm\njupyter_hpcllm.panel('nope')")
    assert result.error_in_exec is not None
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "ConfigError: Unknown profile 'nope'" in shown and "Traceback" not in shown
    assert len(shown.strip().splitlines()) == 1


# --- what a review found: races between the user, the form and the background work ---------------------


def sbatches(fake) -> list[str]:
    return [c for c in fake.commands if "sbatch --parsable" in c]


def test_a_double_click_launches_once_and_cancel_frees_that_job(panel, fake):
    fake.pending_probes = 10_000
    choose(panel, "Qwen3-8B")
    panel.launcher.launch_button.click()
    panel.launcher.launch_button.click()  # the kernel runs a click on a disabled button too
    assert "in progress" in panel.launcher.outcome.text or not panel.launcher.outcome.text
    until(lambda: panel.launcher.handle is not None and panel.launcher.handle.job_id is not None)
    job = panel.launcher.handle.job_id
    panel.launcher.cancel_button.click()
    assert panel.launcher.wait(10) is None
    assert len(sbatches(fake)) == 1 and fake.jobs[job].state == "CANCELLED"
    assert threads_of(panel, "hpcllm-launch") == []


def test_a_click_right_after_a_change_launches_the_plan_of_that_change(panel, fake):
    choose(panel, "Qwen3-8B")
    panel.form.text["time"].value = "0:30:00"
    panel.launcher.launch_button.disabled = False  # as a front end might still show it
    panel.launch()  # before the planner ran: it launches once the plan of 0:30:00 is there
    server = panel.launcher.wait(30)
    assert server is not None, panel.launcher.outcome.text
    assert "--time=0:30:00" in fake.jobs[server.job_id].script


def test_a_click_right_after_an_invalid_change_launches_nothing(panel, shell, fake):
    choose(panel, "Qwen3-8B")
    shell.user_ns["Out"] = out = shell.user_ns.get("Out", {})
    panel.form.as_name.value = "Out"
    panel.launch()
    panel.settle()
    assert "Not launched" in panel.launcher.outcome.text and "IPython's own names" in panel.launcher.outcome.text
    assert sbatches(fake) == [] and shell.user_ns["Out"] is out


def test_what_the_form_changes_by_itself_is_planned_too(panel):
    choose(panel, "Qwen3-8B")
    panel.form.search.value = "zzz"  # the filter hides the chosen model: nothing is chosen now
    panel.settle()
    assert panel.plan is None and "Choose a model" in panel.plan_box.value and panel.launcher.launch_button.disabled
    panel.form.search.value = ""
    choose(panel, "Qwen3-8B")
    panel.form.set_parser_names(("qwen3_coder",), ())
    panel.form.tool_call_parser.value = "qwen3_coder"
    panel.settle()
    assert panel.plan.tool_parser == "qwen3_coder"
    panel.form.set_parser_names((), ())  # the other engine's image lacks it: the form resets to automatic
    panel.settle()
    assert panel.form.tool_call_parser.value == "(automatic)" and panel.plan.tool_parser != "qwen3_coder"


def test_a_row_acts_on_the_cluster_it_was_read_from(panel, fake):
    job = panel.cluster.launch("gpt-oss-20b").result(30).job_id
    panel.servers.refresh()
    ebi, stop = panel.cluster, panel.servers.buttons[job]["stop"]
    cancelled_on = []
    original = ebi.cancel
    ebi.cancel = lambda job_id, **kw: cancelled_on.append(ebi) or original(job_id, **kw)
    panel.form.profile.value = "other"
    panel.settle()
    assert panel.cluster is not ebi
    stop.click()  # the row still on screen from before the switch
    until(lambda: cancelled_on)
    assert cancelled_on == [ebi]


def test_a_job_stopped_by_the_magics_frees_the_panel(panel, shell, fake):
    choose(panel, "Qwen3-8B")
    panel.launch()
    server = panel.launcher.wait(30)
    shell.run_line_magic("hpcllm", "down")
    assert fake.jobs[server.job_id].state == "CANCELLED"
    assert panel.launcher.server is None and panel.launcher.stop_button.disabled
    panel.settle()
    assert not panel.launcher.launch_button.disabled


def test_one_launch_at_a_time_per_notebook(panel, shell, fake, capsys):
    fake.pending_probes = 10_000
    shell.run_line_magic("hpcllm", "up gpt-oss-20b --profile ebi --background")
    choose(panel, "Qwen3-8B")
    panel.launch().join(10)
    assert "already in progress in this notebook (gpt-oss-20b)" in panel.launcher.outcome.text
    assert not panel.launcher.launch_button.disabled  # refused, not stuck
    shell.run_line_magic("hpcllm", "down")  # still reaches the magic's launch
    assert "Stopped the launch of gpt-oss-20b" in capsys.readouterr().out
    assert len(sbatches(fake)) == 1


def test_closing_while_connecting_submits_nothing(panel, fake):
    choose(panel, "Qwen3-8B")
    connect = panel.cluster.connect
    panel.cluster.connect = lambda: time.sleep(0.3) or connect()
    panel.launch()
    panel.close()
    assert panel.launcher.wait(5) is None
    assert sbatches(fake) == []
    time.sleep(0.1)
    assert not threads_of(panel, "hpcllm-panel", "hpcllm-launch")


def test_a_busy_rows_buttons_stay_disabled_across_refreshes(panel, fake):
    fake.pending_probes = 10_000
    handle = panel.cluster.launch("Qwen3-8B")
    until(lambda: handle.job_id is not None)
    panel.servers.refresh()
    assert panel.servers.buttons[handle.job_id]["attach"].disabled  # pending: nothing to attach to yet
    release = threading.Event()
    panel.servers._act(handle.job_id, release.wait, "hpcllm-panel-test")
    fake.jobs[handle.job_id].state = "RUNNING"  # the row changes: a refresh makes new buttons
    panel.servers.refresh()
    assert all(button.disabled for button in panel.servers.buttons[handle.job_id].values())
    release.set()
    until(lambda: not panel.servers.buttons[handle.job_id]["logs"].disabled)
    handle.stop()


def test_the_debouncer_runs_one_at_a_time_and_always_sees_the_last_trigger():
    from jupyter_hpcllm.notebook.panel.background import Debounced, Report

    class Sink:
        value = ""

    lock, state = threading.Lock(), {"now": 0, "most": 0, "runs": 0, "seen": -1}
    last = {"value": 0}

    def work():
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        seen = last["value"]
        time.sleep(0.003)
        with lock:
            state["now"] -= 1
            state["runs"] += 1
            state["seen"] = seen

    debounced = Debounced(work, 0.001, Report(Sink()))

    def hammer(offset):
        for i in range(200):
            last["value"] = offset + i
            debounced.trigger()
            time.sleep(0.0005 * (i % 3))

    threads = [threading.Thread(target=hammer, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = last["value"]
    assert debounced.idle.wait(10)
    assert state["most"] == 1 and state["runs"] >= 1 and state["now"] == 0
    assert state["seen"] == final  # the last run read the value of the last trigger
    debounced.close()
    debounced.trigger()
    time.sleep(0.05)
    assert state["now"] == 0


def test_a_failed_load_says_why_and_reload_reads_again(shell, fake, monkeypatch):
    from jupyter_hpcllm.errors import ConnectionLost

    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    cluster = panel_module.cluster_for("ebi")
    models = cluster.models
    failures = iter([ConnectionLost("the connection to the login node dropped", "Check the network.")])

    def flaky():
        for failure in failures:
            raise failure
        return models()

    monkeypatch.setattr(cluster, "models", flaky)
    made = Panel(shell, "ebi", replan_delay=0.01).settle()
    try:
        assert "the connection to the login node dropped" in made.report.text
        assert "could not be read" in made.form.models_note.value and made.form.model.options == ()
        made.form.text["time"].value = "2:00:00"
        made.reload_button.click()
        made.settle()
        assert len(made.form.model.options) == 3 and made.report.text == ""
        assert made.form.text["time"].value == "2:00:00"  # the form keeps its choices
    finally:
        made.close()


# --- the second review ------------------------------------------------------------------------------------


def test_a_profile_that_cannot_load_leaves_the_form_on_the_one_before(shell, fake, tmp_path):
    (tmp_path / "c.toml").write_text('[profiles.broken]\npreset = "nonexistent"\n')
    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    made = Panel(shell, "ebi", replan_delay=0.01).settle()
    try:
        choose(made, "Qwen3-8B")
        made.form.profile.value = "broken"
        made.settle()
        assert made.form.profile.value == "ebi" and "preset 'nonexistent'" in made.report.text
        assert made.view.ok and made._plan_cluster is made.cluster and made.cluster.profile.name == "ebi"
    finally:
        made.close()


def test_cancel_as_the_server_becomes_ready_stops_it_and_the_notebook_forgets_it(panel, shell, fake):
    choose(panel, "Qwen3-8B")
    fake.pending_probes = 10_000
    panel.launch()
    until(lambda: panel.launcher.handle is not None and panel.launcher.handle.job_id is not None)
    handle = panel.launcher.handle
    stop = handle.stop

    def late_stop(*args, **kwargs):  # the click came while starting; the stop runs once it is ready
        until(handle.done)
        return stop(*args, **kwargs)

    handle.stop = late_stop
    panel.launcher.cancel_button.click()
    fake.pending_probes = 0
    until(lambda: "Cancelled" in panel.launcher.outcome.text or "cancelled" in panel.launcher.outcome.text)
    until(lambda: fake.jobs[handle.job_id].state == "CANCELLED")
    until(lambda: session_for(shell).server is None and panel.launcher.server is None)
    assert not panel.launcher.launch_button.disabled and panel.launcher.stop_button.disabled


def test_closing_right_after_submitting_leaves_the_server_to_the_notebook(panel, shell, fake, capsys):
    choose(panel, "Qwen3-8B")
    session = session_for(shell)
    start_launch = session.start_launch

    def then_close(begin):
        handle = start_launch(begin)
        panel.close()  # the user's click on ×, at that moment
        return handle

    session.start_launch = then_close
    panel.launch()
    until(lambda: session.launching is not None)
    session.launching.result(30)
    assert panel.launcher.ended.wait(10) and session.server is not None
    shell.run_line_magic("hpcllm", "down")
    assert "cancelled" in capsys.readouterr().out
    assert all(job.state == "CANCELLED" for job in fake.jobs.values())


def test_a_launch_asked_before_its_plan_happens_only_for_the_choices_it_was_asked_on(shell, fake):
    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    made = Panel(shell, "ebi", replan_delay=0.2).settle()
    try:
        choose(made, "Qwen3-8B")
        made.form.text["time"].value = "2:00:00"
        made.launch()  # clicked; the plan of 2:00:00 is not there yet
        made.form.text["time"].value = "0:05:00"  # and the user keeps typing
        assert made.launcher.wait(10) is None
        assert "the form changed after you clicked Launch" in made.launcher.outcome.text
        assert sbatches(fake) == []
        made.form.text["time"].value = "1:00:00"
        made.launch()
        made.close()  # a launch still waiting for its plan never comes; nobody waits for it forever
        assert made.launcher.wait(3) is None and sbatches(fake) == []
    finally:
        made.close()


@pytest.mark.parametrize("name", ["__builtins__", "__name__", "_sh", "_exit_code", "_7", "_i3", "Out"])
def test_the_client_never_replaces_a_name_python_or_ipython_needs(shell, name):
    from jupyter_hpcllm.notebook.session import variable_problem

    assert "own names" in variable_problem(name)
    assert variable_problem("client") is None and variable_problem("_client") is None


def test_closing_the_panel_closes_every_widget_it_made(shell, fake):
    from ipywidgets.widgets.widget import _instances  # the kernel's registry of open widgets

    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    before = set(_instances)
    made = Panel(shell, "ebi", replan_delay=0.01).settle()
    choose(made, "Qwen3-8B")
    made.form.engine_args.value = "--port 1"
    made.settle()
    assert made.form.engine_args.layout.border and not made.form.profile.layout.border  # its own layout
    made.close()
    assert set(_instances) - before == set()  # nothing left in the kernel's registry
