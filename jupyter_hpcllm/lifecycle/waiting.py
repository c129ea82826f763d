"""Waiting for a job's server: a pure step function plus the I/O around it.

``step(state, probe, now)`` reads one observation of the job (its queue line and files, one remote
command) and says what to report, whether to connect to a (new) engine address, whether to ask the
engine if it answers, how long to sleep, or why the job failed. It touches nothing, so every stage
transition, stale files, a requeue onto another node and a timeout are tested without a cluster.
``wait_for_server`` runs it with the I/O passed in (observe, connect, answers, clock, sleep).
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ..edge.slurm import JobRow, JobState, Probe
from ..edge.transport import Forward
from ..errors import HpcllmError, JobFailed, ServerNotReady
from ..planning.diagnose import diagnose
from ..planning.engines import loading_progress
from .progress import Progress, ProgressCallback, Stage

__all__ = ["Endpoint", "Ready", "Step", "WaitState", "api_answers", "step", "wait_for_server"]

FIRST_TICK = 0.2
LOADING_TICK_MAX = 1.0
PENDING_TICK_MAX = 10.0
QUEUE_EVERY_WHEN_RUNNING = 3.0
COMPLETING_WAIT = 10.0  # seconds to wait for a completing job's final state once its engine has exited

# States in which the job holds no node yet (a requeued job waits again, then starts anew).
_WAITING = {JobState.PENDING, JobState.REQUEUED, JobState.CONFIGURING}


def tick(waited: float, cap: float) -> float:
    """Poll fast at first (most jobs start or load within seconds), then at a tenth of the time waited,
    so a job pending for an hour costs the Slurm controller one squeue every `cap` seconds."""
    return min(max(FIRST_TICK, waited / 10), cap)


@dataclass(frozen=True)
class Endpoint:
    """Where one run of the job's engine listens (a requeued job runs again: another node, port, key)."""

    node: str
    port: int
    started: str
    model: str
    engine: str


@dataclass(frozen=True)
class WaitState:
    job_id: str
    started: float  # when waiting began: progress reports time from here
    phase: str = ""  # "pending" or "running": polling slows down the longer a phase lasts
    phase_started: float = 0.0
    row: JobRow | None = None  # the latest queue line
    next_queue: float = 0.0  # when to ask squeue again (its controller is shared by everyone)
    endpoint: Endpoint | None = None  # the engine run we are connected to
    reported: tuple[Any, ...] = ()  # the last progress reported, so none is repeated
    ending_since: float | None = None  # when the engine's exit code was first seen while Slurm was completing


@dataclass(frozen=True)
class Step:
    state: WaitState
    events: tuple[Progress, ...] = ()
    connect: Endpoint | None = None  # open a forward to this engine run (closing the previous one)
    check_ready: bool = False  # ask the engine whether its API answers
    failure: HpcllmError | None = None
    sleep: float = 0.0


