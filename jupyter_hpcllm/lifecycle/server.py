"""A running model server (``Server``) and a job as the queue shows it (``ServerInfo``)."""

from __future__ import annotations

import http.client
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.profiles import Profile
from ..edge.slurm import JobRow, JobState
from ..edge.transport import Forward
from ..errors import HpcllmError, JobFailed, JobNotFound, LaunchCancelled, ServerNotReady, SubmitError
from .lease import Lease, relay_request
from .metrics import EngineMetrics, parse_metrics, with_rate
from .walltime import describe_minutes, slurm_seconds, walltime_warning

if TYPE_CHECKING:
    import openai

    from .cluster import Cluster

__all__ = ["Server", "ServerInfo", "describe_idle"]

_log = logging.getLogger(__name__)
FOLLOW_EVERY = 30.0  # seconds between a holder's looks for a successor (see Cluster.renew's grace)


def describe_idle(activity: dict[str, object] | None, now: float | None) -> str | None:
    """How the job's relay sees it: "idle 12 min, ends itself in 48 min", "in use", "idle 3 min, kept by
    1 client"; None if it has no relay account (an older job) or the clocks are unknown."""
    if not activity or now is None:
        return None
    try:
        last = float(str(activity["last_activity"]))
        timeout = float(str(activity.get("idle_timeout", 0)))
        leases = int(str(activity.get("leases", 0)))
        expires = activity.get("lease_expires")
        lease_until = float(str(expires)) if expires is not None else None
    except (KeyError, TypeError, ValueError):
        return None
    idle = max(0.0, now - last)
    text = "in use" if idle < 60 else f"idle {describe_minutes(idle)}"
    if timeout <= 0:
        return f"{text}; never ends itself (idle timeout off)"
    live_lease = leases > 0 and lease_until is not None and lease_until > now
    if live_lease:
        held = f"kept by {leases} client{'s' if leases != 1 else ''}"
        return f"{text}, {held} (ends itself {describe_minutes(timeout)} after the last request once none is left)"
    ends_in = max(0.0, last + timeout - now)
    return f"{text}, ends itself in {describe_minutes(ends_in)}"


@dataclass(frozen=True)
class ServerInfo:
    """A server job as `Cluster.list` and `Server.status` see it."""

    job_id: str
    state: JobState
    model: str | None
    engine: str | None
    node: str | None
    time_left: str | None
    reason: str | None
    expected_start: str | None = None
    started: str | None = None
    port: int | None = None
    url: str | None = None
    idle: str | None = None  # "idle 12 min, ends itself in 48 min", from the job's relay
    ended_idle: bool = False  # the job ended itself: nothing used it for its idle timeout
    gpus: str | None = None  # "4 × a100"

    @property
    def seconds_left(self) -> float | None:
        """Seconds until the job's time limit (None: not running, or no limit)."""
        return slurm_seconds(self.time_left) if self.time_left else None

    @classmethod
    def from_row(cls, row: JobRow, url: str | None = None, port: int | None = None) -> ServerInfo:
        running = row.state is JobState.RUNNING
        waiting = row.state in (JobState.PENDING, JobState.REQUEUED, JobState.CONFIGURING)
        return cls(
            job_id=row.job_id,
            state=row.state,
            model=row.comment_field("model"),
            engine=row.comment_field("engine"),
            node=row.node or None,
            time_left=row.time_left if running else None,
            reason=row.reason if waiting else None,
            # squeue's %S is the expected start while pending, the start once running (or ended).
            expected_start=(row.start_time or None) if waiting else None,
            started=None if waiting else (row.start_time or None),
            port=port,
            url=url,
            gpus=row.gpus,
        )


