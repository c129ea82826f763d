"""The lifecycle core every face calls: up (idempotent), attach, list, and a ``Server`` to talk to.

``up`` plans the job, reuses a pending or running twin if there is one, else submits it, then waits
through the stages (submitted → pending → running → loading → ready), reporting each one to
``on_progress``. Ready means the OpenAI API answers ``/v1/models`` with the key. Whatever stops ``up``
before that (an error, a timeout, Ctrl-C) cancels the job it submitted: GPUs nobody uses are not held.
"""

from __future__ import annotations

import enum
import http.client
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .diagnose import diagnose
from .engines import loading_progress
from .errors import HpcllmError, JobFailed, RemoteCommandError, SubmitError
from .facts import model_facts
from .forward import PortForward
from .plan import LaunchPlan, plan_launch
from .profiles import Profile, load_profile
from .slurm import (
    JobRow,
    JobState,
    Probe,
    cancel_command,
    key_command,
    log_command,
    parse_probe,
    parse_queue,
    parse_sbatch,
    probe_command,
    queue_command,
    submit_command,
)
from .transport import LocalTransport, Transport, transport_for

if TYPE_CHECKING:
    import openai

__all__ = ["Progress", "Server", "ServerInfo", "Stage", "attach", "list_servers", "up"]


class Stage(enum.Enum):
    SUBMITTED = "submitted"
    REUSED = "reused"
    PENDING = "pending"
    RUNNING = "running"
    LOADING = "loading"
    READY = "ready"


@dataclass(frozen=True)
class Progress:
    """One step of `up`/`attach`, for a face to render."""

    stage: Stage
    job_id: str
    message: str
    elapsed: float
    node: str | None = None
    reason: str | None = None
    expected_start: str | None = None
    shards: tuple[int, int] | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ServerInfo:
    """A server job as `list_servers` and `Server.status` see it."""

    job_id: str
    state: JobState
    model: str | None
    engine: str | None
    node: str | None
    time_left: str | None
    reason: str | None
    expected_start: str | None = None
    url: str | None = None

    @classmethod
    def from_row(cls, row: JobRow, url: str | None = None) -> ServerInfo:
        running = row.state is JobState.RUNNING
        return cls(
            job_id=row.job_id,
            state=row.state,
            model=row.comment_field("model"),
            engine=row.comment_field("engine"),
            node=row.node or None,
            time_left=row.time_left if running else None,
            reason=None if running else row.reason,
            expected_start=row.start_time or None,
            url=url,
        )


