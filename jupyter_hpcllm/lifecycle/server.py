"""A running model server (``Server``) and a job as the queue shows it (``ServerInfo``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.profiles import Profile
from ..edge.slurm import JobRow, JobState
from ..edge.transport import Forward
from ..errors import JobNotFound

if TYPE_CHECKING:
    import openai

    from .cluster import Cluster

__all__ = ["Server", "ServerInfo"]


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
        )


class Server:
    """A running model server: its job, the local address that reaches it, and OpenAI clients for it."""

    def __init__(self, cluster: Cluster, job_id: str, *, model: str, engine: str, node: str, port: int,
                 api_key: str, forward: Forward) -> None:
        self.cluster = cluster
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

        return openai.OpenAI(base_url=self.base_url, api_key=self._api_key, **options)

    def async_client(self, **options: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, **options)

    def status(self) -> ServerInfo:
        try:
            info = self.cluster.status(self.job_id)
        except JobNotFound:
            return ServerInfo(self.job_id, JobState.UNKNOWN, self.model, self.engine, self.node, None, None)
        return info if self._down else _with_url(info, self.base_url)

    def logs(self, lines: int = 100) -> str:
        """The last lines of the engine log (the API key is redacted on the node)."""
        return self.cluster.logs(self.job_id, lines=lines)

    def follow_logs(self, poll: float = 1.0) -> Iterator[str]:
        """Yield new log text as it arrives, until the job ends."""
        yield from self.cluster.follow_logs(self.job_id, poll=poll)

    def down(self, wait: float = 15.0) -> JobState:
        """Cancel the job and close the forward. Idempotent; returns the job's state afterwards."""
        self._forward.close()
        if not self._down:
            state = self.cluster.cancel(self.job_id, wait=wait)
            self._down = True  # only once scancel ran: a failed one is sent again next time
            return state
        return self.cluster.wait_gone(self.job_id, wait)

    def close(self) -> None:
        """Close the forward but leave the job running (another session can attach to it)."""
        self._forward.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _with_url(info: ServerInfo, url: str) -> ServerInfo:
    from dataclasses import replace

    return replace(info, url=url)
