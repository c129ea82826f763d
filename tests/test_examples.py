"""The examples that need no cluster run as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_offline_example_runs_the_whole_lifecycle(tmp_path):
    (tmp_path / "none.toml").write_text("")  # the built-in presets only, whatever this machine has
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HPCLLM_CONFIG": str(tmp_path / "none.toml")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "offline.py")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    stages = [line.split("]")[0].strip("[ ") for line in done.stdout.splitlines() if line.startswith("[")]
    assert stages[0] == "submitted" and stages[-1] == "ready" and "loading" in stages
    assert "answer: Echo: Hello from a notebook" in done.stdout
    assert "engine: vllm (auto: the vllm image" in done.stdout and "(qwen3 in the family table)" in done.stdout
    assert "2 replicas × tensor-parallel 1: gpu:a100:2" in done.stdout
    assert "after down: CANCELLED" in done.stdout and "Traceback" not in done.stderr
