"""What the JupyterLab sidebar asks, answered with JSON models over the core: profiles, models, plans,
servers, launches, logs and live metrics. Blocking (SSH, Slurm) work runs in the manager's thread pool,
never on the Jupyter server's event loop. `labextension/src/models.ts` mirrors these models.

A server launched here is not held by the Jupyter server: once it is ready its lease is given back, so a
job nobody attaches to ends itself after its idle timeout, as the commons wants. Metrics are read through
a forward that holds no lease, through the relay's /hpcllm/metrics, which does not count as use.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .. import views
from ..config.options import ENGINES, LaunchOptions, option_kind, option_specs
from ..config.profiles import load_profile, profile_names
from ..errors import ConfigError, HpcllmError, InvalidOption, JobNotFound, ServerNotReady
from ..lifecycle import (
    Cluster,
    JobState,
    LaunchHandle,
    Progress,
    Renewal,
    Server,
    ServerInfo,
    cluster_for,
    walltime_warning,
)
from .models import (
    LaunchModel,
    LogsModel,
    MetricsModel,
    ModelModel,
    OptionModel,
    ParserNamesModel,
    PlanModel,
    ProfileModel,
    ProfilesModel,
    ServerModel,
    StoppedModel,
)

__all__ = ["LabManager"]

METRICS_ATTACH_SECONDS = 5.0  # a running job's relay answers at once; a loading engine is "not ready" now
WATCH_SECONDS = 600.0  # a job's metrics forward, unused this long, is closed
LAUNCH_KEPT_SECONDS = 3600.0  # a launch that ended is forgotten after this


class _Task(Protocol):
    """What the sidebar follows: a LaunchHandle, or a renewal."""

    @property
    def progress(self) -> Progress | None: ...
    @property
    def job_id(self) -> str | None: ...
    def done(self) -> bool: ...
    def exception(self) -> BaseException | None: ...
    def cancelled(self) -> bool: ...
    def stop(self, timeout: float = ...) -> object: ...


@dataclass(frozen=True)
class _Tracked:
    profile: str
    model: str
    task: _Task
    started: float


class LabManager:
    """One per Jupyter server. `clusters` gives the Cluster of a profile name (default: one shared per
    profile; a login that would ask for a password fails with a clear error instead)."""

    def __init__(self, clusters: Callable[[str], Cluster] | None = None, workers: int = 8) -> None:
        self._clusters = clusters or (lambda name: cluster_for(name))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="hpcllm-lab")
        self._launches: dict[str, _Tracked] = {}  # launches and renewals, by id
        # (profile, job) -> (a Server without a lease, when last asked), and a lock per job for attaching
        self._watched: dict[tuple[str, str], tuple[Server, float]] = {}
        self._gates: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """The Jupyter server stops: launches not ready yet are stopped (nobody is left to see them; their
        jobs are cancelled), the metrics forwards closed."""
        with self._lock:
            launches, self._launches = list(self._launches.values()), {}
            watched, self._watched = list(self._watched.values()), {}
        for tracked in launches:
            if not tracked.task.done():  # (a renewal's successor is cancelled unless it took over already)
                tracked.task.stop(timeout=30)
        for server, _ in watched:
            server.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def cluster(self, profile: str | None) -> Cluster:
        """The profile's Cluster (an unknown profile: load_profile's clear error, with the known ones)."""
        return self._clusters(profile or profile_names()[1])

    # -- what there is

    def profiles(self) -> ProfilesModel:
        names, default = profile_names()
        return {"profiles": names, "default": default}

    def profile(self, name: str | None) -> ProfileModel:
        """A profile as a launch form offers it: engines, GPU types and counts, defaults."""
        profile = load_profile(name)
        # With both images the default is `auto`: the engine whose image loads the model (planning.selection).
        default = "auto" if len(profile.engines) > 1 else profile.default_engine
        return {"name": profile.name, "host": profile.host, "default_engine": default,
                "engines": list(profile.engines), "model_root": profile.model_root,
                "gpu_types": [{"name": g.name, "memory_gb": g.memory_gb, "counts": list(g.counts)}
                              for g in profile.gpu_types.values()],
                "default_gpu_type": profile.default_gpu_type,
                "defaults": {"time": profile.time, "cpus": profile.cpus, "mem": profile.mem,
                             "partition": profile.partition, "account": profile.account,
                             "idle_timeout": profile.idle_timeout}}

    def options(self) -> list[OptionModel]:
        """Every launch option a form offers, from their one definition (`config.options`)."""
        return [{"name": name, "kind": option_kind(hint), "help": spec.help, "group": spec.group,
                 "choices": list(spec.choices) if spec.choices else None,
                 "minimum": spec.minimum, "maximum": spec.maximum}
                for name, hint, _, spec in option_specs()]

    def parsers(self, profile: str | None, engine: str | None) -> ParserNamesModel:
        """The parser names the engine's image registers, for a form's suggestions; if the image cannot
        be asked, why (the automatic choice still works)."""
        cluster = self.cluster(profile)
        engine = engine or cluster.profile.default_engine
        if engine not in (*ENGINES, "auto"):
            raise InvalidOption("engine", f"{engine!r} is not an engine.", f"Use one of: {', '.join(ENGINES)}, auto.")
        try:
            names = cluster.parsers(engine)  # auto: the profile's default engine's image
        except HpcllmError as error:
            return {"engine": engine, "tool": [], "reasoning": [], "problem": str(error)}
        return {"engine": engine, "tool": list(names.get("tool", ())), "reasoning": list(names.get("reasoning", ())),
                "problem": None}

    def models(self, profile: str | None) -> list[ModelModel]:
        cluster = self.cluster(profile)
        return [{"name": m.facts.name, "size_gb": round(m.facts.weight_gb, 1), "family": m.family,
                 "suggestion": m.suggestion, "problem": m.problem,
                 "parsers": {engine: {"tool": p.tool, "reasoning": p.reasoning} for engine, p in m.parsers.items()}}
                for m in cluster.models()]

    def plan(self, body: Mapping[str, Any]) -> PlanModel:
        """A launch form's values → the plan (or why not, with the option at fault): what the panel shows."""
        profile, options = _launch_body(body)
        try:
            plan = self.cluster(profile).plan(LaunchOptions.from_mapping(options))
        except HpcllmError as error:
            return _plan_model(views.problem_view(error), None)
        return _plan_model(views.plan_view(plan), plan.script)

    # -- servers

    def servers(self, profile: str | None) -> list[ServerModel]:
        cluster = self.cluster(profile)
        return [_server_model(info, cluster) for info in cluster.list()]

    def server(self, profile: str | None, job: str) -> ServerModel:
        cluster = self.cluster(profile)
        return _server_model(cluster.status(job), cluster)

    def stop(self, profile: str | None, job: str) -> StoppedModel:
        cluster = self.cluster(profile)
        state = cluster.cancel(job)
        self._forget((profile or "", job))
        return {"job_id": job, "state": state.value, "message": views.stopped_message(job, state.value)}

    def logs(self, profile: str | None, job: str, lines: int) -> LogsModel:
        if not 1 <= lines <= 100_000:
            raise ConfigError(f"lines must be from 1 to 100000, not {lines}.")
        return {"job_id": job, "text": self.cluster(profile).logs(job, lines=lines)}

    def metrics(self, profile: str | None, job: str) -> MetricsModel:
        """The engine's live numbers, through a forward that holds no lease and a relay route that is not
        use (kept for the next call; one attach per job however many tabs ask at once)."""
        key = (profile or "", job)
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            self._sweep()
            with self._lock:
                watched = self._watched.get(key)
            if watched is None or watched[0].closed:
                cluster = self.cluster(profile)
                info = cluster.status(job)
                if info.state is not JobState.RUNNING:
                    raise ServerNotReady(f"Job {job} is {info.state.value}: its metrics come once it runs.")
                server = cluster.attach(job, timeout=METRICS_ATTACH_SECONDS, hold=False)
                with self._lock:
                    self._watched[key] = (server, time.monotonic())
            else:
                server = watched[0]
            try:
                numbers = server.metrics()
            except ServerNotReady as error:
                if "not available" not in error.message:  # no answer at all: the job moved or ended
                    self._forget(key, server)
                raise
            with self._lock:
                self._watched[key] = (server, time.monotonic())
        return {"job_id": job, "running": numbers.running, "waiting": numbers.waiting, "kv_cache": numbers.kv_cache,
                "tokens_per_second": numbers.tokens_per_second, "generation_tokens": numbers.generation_tokens,
                "rows": [list(row) for row in views.metrics_rows(numbers)]}

    def _sweep(self) -> None:
        """Close the forwards nobody asked through for WATCH_SECONDS (a tab closed, a job gone), and forget
        launches that ended an hour ago."""
        now = time.monotonic()
        with self._lock:
            idle = [(key, server) for key, (server, used) in self._watched.items() if now - used > WATCH_SECONDS]
            self._launches = {launch_id: tracked for launch_id, tracked in self._launches.items()
                              if not (tracked.task.done() and now - tracked.started > LAUNCH_KEPT_SECONDS)}
        for key, server in idle:
            self._forget(key, server)

    def _forget(self, key: tuple[str, str], server: Server | None = None) -> None:
        """Close the watch of this job (only this Server's, when given: another thread may have made anew)."""
        with self._lock:
            watched = self._watched.get(key)
            if watched is None or (server is not None and watched[0] is not server):
                return
            del self._watched[key]
        watched[0].close()

    # -- launches

    def launch(self, body: Mapping[str, Any]) -> LaunchModel:
        """Start a launch; its id, to follow (`progress`) or cancel. The options are checked first."""
        profile, options = _launch_body(body)
        chosen = LaunchOptions.from_mapping(options)
        cluster = self.cluster(profile).connect()
        handle = cluster.launch(chosen)
        handle.add_done_callback(_release_when_ready)
        return self._track(cluster, chosen.model, handle)

    def renew(self, profile: str | None, job: str) -> LaunchModel:
        """Start the renewal of a job near its time limit: a successor with the same plan and key; the
        notebooks holding the job move to it, then the old job stops. Followed like a launch."""
        cluster = self.cluster(profile)
        info = cluster.status(job)
        warning = walltime_warning(job, info.seconds_left, cluster.profile.walltime_warning)
        if info.state is not JobState.RUNNING or warning is None:
            left = views.time_left_text(info)
            raise ConfigError(f"Job {job} is not near its time limit ({info.state.value}, {left}).",
                              f"Renew is for the last {cluster.profile.walltime_warning:g} minutes of a running job "
                              "(the profile's walltime_warning). To keep a server longer from the start, launch it "
                              "with a longer time.")
        with self._lock:  # one renewal per job here, however many tabs or clicks ask at once
            running = [launch_id for launch_id, tracked in self._launches.items()
                       if isinstance(tracked.task, Renewal) and tracked.task.old == job
                       and tracked.profile == cluster.profile.name and not tracked.task.done()]
            if not running:
                renewal = Renewal(cluster, job)
                running = [self._add(cluster, info.model or job, renewal)]
                renewal.start()
        return self.progress(running[0])

    def _track(self, cluster: Cluster, model: str, task: _Task) -> LaunchModel:
        with self._lock:
            launch_id = self._add(cluster, model, task)
        self._sweep()
        return self.progress(launch_id)

    def _add(self, cluster: Cluster, model: str, task: _Task) -> str:
        """Track a task under a new id (called holding the lock)."""
        launch_id = secrets.token_hex(8)
        self._launches[launch_id] = _Tracked(cluster.profile.name, model, task, time.monotonic())
        return launch_id

    def progress(self, launch_id: str) -> LaunchModel:
        tracked = self._launch(launch_id)
        handle = tracked.task
        progress = handle.progress
        error = handle.exception() if handle.done() else None
        stage = progress.stage.value if progress else "planning"
        starting = "Starting the renewal …" if isinstance(handle, Renewal) else "Reading the model's facts …"
        message = progress.message if progress else starting
        if error is not None:
            stage = "cancelled" if handle.cancelled() else "failed"
        elif handle.done() and progress is not None and isinstance(handle, LaunchHandle):
            # (the address the launch's message names is this Jupyter server's own forward)
            message = f"Ready on {progress.node}: “Insert client code” attaches a notebook to it."
        return {"id": launch_id, "profile": tracked.profile, "model": tracked.model, "job_id": handle.job_id,
                "stage": stage, "message": message,
                "elapsed": progress.elapsed if progress else 0.0, "node": progress.node if progress else None,
                "reason": progress.reason if progress else None,
                "expected_start": progress.expected_start if progress else None,
                "shards": list(progress.shards) if progress and progress.shards else None,
                "done": handle.done(), "error": str(error) if error is not None else None,
                "field": getattr(error, "field", None)}

    def cancel_launch(self, launch_id: str) -> LaunchModel:
        self._launch(launch_id).task.stop()
        return self.progress(launch_id)

    def _launch(self, launch_id: str) -> _Tracked:
        with self._lock:
            found = self._launches.get(launch_id)
        if found is None:
            raise JobNotFound(launch_id, "No launch of this Jupyter server has this id (it restarted?).")
        return found