def _profile(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


class Server:
    """A running model server: its job, its forward, and OpenAI clients for it."""

    def __init__(self, profile: Profile, job_id: str, *, model: str, engine: str, node: str, port: int,
                 api_key: str, forward: PortForward | None) -> None:
        self.profile = profile
        self.job_id = job_id
        self.model = model
        self.engine = engine
        self.node = node
        self.port = port
        self._api_key = api_key
        self._forward = forward
        self._down = False

    def __repr__(self) -> str:
        return (f"<Server job {self.job_id}: {self.model} on {self.engine} at {self.node}:{self.port}, "
                f"{self.base_url}>")

    @property
    def _transport(self) -> Transport:
        return transport_for(self.profile)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, reachable from this machine."""
        if self._forward is not None:
            return f"http://{self._forward.address}/v1"
        return f"http://{self.node}:{self.port}/v1"

    @property
    def api_key(self) -> str:
        """The per-job API key. Kept out of repr and of every message jupyter-hpcllm prints."""
        return self._api_key

    def client(self, **options: Any) -> openai.OpenAI:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self._api_key, **options)

    def async_client(self, **options: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, **options)

    def status(self) -> ServerInfo:
        row = parse_probe(self._transport.run(probe_command(self.job_id, log_bytes=0)).stdout).row
        if row is None:
            return ServerInfo(self.job_id, JobState.UNKNOWN, self.model, self.engine, self.node, None, None)
        return ServerInfo.from_row(row, url=None if self._down else self.base_url)

    def logs(self, lines: int = 100) -> str:
        """The last lines of the engine log (the API key is redacted on the node)."""
        return self._transport.run(log_command(self.job_id, lines=lines), check=False).stdout

    def follow_logs(self, poll: float = 1.0) -> Iterator[str]:
        """Yield new log text as it arrives, until the job ends."""
        yield from follow_logs(self._transport, self.job_id, poll)

    def down(self, wait: float = 15.0) -> JobState:
        """Cancel the job and close the forward. Idempotent; returns the job's state afterwards."""
        if self._forward is not None:
            self._forward.close()
        if not self._down:
            self._transport.run(cancel_command(self.job_id))
            self._down = True
        return wait_gone(self._transport, self.job_id, wait)

    def close(self) -> None:
        """Close the forward but leave the job running (another session can attach to it)."""
        if self._forward is not None:
            self._forward.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


# --- up / attach / list ---------------------------------------------------------------------------------


def up(
    model: str,
    *,
    profile: Profile | str | None = None,
    gpus: int | None = None,
    gpu_type: str | None = None,
    engine: str | None = None,
    time: str | None = None,
    cpus: int | None = None,
    mem: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    tool_call_parser: str | None = None,
    reasoning_parser: str | None = None,
    engine_args: tuple[str, ...] | list[str] = (),
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
    reuse: bool = True,
    check_parsers: bool = False,
) -> Server:
    """Start (or reuse) a model server and return it once its OpenAI API answers.

    The model's facts (config, chat template, size) are read from the cluster first: they choose the
    parsers and, unless `gpus` / `gpu_type` say otherwise, the smallest allocation that holds the model.
    `check_parsers` also asks the engine image which parser names it knows (cached per image).
    """
    plan = plan_for(
        model, profile=profile, gpus=gpus, gpu_type=gpu_type, engine=engine, time=time, cpus=cpus,
        mem=mem, partition=partition, account=account, qos=qos, tool_call_parser=tool_call_parser,
        reasoning_parser=reasoning_parser, engine_args=engine_args,
    )
    if check_parsers:
        from .imageprobe import check_plan_parsers

        check_plan_parsers(plan)
    return launch(plan, on_progress=on_progress, timeout=timeout, reuse=reuse)


def plan_for(model: str, *, profile: Profile | str | None = None, refresh: bool = False,
             **options: Any) -> LaunchPlan:
    """The plan `up` would submit, with the model's facts read from the cluster (cached)."""
    resolved = _profile(profile)
    # Options that are wrong whatever the model (names with shell syntax, GPU counts, times) are refused
    # before anything touches the cluster.
    plan_launch(resolved, model, **options)
    facts = model_facts(resolved, model, refresh=refresh)
    return plan_launch(resolved, model, facts=facts, **options)


def launch(plan: LaunchPlan, *, on_progress: ProgressCallback | None = None, timeout: float | None = None,
           reuse: bool = True) -> Server:
    transport = transport_for(plan.profile)
    report = on_progress or (lambda _: None)
    started = time.monotonic()
    if reuse:
        twins = parse_queue(transport.run(queue_command(plan.job_name)).stdout)
        if twins:
            job_id = twins[0].job_id
            report(Progress(Stage.REUSED, job_id, f"Reusing job {job_id} ({twins[0].raw_state}) with the "
                            "same model and options.", 0.0))
            return _wait_ready(plan.profile, job_id, report, timeout, started)
    if plan.facts is None:  # a plan made offline: at least make sure the model is there
        model_facts(plan.profile, plan.model_path)
    job_id = submit(transport, plan)
    report(Progress(Stage.SUBMITTED, job_id, f"Submitted job {job_id} ({plan.spec.gres}, {plan.spec.time}).",
                    time.monotonic() - started))
    try:
        return _wait_ready(plan.profile, job_id, report, timeout, started, submitted=True)
    except BaseException:
        # Interrupted, timed out or failed: never leave an allocation behind that nobody will use.
        transport.run(cancel_command(job_id), check=False, timeout=30)
        raise


def attach(job_id: str, *, profile: Profile | str | None = None, on_progress: ProgressCallback | None = None,
           timeout: float | None = None) -> Server:
    """Connect to a job started earlier (by this or another session); waits if it is still starting."""
    return _wait_ready(_profile(profile), str(job_id), on_progress or (lambda _: None), timeout,
                       time.monotonic())


def list_servers(profile: Profile | str | None = None) -> list[ServerInfo]:
    """This user's jupyter-hpcllm jobs on the cluster, pending or running."""
    transport = transport_for(_profile(profile))
    return [ServerInfo.from_row(row) for row in parse_queue(transport.run(queue_command()).stdout)
            if row.is_ours]


def cancel(job_id: str, *, profile: Profile | str | None = None, wait: float = 15.0) -> JobState:
    transport = transport_for(_profile(profile))
    transport.run(cancel_command(job_id))
    return wait_gone(transport, job_id, wait)


def submit(transport: Transport, plan: LaunchPlan) -> str:
    """sbatch the plan's script (fed on stdin: nothing is written to disk first)."""
    try:
        result = transport.run(submit_command(), stdin=plan.script)
    except RemoteCommandError as error:
        lines = (error.stderr.strip() or error.stdout.strip()).splitlines()
        message = "; ".join(line.removeprefix("sbatch: error: ").strip() for line in lines if line.strip())
        raise SubmitError(
            message.rstrip(".") + ".",
            "Check the GPU type, count, time, memory and partition against what the cluster allows "
            "(`sinfo -o '%P %G %l'` on the login node); `hpcllm script` shows what was submitted.",
        ) from None
    return parse_sbatch(result.stdout)


# --- waiting --------------------------------------------------------------------------------------------

_FIRST_TICK = 0.2
_LOADING_TICK_MAX = 1.0
_PENDING_TICK_MAX = 10.0
_QUEUE_EVERY_WHEN_RUNNING = 3.0


def _tick(waited: float, cap: float) -> float:
    """Poll fast at first (most jobs start or load within seconds), then at a tenth of the time waited,
    so a job pending for an hour costs the Slurm controller one squeue every `cap` seconds."""
    return min(max(_FIRST_TICK, waited / 10), cap)


def _wait_ready(profile: Profile, job_id: str, report: ProgressCallback, timeout: float | None,
                started: float, submitted: bool = False) -> Server:
    transport = transport_for(profile)
    forward: PortForward | None = None
    endpoint: str | None = None  # host:port where this machine reaches the engine
    api_key = ""
    last: tuple[Any, ...] = ()
    tick = _FIRST_TICK
    phase_started = time.monotonic()  # when the job entered its current phase (pending / running)
    pending = True
    next_queue = 0.0
    row: JobRow | None = None
    try:
        while True:
            now = time.monotonic()
            elapsed = now - started
            if timeout is not None and elapsed > timeout:
                raise HpcllmError(
                    f"Job {job_id} was not ready after {timeout:g} s.",
                    ("It was cancelled; retry with a longer timeout." if submitted else
                     "It keeps running: attach to it again later, or stop it with `hpcllm down "
                     f"{job_id}`."),
                )
            check_queue = now >= next_queue
            probe = parse_probe(transport.run(probe_command(job_id, queue=check_queue)).stdout)
            if check_queue:
                row = probe.row
                if row is None or row.state.is_finished:
                    raise _ended(job_id, probe)
                running = row.state is JobState.RUNNING
                next_queue = now + (_QUEUE_EVERY_WHEN_RUNNING if running else tick)
            assert row is not None
            probe = _drop_stale(probe, row)
            if probe.exit_code is not None:
                if not check_queue:  # the job's state says more than the exit code (cancelled? timed out?)
                    probe = parse_probe(transport.run(probe_command(job_id)).stdout)
                raise _ended(job_id, probe)
            assert row is not None
            if (row.state is JobState.PENDING) != pending:
                pending, phase_started = not pending, now
            if pending:
                expected = row.start_time or None
                seen: tuple[Any, ...] = (Stage.PENDING, row.reason, expected)
                if seen != last:
                    last = seen
                    report(Progress(Stage.PENDING, job_id, _pending_message(job_id, row.reason, expected),
                                    elapsed, reason=row.reason, expected_start=expected))
                tick = _tick(time.monotonic() - phase_started, _PENDING_TICK_MAX)
                time.sleep(tick)
                continue
            server = probe.server
            node = str(server["node"]) if server else row.node
            if server is None:
                if last[:1] != (Stage.RUNNING,):
                    last = (Stage.RUNNING,)
                    report(Progress(Stage.RUNNING, job_id, f"Job {job_id} is running on {node}.", elapsed,
                                    node=node))
            else:
                port = int(str(server["port"]))
                if endpoint is None:
                    if last[:1] != (Stage.RUNNING,):
                        report(Progress(Stage.RUNNING, job_id, f"Job {job_id} is running on {node}.", elapsed,
                                        node=node))
                    forward = _open_forward(profile, transport, node, port)
                    endpoint = forward.address if forward else f"{node}:{port}"
                    api_key = transport.run(key_command(job_id)).stdout.strip()
                shards = loading_progress(probe.log)
                seen = (Stage.LOADING, shards)
                if seen != last:
                    last = seen
                    done = f": weights {shards[0]}/{shards[1]}" if shards else ""
                    report(Progress(Stage.LOADING, job_id, f"{server.get('engine')} is starting on {node}"
                                    f"{done}.", elapsed, node=node, shards=shards))
                if _api_answers(endpoint, api_key):
                    result = Server(profile, job_id, model=str(server.get("model")),
                                    engine=str(server.get("engine")), node=node, port=port,
                                    api_key=api_key, forward=forward)
                    report(Progress(Stage.READY, job_id, f"Ready: {result.model} on {node} "
                                    f"({result.base_url}).", time.monotonic() - started, node=node))
                    return result
            tick = _tick(time.monotonic() - phase_started, _LOADING_TICK_MAX)
            time.sleep(tick)
    except BaseException:
        if forward is not None:
            forward.close()
        raise


def _drop_stale(probe: Probe, row: JobRow) -> Probe:
    """Ignore job files written before this job started: an earlier job with the same id (ids restart
    when a Slurm controller's state is reset) may have left its directory behind."""
    if row.state is JobState.PENDING:
        return replace(probe, server=None, exit_code=None, log="")
    started = str((probe.server or {}).get("started", ""))[:19]
    if not started or not row.start_time:
        return probe
    try:
        fresh = datetime.fromisoformat(started) >= datetime.fromisoformat(row.start_time[:19]) - timedelta(seconds=5)
    except ValueError:
        return probe
    return probe if fresh else replace(probe, server=None, exit_code=None, log="")


def _pending_message(job_id: str, reason: str, expected: str | None) -> str:
    # Slurm says "None" for a job it has not looked at yet: it is about to be scheduled.
    why = "about to be scheduled" if reason in ("", "None") else f"waiting for {reason}"
    when = f", expected to start {expected.replace('T', ' ')}" if expected else ""
    return f"Job {job_id} is pending ({why}{when})."


def _open_forward(profile: Profile, transport: Transport, node: str, port: int) -> PortForward | None:
    if isinstance(transport, LocalTransport):
        return None  # on the cluster already: talk to the node directly
    return PortForward(lambda: transport_for(profile).open_channel(node, port), f"{node}:{port}")


def _api_answers(address: str, api_key: str) -> bool:
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


def _log_tail(text: str, lines: int = 15) -> str:
    # tqdm progress updates are separated by carriage returns: keep the last state of each line.
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in cleaned if line.strip()][-lines:])


