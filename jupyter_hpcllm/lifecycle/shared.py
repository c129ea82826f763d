"""Conveniences over one shared ``Cluster`` per profile: ``up``, ``launch``, ``attach``, ``list_servers``,
``cancel``, so a notebook does not open a connection per call (``cluster_for`` gives the shared one)."""

from __future__ import annotations

import threading
from typing import Any

from ..config.options import LaunchOptions
from ..config.profiles import Profile, load_profile
from ..edge.slurm import JobState
from ..edge.transport import Prompt
from .cluster import Cluster
from .handle import LaunchHandle
from .progress import ProgressCallback
from .server import Server, ServerInfo

__all__ = ["attach", "cancel", "cluster_for", "launch", "list_servers", "up"]


_shared: dict[str, Cluster] = {}
_shared_lock = threading.Lock()


def cluster_for(profile: Profile | str | None = None, *, prompt: Prompt | None = None) -> Cluster:
    """The shared `Cluster` of a profile (made on first use, with `prompt` to answer what the login node
    asks; making one does not connect)."""
    resolved = profile if isinstance(profile, Profile) else load_profile(profile)
    key = repr(resolved)
    with _shared_lock:
        cluster = _shared.get(key)
        if cluster is None:
            cluster = _shared[key] = Cluster(resolved, prompt=prompt)
        return cluster


def up(model: str | LaunchOptions, *, profile: Profile | str | None = None,
       on_progress: ProgressCallback | None = None, **options: Any) -> Server:
    """Start (or reuse) a model server and return it once its OpenAI API answers.

    The model's facts (config, chat template, model card, size) are read from the cluster first, and the
    engine images asked what they hold: they choose the engine, the parsers and, unless `gpus` /
    `gpu_type` say otherwise, the smallest allocation that holds the model. `options` are
    `LaunchOptions` fields (gpus, gpu_type, engine, replicas, speculative, time, cpus, mem, partition,
    account, qos, tool_call_parser, reasoning_parser, engine_args, timeout, renew, reuse).
    """
    return cluster_for(profile).up(model, on_progress=on_progress, **options)


def launch(model: str | LaunchOptions, *, profile: Profile | str | None = None,
           on_progress: ProgressCallback | None = None, **options: Any) -> LaunchHandle:
    """Like `up`, but returns at once with a `LaunchHandle` (progress, cancel, result)."""
    return cluster_for(profile).launch(model, on_progress=on_progress, **options)


def attach(job_id: str, *, profile: Profile | str | None = None, on_progress: ProgressCallback | None = None,
           timeout: float | None = None) -> Server:
    """Connect to a job started earlier (by this or another session); waits if it is still starting."""
    return cluster_for(profile).attach(job_id, on_progress=on_progress, timeout=timeout)


def list_servers(profile: Profile | str | None = None) -> list[ServerInfo]:
    """This user's jupyter-hpcllm jobs on the cluster, pending or running."""
    return cluster_for(profile).list()


def cancel(job_id: str, *, profile: Profile | str | None = None, wait: float = 15.0) -> JobState:
    """Cancel a job and free its GPUs."""
    return cluster_for(profile).cancel(job_id, wait=wait)
