"""A FakeTransport shared by every profile's Cluster, recording the threads its commands run on (what the
tests of the faces check: no SSH work on the kernel's or the Jupyter server's main thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.edge.fake import FakeTransport
from jupyter_hpcllm.lifecycle import Cluster


def recording(transport: FakeTransport) -> FakeTransport:
    """`transport.threads`: the names of the threads that ran its commands."""
    transport.threads = set()  # type: ignore[attr-defined]
    run = transport.run

    def recording_run(command: str, **kwargs: Any) -> Any:
        transport.threads.add(threading.current_thread().name)  # type: ignore[attr-defined]
        return run(command, **kwargs)

    transport.run = recording_run  # type: ignore[method-assign]
    return transport


def shared_clusters(transport: FakeTransport) -> tuple[Callable[..., Cluster], dict[str, Cluster]]:
    """A `cluster_for(profile, prompt=None)` whose Clusters all reach `transport` (and the dict of them)."""
    clusters: dict[str, Cluster] = {}

    def cluster_for(profile: Any = None, prompt: Any = None) -> Cluster:
        resolved = load_profile(profile)
        if resolved.name not in clusters:
            clusters[resolved.name] = Cluster(resolved, transport=transport, sleep=lambda _: time.sleep(0.005))
        return clusters[resolved.name]

    return cluster_for, clusters
