"""Where answers come from: the model, the engine and its image, the parsers, the sampling, the job and the
time, recorded with every `%%llm` output and every map; and the endpoint a map sends to (`Target`)."""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..errors import ConfigError, HpcllmError
from ..lifecycle import Server
from ..lifecycle.metrics import parse_metrics
from .prompt import Endpoint

__all__ = ["Target", "provenance", "target_of"]


# An option one of whose words is one of these (--hf-token, --api-key; not --tokenizer-mode) holds a secret.
_SECRET_WORDS = frozenset({"token", "key", "secret", "password", "passwd", "auth", "credential", "credentials"})


def redacted(arguments: list[str]) -> list[str]:
    """An engine's arguments fit to keep in a notebook: the value of any option that names a secret (an
    `--hf-token`, say) replaced, and credentials taken out of URLs."""
    out: list[str] = []
    hide_next = False
    for word in arguments:
        if hide_next and not word.startswith("--"):
            out.append("[redacted]")
            hide_next = False
            continue
        hide_next = False
        name, equals, _ = word.partition("=")
        if word.startswith("-") and _SECRET_WORDS & set(re.split(r"[-_]+", name.lower())):
            if equals:
                out.append(f"{name}=[redacted]")
            else:
                out.append(word)
                hide_next = True
            continue
        out.append(_without_credentials(word))
    return out


def _without_credentials(text: str) -> str:
    """A URL without its user:password@ and query (where keys travel); any other text as it is."""
    if "://" not in text:
        return text
    parts = urllib.parse.urlsplit(text)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(server: Server | None, model: str, endpoint_label: str, sampling: dict[str, Any] | None = None,
               *, wait: bool = True, **more: Any) -> dict[str, Any]:
    """The record of how an answer is made, as JSON-able values. The engine's image and arguments are read
    from the job's script once per job; if that fails the rest is still recorded. `wait=False`: only what
    is known already (a notebook's main thread does not wait on the login node for it)."""
    record: dict[str, Any] = {"model": model, "endpoint": _without_credentials(endpoint_label)}
    if server is not None:
        record.update(engine=server.engine, job_id=server.job_id, node=server.node, profile=server.profile.name)
        try:
            details = server.engine_record(wait=wait)
        except HpcllmError:
            details = {}
        for key in ("image", "tool_call_parser", "reasoning_parser", "tensor_parallel", "data_parallel",
                    "max_model_len", "quantization", "speculative", "chat_template"):
            if details.get(key) is not None:
                record[key] = details[key]
        if details.get("command"):
            record["engine_args"] = redacted(details["command"])
    record["sampling"] = dict(sampling or {})
    record.update({key: value for key, value in more.items() if value is not None})
    record["time"] = _now()
    record["jupyter_hpcllm"] = __version__
    return record


@dataclass
class Target:
    """What a map sends to: the OpenAI base URL and key, the model, and how to read the engine's load."""

    base_url: str
    api_key: str = field(repr=False)
    model: str
    label: str
    server: Server | None = None
    read_load: Callable[[], tuple[float | None, float | None] | None] | None = None
    headers: dict[str, str] | None = None  # the user's client's own headers and query (a gateway's)
    query: dict[str, object] | None = None

    def async_client(self, timeout: float, connections: int) -> Any:
        import openai

        httpx = _openai_httpx()

        # No retries in the client: the map retries transient errors itself, with its own backoff, and
        # counts them. One connection per request in flight.
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, default_headers=self.headers,
            default_query=self.query,
            timeout=httpx.Timeout(timeout, connect=15.0),
            http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections)))

    def load(self) -> tuple[float | None, float | None] | None:
        """(requests running, waiting) in the engine now; None if it does not say."""
        if self.read_load is None:
            return None
        try:
            return self.read_load()
        except Exception:  # a missed reading keeps the pace as it is
            return None

    def fingerprint(self) -> dict[str, Any]:
        """What, besides the model's name, decides the answers: the engine's parsers, chat template and
        quantization (not the job or node: a successor job, or the same plan tomorrow, gives the same)."""
        if self.server is None:
            return {}
        try:
            record = self.server.engine_record()
        except HpcllmError:
            return {}
        keys = ("tool_call_parser", "reasoning_parser", "chat_template", "quantization")
        found = {key: record[key] for key in keys if record.get(key) is not None}
        return dict(found, engine=self.server.engine) if record else {}

    def provenance(self, sampling: dict[str, Any], **more: Any) -> dict[str, Any]:
        return provenance(self.server, self.model, self.label, sampling, **more)


def target_of(server: Any, model: str | None = None) -> Target:
    """A Server, an Endpoint (%hpcllm use) or an openai.OpenAI client (with `model`). An Endpoint or a
    client that a Server made (`%hpcllm up`'s `client`) stands for that server."""
    made_by = getattr(getattr(server, "client", server), "_hpcllm_server", None)
    maker = made_by() if callable(made_by) else None
    if isinstance(maker, Server) and not maker.closed:
        server = maker
    if isinstance(server, Server):
        def server_load() -> tuple[float | None, float | None]:
            reading = server.metrics(rate_within=0)
            return reading.running, reading.waiting

        return Target(server.base_url, server.api_key, model or server.model, f"job {server.job_id}", server,
                      server_load)
    if isinstance(server, Endpoint):
        client, model = server.client, model or server.model
    elif hasattr(server, "chat") and hasattr(server, "base_url") and hasattr(server, "api_key"):
        client = server
        if model is None:
            raise ConfigError("A map through an OpenAI client needs the model's name: model='...'.",
                              "client.models.list() shows what the server serves.")
    else:
        raise ConfigError(f"A map sends to a server (hpc.up(...)), an openai.OpenAI client or an Endpoint, not "
                          f"{type(server).__name__}.", "Start one with hpc.up(MODEL) or %hpcllm up MODEL.")
    base_url = str(client.base_url).rstrip("/")
    return Target(base_url, str(client.api_key), model, base_url, None, _metrics_reader(base_url, str(client.api_key)),
                  headers=dict(getattr(client, "_custom_headers", None) or {}) or None,
                  query=dict(getattr(client, "_custom_query", None) or {}) or None)


def _openai_httpx() -> Any:
    """The HTTP library the openai client is built on (httpx; httpx2 from openai 3.x on)."""
    import importlib

    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("openai's HTTP library (httpx) is not installed")


def _metrics_reader(base_url: str, api_key: str) -> Callable[[], tuple[float | None, float | None] | None]:
    """vLLM and SGLang serve /metrics beside /v1 (SGLang with --enable-metrics)."""
    root = base_url[:-3] if base_url.endswith("/v1") else base_url

    refused = False

    def read() -> tuple[float | None, float | None] | None:
        nonlocal refused
        if refused:  # a server without /metrics (or one that refuses it) is not asked four times a second
            return None
        httpx = _openai_httpx()
        answer = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=5.0)
        if answer.status_code != 200:
            refused = True
            return None
        reading = parse_metrics(answer.text)
        return reading.running, reading.waiting

    return read