def _launch_body(body: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    profile, options = body.get("profile"), body.get("options")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError("profile must be a profile name (text).")
    if not isinstance(options, Mapping):
        raise ConfigError('The body must be {"profile": NAME, "options": {"model": ..., ...}}.')
    return profile, options


def _release_when_ready(handle: LaunchHandle) -> None:
    """A server launched from the sidebar is not held by the Jupyter server: the notebook that attaches
    holds it (or, unused, it ends itself after its idle timeout)."""
    if handle.exception() is None:
        handle.result().close()


def _plan_model(view: views.PlanView, script: str | None) -> PlanModel:
    return {"ok": view.ok, "headline": view.headline, "cost": view.cost, "problem": view.problem, "field": view.field,
            "details": list(view.details), "gpus": view.gpus, "gpu_type": view.gpu_type, "gpu_hours": view.gpu_hours,
            "need_gb": view.need_gb, "script": script}


def _server_model(info: ServerInfo, cluster: Cluster) -> ServerModel:
    return {"job_id": info.job_id, "state": info.state.value, "model": info.model, "engine": info.engine,
            "node": info.node, "gpus": info.gpus, "time_left": info.time_left, "seconds_left": info.seconds_left,
            "reason": info.reason, "expected_start": info.expected_start, "idle": info.idle,
            "ended_idle": info.ended_idle, "left": views.time_left_text(info),
            "walltime_warning": walltime_warning(info.job_id, info.seconds_left, cluster.profile.walltime_warning)}
