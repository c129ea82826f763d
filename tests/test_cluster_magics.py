"""The magics in a real InteractiveShell, and the example notebook in a real kernel, on the local cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernel_session import run_notebook

from jupyter_hpcllm.edge.slurm import JobState, parse_queue, queue_command
from jupyter_hpcllm.lifecycle import Stage

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def shell(cluster_config, monkeypatch, make_image, tmp_path):
    monkeypatch.setenv("HPCLLM_CONFIG", str(cluster_config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # A profile of our own with fast-starting images: no twin jobs across tests.
    config = tmp_path / "config.toml"
    text = cluster_config.read_text()
    for engine in ("vllm", "sglang"):
        text = text.replace(f"/opt/hpcllm-testcluster/images/{engine}.sif", make_image(engine, delay=0.3))
    config.write_text(text)
    monkeypatch.setenv("HPCLLM_CONFIG", str(config))
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_hpcllm")
    yield ip
    magics = ip.magics_manager.registry["HpcllmMagics"]
    if magics.server is not None:
        magics.server.down()
    InteractiveShell.clear_instance()


def test_up_llm_tools_chat_status_down(shell, capsys, transport):
    shell.run_line_magic("hpcllm", "up Qwen3-8B --engine sglang")
    out = capsys.readouterr().out
    assert "is running on gpu0" in out and "Ready: `client` talks to Qwen3-8B (sglang" in out
    client = shell.user_ns["client"]
    assert [m.id for m in client.models.list()] == ["Qwen3-8B"]

    shell.user_ns["topic"] = "GPUs"
    shell.run_cell_magic("llm", "", "Tell me about {topic} with {'braces': {'nested': 1}}")
    out = capsys.readouterr().out
    assert "Echo: Tell me about GPUs with {'braces': {'nested': 1}}" in out
    assert "[reasoning] Thinking about: Tell me about GPUs" in out  # Qwen3 on SGLang: reasoning_content

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    shell.user_ns["add"] = add
    shell.run_cell_magic("llm", "--tools add --out total", "please add a=2 b=40")
    out = capsys.readouterr().out
    assert '[tool] add({"a": 2, "b": 40}) -> 42' in out and "Result: 42" in out
    assert shell.user_ns["total"].endswith("Result: 42")

    shell.run_cell_magic("llm", "--new", "first")
    shell.run_cell_magic("llm", "--chat --reasoning hide", "second")
    magics = shell.magics_manager.registry["HpcllmMagics"]
    assert [m["content"] for m in magics.history if m["role"] == "user"] == ["first", "second"]
    assert "[reasoning]" not in capsys.readouterr().out.split("Echo: first")[-1]

    shell.run_cell_magic("llm", "-f code --no-stream", "print(1)")
    assert shell.rl_next_input == "Echo: print(1)"

    value = shell.run_cell_magic("llm", "-f json --out data", 'Reply with {"answer": 42, "items": [1, 2]}')
    assert value == {"answer": 42, "items": [1, 2]} == shell.user_ns["data"]

    shell.run_line_magic("hpcllm", "status")
    out = capsys.readouterr().out
    assert "RUNNING" in out and "Qwen3-8B" in out and "http://127.0.0.1:" in out
    job = magics.server.job_id
    shell.run_line_magic("hpcllm", "down")
    assert f"Job {job} cancelled" in capsys.readouterr().out
    assert job not in [r.job_id for r in parse_queue(transport.run(queue_command()).stdout)
                       if r.state is not JobState.COMPLETING]
    with pytest.raises(UsageError, match="%%llm has no server yet"):
        shell.run_cell_magic("llm", "", "anyone there?")


def test_a_restarted_kernel_reattaches_without_a_new_job(shell, capsys):
    shell.run_line_magic("hpcllm", "up gpt-oss-20b")
    first = shell.magics_manager.registry["HpcllmMagics"].server
    first.close()  # the kernel restarts: the forward goes, the job stays
    InteractiveShell.clear_instance()
    fresh = InteractiveShell.instance()
    fresh.run_line_magic("load_ext", "jupyter_hpcllm")
    capsys.readouterr()
    fresh.run_line_magic("hpcllm", "up gpt-oss-20b --as llm_client")
    out = capsys.readouterr().out
    assert f"Reusing job {first.job_id}" in out and "Submitted" not in out
    assert fresh.user_ns["llm_client"].models.list().data[0].id == "gpt-oss-20b"
    fresh.magics_manager.registry["HpcllmMagics"].server.down()


def test_interrupting_up_cancels_the_job(shell, capsys, transport, monkeypatch, sigint_raises):
    """Ctrl-C in the kernel (a KeyboardInterrupt in the main thread): the job is cancelled, the cell fails."""
    import _thread

    from jupyter_hpcllm.notebook import progress

    interrupted = []

    def interrupt(self, event):
        print(event.message)
        if event.stage in (Stage.PENDING, Stage.RUNNING) and not interrupted:
            interrupted.append(event.job_id)
            _thread.interrupt_main()

    monkeypatch.setattr(progress.ProgressView, "__call__", interrupt)
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("hpcllm", "up Qwen3-8B")
    job = capsys.readouterr().out.split("Submitted job ")[1].split(" ")[0]
    assert job == interrupted[0]
    assert f"Interrupted: job {job} was cancelled" in str(caught.value)
    assert job not in [r.job_id for r in parse_queue(transport.run(queue_command()).stdout)
                       if r.state is not JobState.COMPLETING]


def test_background_up(shell, capsys):
    shell.run_line_magic("hpcllm", "up Qwen2.5-7B-Instruct --background --as bg")
    assert "in the background" in capsys.readouterr().out
    magics = shell.magics_manager.registry["HpcllmMagics"]
    magics.launching.result(120)
    assert magics.launching.join(10)  # the done callbacks (the client put in place) ran
    assert "bg" in shell.user_ns and magics.server.model == "Qwen2.5-7B-Instruct"


def test_background_up_can_be_stopped(shell, capsys, make_image, transport, monkeypatch, tmp_path):
    slow = make_image("vllm", delay=60)
    config = tmp_path / "slow.toml"
    config.write_text(Path(os.environ["HPCLLM_CONFIG"]).read_text().replace(
        next(line.split('"')[1] for line in Path(os.environ["HPCLLM_CONFIG"]).read_text().splitlines()
             if line.startswith("vllm = ")), slow))
    monkeypatch.setenv("HPCLLM_CONFIG", str(config))
    shell.run_line_magic("hpcllm", "up Qwen3-8B --background")
    magics = shell.magics_manager.registry["HpcllmMagics"]
    handle = magics.launching
    deadline = 60
    import time

    while handle.job_id is None or not handle.submitted:
        time.sleep(0.1)
        deadline -= 0.1
        assert deadline > 0, "the background launch never submitted"
    shell.run_line_magic("hpcllm", "status")
    assert "Launching Qwen3-8B" in capsys.readouterr().out
    shell.run_line_magic("hpcllm", "down")
    out = capsys.readouterr().out
    assert f"Stopped the launch of Qwen3-8B: job {handle.job_id} was cancelled" in out
    assert handle.cancelled() and magics.server is None
    assert handle.job_id not in [r.job_id for r in parse_queue(transport.run(queue_command()).stdout)
                                 if r.state is not JobState.COMPLETING]


def test_use_any_endpoint(shell, capsys, monkeypatch):
    shell.run_line_magic("hpcllm", "up gpt-oss-20b --as launched")
    magics = shell.magics_manager.registry["HpcllmMagics"]
    server = magics.server
    monkeypatch.setenv("MY_KEY", server.api_key)
    shell.run_line_magic("hpcllm", f"use {server.base_url} --key-env MY_KEY")
    assert "now use gpt-oss-20b" in capsys.readouterr().out
    shell.run_cell_magic("llm", "", "via use")
    assert "Echo: via use" in capsys.readouterr().out
    monkeypatch.setenv("MY_KEY", "wrong")
    shell.run_line_magic("hpcllm", f"use {server.base_url} --key-env MY_KEY --model gpt-oss-20b")
    with pytest.raises(UsageError, match="refused the API key"):
        shell.run_cell_magic("llm", "", "refused")
    server.down()


def test_the_example_notebook_runs(cluster_config, tmp_path):
    env = {"HPCLLM_CONFIG": str(cluster_config), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    joined = run_notebook(ROOT / "examples" / "quickstart.ipynb", env, tmp_path, timeout=180)
    assert "Ready: `client` talks to gpt-oss-20b" in joined
    assert "Echo: Say hello to the cluster" in joined
    assert "<details><summary>Reasoning</summary>" in joined  # rich Markdown in a real kernel
    assert "Result: " in joined and "Heidelberg" in joined
    assert "cancelled" in joined


def test_a_server_gone_from_outside_is_explained(shell, capsys, transport):
    shell.run_line_magic("hpcllm", "up gpt-oss-20b")
    magics = shell.magics_manager.registry["HpcllmMagics"]
    magics.server.cluster.cancel(magics.server.job_id)
    capsys.readouterr()
    result = shell.run_cell("%%llm\nstill there?")
    assert isinstance(result.error_in_exec, UsageError)  # the cell fails: "Run All" stops here
    message = str(result.error_in_exec)
    assert "%%llm cannot reach the server" in message and "`%hpcllm status` shows it" in message
    assert f"Cannot open a channel to {magics.server.node}:{magics.server.port}" in message  # what the forward met
    assert len(message.strip().splitlines()) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    magics.server.close()
    magics.server = None
