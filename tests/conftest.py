"""Shared fixtures. Tests marked `cluster` need the local test cluster (tests/cluster/testcluster.sh up).

Without it they skip, except under CI=true, where a missing cluster is a failure: CI must never pass
by skipping the tests that matter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

CLUSTER_DIR = Path(os.environ.get("HPCLLM_TESTCLUSTER_DIR", "/tmp/hpcllm-testcluster"))
CLUSTER_CONFIG = CLUSTER_DIR / "config.toml"
IMAGES_DIR = Path("/tmp/hpcllm-test-images")  # readable by the cluster's user


def _cluster_problem() -> str | None:
    if not CLUSTER_CONFIG.exists():
        return f"{CLUSTER_CONFIG} is missing"
    try:
        socket.create_connection(("127.0.0.1", 2222), timeout=2).close()
    except OSError as error:
        return f"sshd on 127.0.0.1:2222 does not answer ({error})"
    return None


@pytest.fixture(scope="session")
def cluster_config() -> Path:
    problem = _cluster_problem()
    if problem:
        message = f"the local test cluster is not up: {problem}; run `bash tests/cluster/testcluster.sh up`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(reason=message)
    return CLUSTER_CONFIG


@pytest.fixture
def ssh_backend() -> str:
    """The SSH backend of the `profile` fixture; a module parametrises it to run over both backends."""
    return "paramiko"


@pytest.fixture
def profile(cluster_config, monkeypatch, ssh_backend):
    """The test cluster's profile, with HPCLLM_CONFIG pointing at its config."""
    from jupyter_hpcllm.config.profiles import load_profile

    monkeypatch.setenv("HPCLLM_CONFIG", str(cluster_config))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    return replace(load_profile("testcluster"), ssh_backend=ssh_backend)


@pytest.fixture
def cluster(profile):
    """A Cluster on the test cluster's profile (its own SSH connection, closed after the test)."""
    from jupyter_hpcllm.lifecycle import Cluster

    with Cluster(profile) as made:
        yield made


@pytest.fixture
def transport(cluster):
    return cluster.transport


@pytest.fixture
def make_image():
    """Write an engine-double image with settings (delay, crash_after_load, ...) and return its path."""
    IMAGES_DIR.mkdir(mode=0o755, exist_ok=True)
    IMAGES_DIR.chmod(0o755)

    def make(engine: str, **settings: object) -> str:
        path = IMAGES_DIR / f"{engine}-{uuid.uuid4().hex[:8]}.sif"
        lines = [f"engine={engine}", *(f"{key}={value}" for key, value in settings.items())]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
        return str(path)

    return make


@pytest.fixture
def profile_with(profile, make_image):
    """The cluster profile with engine images made for one test."""

    def build(**settings: object):
        images = {engine: make_image(engine, **settings) for engine in ("vllm", "sglang")}
        return replace(profile, images=images)

    return build


@pytest.fixture(autouse=True)
def _close_shared_clusters():
    """`hpc.up(profile=...)` keeps one Cluster (one SSH connection) per profile: close them after each test."""
    yield
    from jupyter_hpcllm.lifecycle import shared as module

    with module._shared_lock:
        clusters = list(module._shared.values())
        module._shared.clear()
    for made in clusters:
        made.close()


@pytest.fixture
def no_leftover_jobs(cluster):
    """After the test, no job of ours may hold an allocation."""
    yield
    from jupyter_hpcllm.edge.slurm import JobState, parse_queue, queue_command

    rows = [r for r in parse_queue(cluster.transport.run(queue_command()).stdout) if r.is_ours]
    # COMPLETING: cancelled, Slurm is still cleaning up. Anything else was left behind.
    left = [r for r in rows if r.state is not JobState.COMPLETING]
    for row in rows:
        cluster.cancel(row.job_id)
    assert not left, f"jobs left behind: {[(r.job_id, r.raw_state) for r in left]}"


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """Processes a test stopped (SIGSTOP, a silent drop): resumed and killed afterwards, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt in the main thread, as in a terminal or a kernel, however this run was
    started: a run started in the background of a non-interactive shell inherits SIGINT ignored, and then
    `_thread.interrupt_main()` does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
