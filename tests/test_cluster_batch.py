"""Maps on the local cluster: through a real job (its relay's metrics pace the map, its script gives the
provenance), across a killed sshd (the forward reconnects and the requests in flight are retried, none
lost, none answered twice), cancelled with nothing left running on the engine; and the example notebook."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from kernel_session import run_notebook
from processes import sshd_pids
from test_cluster_resilience import local_port

import jupyter_hpcllm as hpc
from jupyter_hpcllm.lifecycle import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]
ROOT = Path(__file__).resolve().parent.parent


def test_a_map_through_a_job_keeps_its_pace_provenance_and_carries_on_across_a_killed_sshd(profile_with, tmp_path):
    with Cluster(profile_with(delay=0, token_delay=0.005)) as cluster:
        server = cluster.up("Qwen3-8B", gpus=1, timeout=120)
        try:
            killed: list[int] = []
            statuses = []

            def kill_sshd_once(status) -> None:
                statuses.append(status)
                if status.done >= 40 and not killed:
                    killed.extend(sshd_pids(local_port(cluster.transport)))  # type: ignore[arg-type]
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)

            prompts = [f"question {i} " + "w " * 20 for i in range(300)]
            answers = hpc.map(prompts, server.client(), cache=tmp_path / "answers.sqlite3", progress=False,
                              backoff=0.2, on_status=kill_sshd_once)
            assert killed, "the map ended before the connection could be killed"
            assert list(answers) == [f"Echo: {p}" for p in prompts] and answers.failures == []
            assert statuses[-1].retries > 0  # the requests the drop broke were sent again
            assert max(status.limit for status in statuses) > 16  # the engine's metrics raised the pace
            record = answers.provenance
            assert record["job_id"] == server.job_id and record["engine"] == server.engine
            assert record["image"].endswith(".sif") and record["tool_call_parser"] == "hermes"
            assert record["reasoning_parser"] == "qwen3" and record["node"] == server.node
            metrics = server.metrics(rate_within=0)
            assert metrics.running == 0 and metrics.waiting == 0
        finally:
            cluster.cancel(server.job_id)
            server.close()


def test_an_interrupted_map_leaves_nothing_running_on_the_job(profile_with, tmp_path):
    with Cluster(profile_with(delay=0, token_delay=0.05)) as cluster:
        server = cluster.up("Qwen3-8B", gpus=1, timeout=120)
        try:
            def interrupt(status) -> None:
                if status.done >= 5:
                    raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                hpc.map([f"slow {i} " + "w " * 40 for i in range(200)], server, cache=tmp_path / "a.sqlite3",
                        progress=False, on_status=interrupt)
            deadline = time.monotonic() + 10
            while True:
                metrics = server.metrics(rate_within=0)
                if metrics.running == 0 and metrics.waiting == 0:
                    break
                assert time.monotonic() < deadline, f"still running on the engine: {metrics}"
                time.sleep(0.1)
        finally:
            cluster.cancel(server.job_id)
            server.close()


def test_the_batch_example_notebook_runs(cluster_config, tmp_path):
    env = {"HPCLLM_CONFIG": str(cluster_config), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    joined = run_notebook(ROOT / "examples" / "batch.ipynb", env, tmp_path, timeout=240)
    assert "Ready: `client` talks to gpt-oss-20b" in joined
    assert "Sleep in 64 fruit flies: Echo: In one word, the field of biology of this paper: Sleep in 64" in joined
    assert "The answers are in `papers_with_field`" in joined
    assert "organism=" in joined and "sample_size" in joined  # the pydantic answers, and as a table
    assert "Done: 6 items" in joined and "0 failed" in joined
    assert '"tool_call_parser": "openai"' in joined  # %hpcllm provenance
    assert "cancelled" in joined