def _ended(job_id: str, probe: Probe) -> JobFailed:
    """The error for a job that ended (or whose engine exited) before the server was ready."""
    state = probe.row.raw_state if probe.row else "gone from the queue"
    tail = _log_tail(probe.log) or _log_tail(probe.slurm_log)
    job_state = probe.row.state if probe.row else JobState.UNKNOWN
    if job_state is JobState.CANCELLED:
        message = f"Job {job_id} was cancelled ({state}) before the server was ready."
        hint = "Someone (you, another session or an admin) ran scancel on it; start it again with `hpcllm up`."
    elif job_state is JobState.TIMEOUT:
        message = f"Job {job_id} reached its time limit before the server was ready."
        hint = "Ask for more time with --time."
    elif probe.exit_code not in (None, 0, 137, 143) and (
            found := diagnose(probe.log + probe.slurm_log, str((probe.server or {}).get("engine")
                                                             or (probe.row.comment_field("engine") if probe.row else "")
                                                             or "the engine"))):
        message = (f"The engine in job {job_id} exited with code {probe.exit_code} while starting: "
                   f"{found.cause}.")
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


def wait_gone(transport: Transport, job_id: str, wait: float) -> JobState:
    """Poll until the job no longer holds an allocation (or `wait` seconds pass); its last state."""
    deadline = time.monotonic() + wait
    while True:
        probe = parse_probe(transport.run(probe_command(job_id, log_bytes=0)).stdout)
        if not probe.state.is_active or time.monotonic() > deadline:
            return probe.state
        time.sleep(0.25)


def follow_logs(transport: Transport, job_id: str, poll: float = 1.0) -> Iterator[str]:
    offset = 0
    quiet_checks = 0
    while True:
        chunk = transport.run(log_command(job_id, from_byte=offset), check=False).stdout
        if chunk:
            offset += len(chunk.encode())
            quiet_checks = 0
            yield chunk
        else:
            quiet_checks += 1
            # Check the queue only now and then: a quiet log is the common case.
            if quiet_checks % 5 == 0:
                probe = parse_probe(transport.run(probe_command(job_id, log_bytes=0)).stdout)
                if not probe.state.is_active:
                    return
        time.sleep(poll)
