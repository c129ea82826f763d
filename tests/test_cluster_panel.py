"""The launch panel in a real kernel against the local test cluster: the test sets the widgets' values and
clicks their buttons in the kernel, as a person would in the browser, and checks Slurm from outside."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from kernel_session import KernelSession, run_notebook

from jupyter_hpcllm.edge.slurm import parse_queue, queue_command

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]


def _later_profile(text: str) -> str:
    """The test cluster's profile again, as `testcluster-later`, whose jobs may start only in an hour: they
    stay pending (Slurm's reason: BeginTime)."""
    sections = re.split(r"(?m)^(?=\[)", text)
    ours = [s for s in sections if re.match(r"\[profiles\.testcluster[\].]", s)]
    copy = "".join(s.replace("[profiles.testcluster", "[profiles.testcluster-later", 1) for s in ours)
    return copy.replace("[profiles.testcluster-later]\n", "[profiles.testcluster-later]\n"
                        'extra_sbatch = ["--begin=now+3600"]\n', 1)


@pytest.fixture
def kernel(cluster_config, make_image, tmp_path):
    text = cluster_config.read_text()
    for engine in ("vllm", "sglang"):
        text = text.replace(f"/opt/hpcllm-testcluster/images/{engine}.sif", make_image(engine, delay=0.3))
    config = tmp_path / "config.toml"
    config.write_text(text + "\n" + _later_profile(text))
    session = KernelSession({"HPCLLM_CONFIG": str(config), "XDG_CACHE_HOME": str(tmp_path / "cache")}, tmp_path)
    session.run("import jupyter_hpcllm, time")
    yield session
    try:
        session.run("if 'panel' in globals(): panel.close()")
    finally:
        session.close()


def _queue(transport, job: str) -> list[str]:
    return [row.raw_state for row in parse_queue(transport.run(queue_command()).stdout) if row.job_id == job]


WAIT_FOR = '''
def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, panel.launcher.outcome.text
        time.sleep(0.05)
'''


def test_launch_from_the_panel_reaches_ready_the_client_answers_and_stop_frees_the_gpus(kernel, transport):
    out = kernel.run(WAIT_FOR + '''
panel = jupyter_hpcllm.panel().settle(120)
print("models:", sorted(name for _, name in panel.form.model.options))
panel.form.model.value = "Qwen3-8B"
panel.settle(60)
print("plan:", panel.view.ok, panel.view.headline, "|", panel.view.cost)
print("launch enabled:", not panel.launcher.launch_button.disabled)
panel.launcher.launch_button.click()
server = panel.launcher.wait(300)
print("ready:", server.job_id, panel.launcher.progress.value)
print("stages:", [p.stage.value for p in panel.launcher.handle.history])
''')
    assert "Qwen3-8B" in out and "gpt-oss-20b" in out
    assert "plan: True needs ≈ " in out and "→ 1 × a100, tensor-parallel 1" in out and "= 1 GPU-hour (" in out
    assert "launch enabled: True" in out
    job = re.search(r"ready: (\d+) 1.0", out).group(1)
    assert "'submitted'" in out and "'ready'" in out
    assert _queue(transport, job) == ["RUNNING"]

    out = kernel.run('reply = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", '
                     '"content": "hi from the panel"}])\nprint(reply.choices[0].message.content)')
    assert "Echo: hi from the panel" in out
    out = kernel.run("%%llm --no-stream\nand from the next cell")  # %%llm works as after %hpcllm up
    assert "Echo: and from the next cell" in out

    kernel.run("panel.launcher.stop_button.click()\nwait_for(lambda: 'cancelled' in panel.launcher.outcome.text)")
    assert f"Job {job} cancelled" in kernel.run("print(panel.launcher.outcome.text)")
    deadline = time.monotonic() + 30
    while _queue(transport, job) not in ([], ["COMPLETING"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _queue(transport, job) in ([], ["COMPLETING"])


def test_cancel_while_pending_leaves_the_queue_empty(kernel, transport):
    out = kernel.run(WAIT_FOR + '''
panel = jupyter_hpcllm.panel("testcluster-later").settle(120)
panel.form.model.value = "gpt-oss-20b"
panel.settle(60)
panel.launcher.launch_button.click()
wait_for(lambda: panel.launcher.handle is not None and panel.launcher.handle.progress is not None
         and panel.launcher.handle.progress.stage.value == "pending")
print("pending:", panel.launcher.handle.job_id, panel.launcher.stage.value)
''')
    job = re.search(r"pending: (\d+)", out).group(1)
    assert "BeginTime" in out and _queue(transport, job) == ["PENDING"]
    out = kernel.run("panel.launcher.cancel_button.click()\nprint(panel.launcher.wait(60))\n"
                     "print(panel.launcher.outcome.text)")
    assert f"job {job} was cancelled, its GPUs are free" in out
    assert _queue(transport, job) == []


def test_an_impossible_combination_cannot_be_launched_and_says_why(kernel, transport):
    out = kernel.run('''
panel = jupyter_hpcllm.panel().settle(120)
panel.form.model.value = "gpt-oss-120b"
panel.settle(60)
print("suggested:", panel.form.gpus.value, panel.form.gpu_type.value)
panel.form.gpu_type.value = "a100"
panel.form.gpus.value = 1
panel.settle(60)
print("ok:", panel.view.ok, "field:", panel.view.field)
print("why:", panel.view.problem)
print("launch disabled:", panel.launcher.launch_button.disabled)
panel.launcher.launch_button.click()
time.sleep(1)
print("handle:", panel.launcher.handle)
''')
    assert "ok: False field: gpus" in out and "is too small" in out and "launch disabled: True" in out
    assert "handle: None" in out
    assert not [row for row in parse_queue(transport.run(queue_command()).stdout) if row.is_ours]


def test_the_panel_example_notebook_runs(cluster_config, tmp_path, transport):
    env = {"HPCLLM_CONFIG": str(cluster_config), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    joined = run_notebook(ROOT / "examples" / "panel.ipynb", env, tmp_path, timeout=300)
    assert "['gpt-oss-120b', 'gpt-oss-20b']" in joined
    assert "→ 1 × a100, tensor-parallel 1" in joined and "GPU-hour" in joined
    assert "--port is set by jupyter-hpcllm" in joined and "Launch disabled: True" in joined
    assert "Launch disabled: False" in joined
    assert "Ready: `client` talks to gpt-oss-20b" in joined
    assert "Echo: Say hello to the cluster" in joined  # %%llm, right after the panel's launch
    assert re.search(r"\('\d+', 'gpt-oss-20b', 'vllm', 'RUNNING', 'gpu0\d', '1 × a100'", joined)
    job = re.search(r"Job (\d+) cancelled", joined).group(1)
    assert _queue(transport, job) in ([], ["COMPLETING"])
    assert "application/vnd.jupyter.widget-view+json" in joined  # the panel was displayed as a widget
