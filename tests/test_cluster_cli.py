"""The `hpcllm` command line against the local cluster, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]


def hpcllm(*argv: str, config, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_hpcllm.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HPCLLM_CONFIG": str(config)})


def test_up_list_status_logs_forward_down(cluster_config):
    up = hpcllm("up", "Qwen2.5-7B-Instruct", "--gpus", "2", "--", "--max-model-len", "8192", config=cluster_config)
    assert up.returncode == 0, up.stderr
    job = re.search(r"Job (\d+) serves 'Qwen2.5-7B-Instruct'", up.stdout).group(1)
    for stage in ("Submitted job", "is running on", "weights 4/4", "Ready:"):
        assert stage in up.stderr
    try:
        listed = hpcllm("list", config=cluster_config).stdout
        assert re.search(rf"^{job}\s+RUNNING\s+Qwen2.5-7B-Instruct\s+vllm\s+2 × a100\s+gpu0[12]", listed, re.MULTILINE)
        status = hpcllm("status", config=cluster_config).stdout  # the only job: no id needed
        assert f"Job {job}: RUNNING" in status and "port" in status
        logs = hpcllm("logs", job, "-n", "3", config=cluster_config).stdout
        assert "Application startup complete." in logs
        assert "'max_model_len': 8192" in hpcllm("logs", job, "-n", "50", config=cluster_config).stdout

        forward = subprocess.Popen([sys.executable, "-m", "jupyter_hpcllm.cli", "forward", job, "--show-key"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "HPCLLM_CONFIG": str(cluster_config)})
        try:
            url = forward.stdout.readline().strip().split("=", 1)[1]
            key = forward.stdout.readline().strip().split("=", 1)[1]
            request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.load(response)["data"][0]["id"] == "Qwen2.5-7B-Instruct"
        finally:
            forward.terminate()
            forward.wait(10)
        follow = subprocess.Popen([sys.executable, "-m", "jupyter_hpcllm.cli", "logs", "-f", job],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "HPCLLM_CONFIG": str(cluster_config)})
    finally:
        down = hpcllm("down", job, config=cluster_config)
    # `logs -f` printed the log and ends by itself once the job has ended
    followed, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0 and "Application startup complete." in followed
    assert down.returncode == 0 and f"Job {job} cancelled" in down.stdout
    assert job not in hpcllm("list", config=cluster_config).stdout


def test_cluster_errors_are_one_paragraph(cluster_config, tmp_path):
    config = tmp_path / "config.toml"
    text = cluster_config.read_text().replace("port = 2222", "port = 1")
    config.write_text(text)
    done = hpcllm("list", config=config)
    assert done.returncode == 1 and "Cannot reach hpcuser@127.0.0.1 port 1" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = hpcllm("up", "no-such-model", config=cluster_config)
    assert done.returncode == 1 and "is not under /srv/hpcllm/models" in done.stderr and "Traceback" not in done.stderr


def test_renew_extend_and_the_walltime_warning_from_the_command_line(cluster_config):
    up = hpcllm("up", "Qwen3-8B", "--gpus", "1", "--time", "8", config=cluster_config)
    assert up.returncode == 0, up.stderr
    job = re.search(r"Job (\d+) serves", up.stdout).group(1)
    successor = None
    try:
        status = hpcllm("status", job, config=cluster_config)
        assert "reaches its time limit in" in status.stderr and f"hpcllm renew {job}" in status.stderr
        assert "idle" in status.stdout  # the relay's account: in use / idle N min, ends itself in M min
        refused = hpcllm("renew", job, "--extend", "30", config=cluster_config)
        assert refused.returncode == 1 and "only administrators can raise" in refused.stderr
        renewed = hpcllm("renew", job, config=cluster_config)
        assert renewed.returncode == 0, renewed.stderr
        successor = re.search(r"Job (\d+) took over from job " + job, renewed.stdout).group(1)
        assert successor != job and "Traceback" not in renewed.stderr
        listed = hpcllm("list", config=cluster_config).stdout
        assert re.search(rf"^{successor}\s+RUNNING", listed, re.MULTILINE)
    finally:
        hpcllm("down", job, config=cluster_config)
        if successor:
            hpcllm("down", successor, config=cluster_config)