class Server:
    """A running model server: its job, the local address that reaches it, and OpenAI clients for it."""

    def __init__(self, cluster: Cluster, job_id: str, *, model: str, engine: str, node: str, port: int,
                 api_key: str, forward: Forward, seconds_left: float | None = None, hold: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.job_id = job_id
        self.model = model
        self.engine = engine
        self.node = node
        self.port = port
        self._api_key = api_key
        self._forward = forward
        self._down = False
        self._clock = clock
        self._ends_at = None if seconds_left is None else clock() + seconds_left
        # While this object lives, it keeps a lease on the job: the job does not end itself as idle. A
        # kernel that dies stops renewing, and the job then ends itself after its idle timeout.
        self._lease = Lease(lambda: self._forward.address, api_key).start() if hold else None
        self._closed = threading.Event()
        self._follower = threading.Lock()  # taken for good by the first follow_renewals
        # Held while the server moves to a successor (a renewal, a follow): one move at a time.
        self.moving = threading.RLock()
        self._last_metrics: EngineMetrics | None = None  # the reading before, for vLLM's tokens per second
        self._metrics_lock = threading.Lock()
        # (job, its engine record, when reading it failed: None if it did not)
        self._record: tuple[str, dict[str, Any], float | None] | None = None
        self._record_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"<Server job {self.job_id}: {self.model} on {self.engine} at {self.node}:{self.port}, "
                f"{self.base_url}>")

    @property
    def profile(self) -> Profile:
        return self.cluster.profile

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, reachable from this machine."""
        return f"http://{self._forward.address}/v1"

    @property
    def connection_problem(self) -> str | None:
        """Why the forward could not reach the engine the last time it failed to (None: it never did):
        what a face adds when a request cannot connect."""
        return self._forward.last_refusal

    @property
    def api_key(self) -> str:
        """The per-job API key. Kept out of repr and of every message jupyter-hpcllm prints."""
        return self._api_key

    def client(self, **options: Any) -> openai.OpenAI:
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, **options)
        # Which server made it (weakly: a client does not keep a job's lease alive), so that a map given
        # only the client paces itself on this server's metrics and records its provenance.
        client._hpcllm_server = weakref.ref(self)  # type: ignore[attr-defined]
        return client

    def async_client(self, **options: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, **options)

    def status(self) -> ServerInfo:
        try:
            info = self.cluster.status(self.job_id)
        except JobNotFound:
            return ServerInfo(self.job_id, JobState.UNKNOWN, self.model, self.engine, self.node, None, None)
        return info if self._down else _with_url(info, self.base_url)

    def metrics(self, *, rate_within: float = 1.0) -> EngineMetrics:
        """The engine's live numbers: requests running and waiting, generation tokens per second, KV-cache
        use. Read through the job's relay; reading them does not count as using the server (the job still
        ends itself when idle). vLLM counts tokens, so its rate needs two readings: the first call reads
        twice, `rate_within` seconds apart (0: once, no rate)."""
        with self._metrics_lock:  # no reading of the last minute to take the rate against: read twice
            stale = self._last_metrics is None or time.monotonic() - self._last_metrics.read_at > 60
        reading = self._read_metrics()
        if stale and reading.tokens_per_second is None and reading.generation_tokens is not None and rate_within > 0:
            time.sleep(rate_within)
            reading = self._read_metrics()
        return reading

    def _read_metrics(self) -> EngineMetrics:
        try:
            status, answer = relay_request(self._forward.address, self._api_key, "GET", "/hpcllm/metrics")
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise ServerNotReady(f"Cannot read the metrics of job {self.job_id} ({error}).",
                                 "Is the job still running? `hpcllm status` shows it.") from None
        text = answer.get("metrics")
        if status != 200 or not isinstance(text, str):
            why = "its relay is older than metrics" if status == 404 else str(answer.get("error") or status)
            raise ServerNotReady(f"The metrics of job {self.job_id} are not available ({why}).")
        current = parse_metrics(text, time.monotonic())
        with self._metrics_lock:
            result = with_rate(current, self._last_metrics)
            if self._last_metrics is None or current.read_at > self._last_metrics.read_at:
                self._last_metrics = current  # two calls at once: the newer reading is kept
        return result

    def engine_record(self, *, wait: bool = True) -> dict[str, Any]:
        """How the job runs its engine (image, arguments, parsers), read once per job from its script.
        `wait=False`: what is known now ({} at first), the reading started in the background, so that a
        kernel's main thread never waits on the login node for it."""
        job = self.job_id
        record = self._record
        if record is not None and record[0] == job and (record[2] is None or time.monotonic() - record[2] < 300):
            return record[1]
        if not wait:
            if self._record_lock.acquire(blocking=False):
                def read() -> None:
                    try:
                        self._read_record(job)
                    finally:
                        self._record_lock.release()

                threading.Thread(target=read, name="hpcllm-engine-record", daemon=True).start()
            return {}
        with self._record_lock:
            return self._read_record(job)

    def _read_record(self, job: str) -> dict[str, Any]:
        try:
            self._record = (job, self.cluster.engine_record(job), None)
        except HpcllmError:  # a slow login node: not asked again for five minutes (each %%llm would wait)
            self._record = (job, {}, time.monotonic())
        return self._record[1]

    def logs(self, lines: int = 100) -> str:
        """The last lines of the engine log (the API key is redacted on the node)."""
        return self.cluster.logs(self.job_id, lines=lines)

    def follow_logs(self, poll: float = 1.0) -> Iterator[str]:
        """Yield new log text as it arrives, until the job ends."""
        yield from self.cluster.follow_logs(self.job_id, poll=poll)

    @property
    def closed(self) -> bool:
        """close() or down() was called: no forward, no lease."""
        return self._closed.is_set()

    @property
    def seconds_left(self) -> float | None:
        """Seconds until the job's time limit, as estimated when it became ready (None: no limit known)."""
        return None if self._ends_at is None else max(0.0, self._ends_at - self._clock())

    def raise_if_failed(self) -> None:
        """Re-raise what failed in the forward's threads (a face that keeps a forward open checks it)."""
        self._forward.raise_if_failed()

    def walltime_warning(self, threshold_minutes: float | None = None) -> str | None:
        """A warning to show when less than `threshold_minutes` (the profile's `walltime_warning`) remain."""
        threshold = self.profile.walltime_warning if threshold_minutes is None else threshold_minutes
        return walltime_warning(self.job_id, self.seconds_left, threshold)

    def renew_automatically(self, lead_minutes: float | None = None, *, check_every: float = 30.0) -> None:
        """From a thread of its own: when less than `lead_minutes` (default: the profile's walltime_warning,
        at least 5) of the job's time limit remain, `Cluster.renew` it, so this server outlives its
        walltime (what `up --renew` asks). Stops when the server is closed. A failed renewal is logged and
        not tried again (each try would hold GPUs for a successor): the old job serves until its end. The
        server also follows renewals made by others (`follow_renewals`)."""
        lead = max(5.0, self.profile.walltime_warning) if lead_minutes is None else lead_minutes
        self.follow_renewals()

        def watch() -> None:
            while not self._closed.wait(check_every):
                left = self.seconds_left
                if left is not None and left < lead * 60:
                    try:
                        self.cluster.renew(self)
                    except Exception as error:  # the old job keeps serving; the walltime warning still shows
                        # One paragraph, no traceback: from this thread it lands in whatever cell runs.
                        _log.warning("Renewing job %s failed: %s", self.job_id, error)
                        return

        threading.Thread(target=watch, name=f"hpcllm-renew-{self.job_id}", daemon=True).start()

    def follow_renewals(self, *, check_every: float | None = None) -> None:
        """From a thread of its own (one per server however often asked): look every `check_every` seconds
        (default FOLLOW_EVERY) for a committed renewal of the job by someone else (the lab sidebar's Renew,
        another notebook's `%hpcllm renew`), and move to its successor, so the clients made from this server
        keep working. A successor that failed is not tried again; while the login node cannot be reached the
        looks back off. Stops when the server is closed or the job ended with no successor."""
        if not self._follower.acquire(blocking=False):
            return  # one follower per server: it runs already
        every = FOLLOW_EVERY if check_every is None else check_every
        threading.Thread(target=self._follow, args=(every,), name=f"hpcllm-follow-{self.job_id}",
                         daemon=True).start()

    @property
    def _following(self) -> bool:
        return self._follower.locked()

    def _follow(self, every: float) -> None:
        failed: set[str] = set()
        pause = every
        while not self._closed.wait(pause):
            if not self.moving.acquire(blocking=False):
                continue  # this process renews it right now (and follows another renewer by itself)
            try:
                successor = self.cluster.successor(self.job_id)
                if successor is not None and successor != self.job_id and successor not in failed:
                    try:
                        self.cluster.follow(self, successor)
                    except (JobFailed, JobNotFound, SubmitError, LaunchCancelled):
                        failed.add(successor)  # it ended, or has another key, or was given up: not again
                elif self.seconds_left == 0 and self._job_ended():
                    return  # the job ended, unrenewed: nothing left to follow
                pause = every
            except Exception as error:  # the login node away, a wait timed out: look again, later
                pause = min(10 * every, 2 * pause)
                # Debug, not warning: a warning from this thread would land in whatever cell runs.
                _log.debug("following the renewal of job %s failed: %s", self.job_id, error)
            finally:
                self.moving.release()

    def _job_ended(self) -> bool:
        """Whether Slurm says the job is over (the local estimate of its end is only an estimate)."""
        try:
            return not self.cluster.status(self.job_id).state.is_active
        except JobNotFound:
            return True

    def retarget(self, job_id: str, node: str, port: int, seconds_left: float | None) -> None:
        """Move to a successor job (same key): the local address and every client made from it now reach
        it. Used by `Cluster.renew`. A closed server stays where it was (it no longer forwards anything)."""
        if self.closed:
            return
        self._forward.retarget(node, port)
        self.job_id, self.node, self.port = job_id, node, port
        self._ends_at = None if seconds_left is None else self._clock() + seconds_left

    def down(self, wait: float = 15.0) -> JobState:
        """Cancel the job and close the forward. Idempotent; returns the job's state afterwards."""
        self._release()
        self._forward.close()
        if not self._down:
            state = self.cluster.cancel(self.job_id, wait=wait)
            self._down = True  # only once scancel ran: a failed one is sent again next time
            return state
        return self.cluster.wait_gone(self.job_id, wait)

    def close(self) -> None:
        """Close the forward but leave the job running (another session can attach to it). The lease is
        given back: with no other client and no request for its idle timeout, the job ends itself."""
        self._release()
        self._forward.close()

    def _release(self) -> None:
        self._closed.set()
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _with_url(info: ServerInfo, url: str) -> ServerInfo:
    from dataclasses import replace

    return replace(info, url=url)