def step(state: WaitState, probe: Probe, now: float) -> Step:
    """The next state and what to do, from one observation. Pure."""
    elapsed = now - state.started
    row = state.row
    if probe.queue_checked:
        row = probe.row
        if row is None or row.state.is_finished:
            # Files left by an earlier run (a requeue, a reused id) must not explain this one's end.
            return Step(state, failure=ended(state.job_id, probe if row is None else drop_stale(probe, row)))
    if row is None:  # nothing known yet: look at the queue first
        return Step(replace(state, next_queue=now))
    probe = drop_stale(probe, row)
    if probe.exit_code is not None:
        if not probe.queue_checked:  # the job's state says more than the exit code (cancelled? timed out?)
            return Step(replace(state, row=row, next_queue=now))
        ending_since = state.ending_since if state.ending_since is not None else now
        if row.state is JobState.COMPLETING and now - ending_since < COMPLETING_WAIT:
            # Slurm is still ending it: its final state (CANCELLED, TIMEOUT, ...) follows within seconds.
            return Step(replace(state, row=row, next_queue=now, ending_since=ending_since), sleep=FIRST_TICK)
        return Step(state, failure=ended(state.job_id, probe))
    phase = "pending" if row.state in _WAITING else "running"
    phase_started = now if phase != state.phase else state.phase_started
    state = replace(state, row=row, phase=phase, phase_started=phase_started)
    events: list[Progress] = []
    if phase == "pending":
        expected = row.start_time or None
        seen: tuple[Any, ...] = (Stage.PENDING, row.reason, expected)
        if seen != state.reported:
            events.append(Progress(Stage.PENDING, state.job_id, pending_message(state.job_id, row.reason, expected),
                                   elapsed, reason=row.reason, expected_start=expected))
        wait = tick(now - phase_started, PENDING_TICK_MAX)
        # Only a queue check sets the next one: a probe in between (a sleep cut short) must not put it off.
        next_queue = now + wait if probe.queue_checked else state.next_queue
        # Forget the engine run we knew: after a requeue the job starts again elsewhere.
        return Step(replace(state, reported=seen, endpoint=None, next_queue=next_queue), tuple(events), sleep=wait)
    if probe.queue_checked:
        state = replace(state, next_queue=now + QUEUE_EVERY_WHEN_RUNNING)
    wait = tick(now - phase_started, LOADING_TICK_MAX)
    server = probe.server
    node = str(server.get("node") or row.node) if server else row.node
    if state.reported[:1] not in ((Stage.RUNNING,), (Stage.LOADING,)):
        events.append(Progress(Stage.RUNNING, state.job_id, f"Job {state.job_id} is running on {node}.", elapsed,
                               node=node))
        state = replace(state, reported=(Stage.RUNNING,))
    if server is None:
        return Step(state, tuple(events), sleep=wait)
    try:
        endpoint = Endpoint(node, int(str(server["port"])), str(server.get("started", "")),
                            str(server.get("model", "")), str(server.get("engine", "")))
    except (KeyError, ValueError):
        return Step(state, tuple(events), sleep=wait)  # not a file we wrote: wait for the real one
    shards = loading_progress(probe.log)
    seen = (Stage.LOADING, endpoint, shards)
    if seen != state.reported:
        done = f": weights {shards[0]}/{shards[1]}" if shards else ""
        events.append(Progress(Stage.LOADING, state.job_id, f"{endpoint.engine} is starting on {node}{done}.",
                               elapsed, node=node, shards=shards))
    connect = endpoint if endpoint != state.endpoint else None
    return Step(replace(state, reported=seen, endpoint=endpoint), tuple(events), connect=connect, check_ready=True,
                sleep=wait)


def drop_stale(probe: Probe, row: JobRow) -> Probe:
    """Ignore job files written before this run of the job started: an earlier job with the same id (ids
    restart when a Slurm controller's state is reset), or the run before a requeue, may have left them."""
    if row.state in _WAITING:
        return replace(probe, server=None, exit_code=None, log="", idle_exit=None, activity=None)
    started = str((probe.server or {}).get("started", ""))[:19]
    if not started or not row.start_time:
        return probe
    try:
        fresh = datetime.fromisoformat(started) >= datetime.fromisoformat(row.start_time[:19]) - timedelta(seconds=5)
    except ValueError:
        return probe
    return probe if fresh else replace(probe, server=None, exit_code=None, log="", idle_exit=None, activity=None)


def pending_message(job_id: str, reason: str, expected: str | None) -> str:
    # Slurm says "None" for a job it has not looked at yet: it is about to be scheduled.
    why = "about to be scheduled" if reason in ("", "None") else f"waiting for {reason}"
    when = f", expected to start {expected.replace('T', ' ')}" if expected else ""
    return f"Job {job_id} is pending ({why}{when})."


def log_tail(text: str, lines: int = 15) -> str:
    # tqdm progress updates are separated by carriage returns: keep the last state of each line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in cleaned if line.strip()][-lines:])


def ended(job_id: str, probe: Probe) -> JobFailed:
    """The error for a job that ended (or whose engine exited) before the server was ready."""
    state = probe.row.raw_state if probe.row else "gone from the queue"
    tail = log_tail(probe.log) or log_tail(probe.slurm_log)
    job_state = probe.row.state if probe.row else JobState.UNKNOWN
    engine = str((probe.server or {}).get("engine") or (probe.row.comment_field("engine") if probe.row else "")
                 or "the engine")
    found = diagnose(probe.log + probe.slurm_log, engine) if probe.exit_code not in (None, 0, 137, 143) else None
    if probe.idle_exit is not None:
        minutes = probe.idle_exit.get("idle_seconds")
        idle = f" for {float(str(minutes)) / 60:.0f} min" if isinstance(minutes, (int, float)) else ""
        message = f"Job {job_id} ended itself: nothing used it{idle} (its idle timeout), so its GPUs went back."
        hint = "Start it again with `hpcllm up`; `--idle-timeout 0` keeps a job until its time limit."
    elif job_state is JobState.CANCELLED:
        message = f"Job {job_id} was cancelled ({state}) before the server was ready."
        hint = "Someone (you, another session or an admin) ran scancel on it; start it again with `hpcllm up`."
    elif job_state is JobState.TIMEOUT:
        message = f"Job {job_id} reached its time limit before the server was ready."
        hint = "Ask for more time with --time."
    elif found is not None:
        message = f"The engine in job {job_id} exited with code {probe.exit_code} while starting: {found.cause}."
        hint = f"Fix: {found.fix}"
    elif probe.exit_code in (137, 143):
        message = (f"The engine in job {job_id} was stopped by a signal (exit code {probe.exit_code}) while "
                   "starting: the job was cancelled, reached its time limit, or the node killed it.")
        hint = f"`hpcllm logs {job_id}` shows the engine log; `sacct -j {job_id}` (if your cluster has it) why."
    elif probe.exit_code is not None and probe.exit_code != 0:
        message = f"The engine in job {job_id} exited with code {probe.exit_code} while starting."
        hint = f"The log below says why; `hpcllm logs {job_id}` shows all of it."
    elif probe.row is None:
        message = f"Job {job_id} is no longer known to Slurm: it ended before the server was ready."
        hint = "It may have been cancelled or finished long ago; `hpcllm list` shows your running servers."
    else:
        message = f"Job {job_id} ended ({state}) before the server was ready."
        hint = f"`hpcllm logs {job_id}` shows the engine log."
    return JobFailed(message, job_id=job_id, state=state, log_tail=tail, hint=hint)


def api_answers(address: str, api_key: str) -> bool:
    """Ready means: /health says 200 and /v1/models answers 200 with the key (not a log line)."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            return False
        connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def relay_answers(address: str, api_key: str) -> bool:
    """Ready to watch: /health says 200 (no key) and the job's relay takes the key on its own route
    (/hpcllm/status). Neither counts as using the server, so watching a job never keeps it from ending
    itself when idle (what `api_answers`' keyed /v1/models would do)."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for path, headers in (("/health", {}), ("/hpcllm/status", {"Authorization": f"Bearer {api_key}"})):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                return False
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@dataclass
class Ready:
    """A server that answers: its engine run, the local address that reaches it, and its key."""

    endpoint: Endpoint
    forward: Forward
    api_key: str
    time_left: str = ""  # squeue's time left when it became ready ("1:59:30"; "" unknown)


def wait_for_server(
    job_id: str,
    *,
    observe: Callable[[str, bool], Probe],
    connect: Callable[[Endpoint], tuple[Forward, str]],
    answers: Callable[[str, str], bool] = api_answers,
    report: ProgressCallback,
    timeout: float | None,
    submitted: bool,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    started: float | None = None,
) -> Ready:
    """Probe, step, act, until the server answers (→ Ready), the job fails (→ JobFailed) or the time is up
    (→ ServerNotReady). Whatever ends it early, the forward opened here is closed."""
    state = WaitState(job_id, clock() if started is None else started)
    forward: Forward | None = None
    api_key = ""
    try:
        while True:
            now = clock()
            if timeout is not None and now - state.started > timeout:
                raise ServerNotReady(
                    f"Job {job_id} was not ready after {timeout:g} s.",
                    ("It was cancelled; retry with a longer timeout." if submitted else
                     f"It keeps running: attach to it again later, or stop it with `hpcllm down {job_id}`."),
                    job_id=job_id,
                )
            probe = observe(job_id, now >= state.next_queue)
            result = step(state, probe, clock())
            state = result.state
            for event in result.events:
                report(event)
            if result.failure is not None:
                raise result.failure
            if result.connect is not None:
                if forward is not None:
                    forward.close()
                    forward = None
                forward, api_key = connect(result.connect)
            if result.check_ready and forward is not None and answers(forward.address, api_key):
                assert state.endpoint is not None
                report(Progress(Stage.READY, job_id, f"Ready: {state.endpoint.model} on {state.endpoint.node} "
                                f"(http://{forward.address}/v1).", clock() - state.started, node=state.endpoint.node))
                return Ready(state.endpoint, forward, api_key, state.row.time_left if state.row else "")
            sleep(result.sleep)
    except BaseException:
        if forward is not None:
            forward.close()
        raise
