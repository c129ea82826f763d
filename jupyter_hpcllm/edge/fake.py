"""An in-memory cluster: ``FakeTransport`` drives the whole lifecycle with no SSH and no Slurm.

    cluster = Cluster(load_profile("ebi"), transport=FakeTransport())
    server = cluster.up("Qwen3-8B")       # submitted → pending → running → loading → ready
    server.client().chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}])

Shipped with the package, like httpx's MockTransport, for tests and offline trials. It knows exactly
the commands ``edge.slurm`` builds; any other fails with exit code 127, so a change there not made here
fails loudly. A job moves one step per probe of it, never by the clock: pending for ``pending_probes``
probes, running (a new port and key), loading over ``loading_probes``, then its ``Outcome``: the engine
serves (default), exits with a code and log, Slurm ends the job, or it never starts. Through
``forward()`` the engine answers real HTTP on 127.0.0.1 (/health, /v1/models, /v1/chat/completions,
streamed too; "Echo: <last user text>"), with its run's key. ``files()`` holds model directories under
``model_root``, or under whatever root the profile names if it is None. Test hooks: ``jobs``,
``commands``, ``forwards``, ``outcome``, ``sbatch_error``, ``requeue()``, ``set_state()``, and
``drop()``: the connection dies under the next matching command(s), before or after it ran, so retries
and the search for a job whose sbatch lost its connection can be tested; ``fresh()`` counts new
connections in ``fresh_connections``.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import CommandTimeout, ConnectError, ConnectionLost, RemoteCommandError
from ..planning.families import FAMILIES
from ..planning.script import JOBS_DIR
from .files import FileInfo
from .slurm import QUEUE_FORMAT, JobState
from .transport import CommandResult, check_result

__all__ = ["DEFAULT_MODELS", "VLLM_MAX_MODEL_LEN_ERROR", "FakeFiles", "FakeForward", "FakeJob", "FakeRun",
           "FakeTransport", "Outcome"]

DEFAULT_MODELS: Mapping[str, Mapping[str, Any]] = {
    "Qwen3-8B": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
                 "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "num_hidden_layers": 36, "max_position_embeddings": 40960, "vocab_size": 151936,
                 "torch_dtype": "bfloat16"},
    "gpt-oss-20b": {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
                    "intermediate_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                    "num_hidden_layers": 24, "num_local_experts": 32, "num_experts_per_tok": 4,
                    "max_position_embeddings": 131072, "vocab_size": 201088},
}
_TEMPLATES = {  # the markers family detection looks for, in otherwise trimmed templates
    "qwen3": "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{%- endif %}",
    "gpt_oss": "{{- '<|start|>assistant<|channel|>final<|message|>' }}",
}
VLLM_MAX_MODEL_LEN_ERROR = (
    "ValueError: To serve at least one request with the models's max seq len (40960), (12.00 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (3.00 GiB). Based on the available memory, the "
    "estimated maximum model length is 15344. Try increasing `gpu_memory_utilization` or decreasing "
    "`max_model_len` when initializing the engine.\n")
_MTIME = 1_700_000_000.0
_J, _ID, _FMT = re.escape(JOBS_DIR), r"(\d+(?:_\d+)?)", re.escape(shlex.quote(QUEUE_FORMAT))
_Out = tuple[int, str, str]  # exit status, stdout, stderr


def _image(engine: str, models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    known = [family.parsers(engine) for _, family in FAMILIES]
    architectures = {a for config in models.values() for a in config.get("architectures", ()) if isinstance(a, str)}
    return {"engine": engine, "version": "0.11.0" if engine == "vllm" else "0.5.4",
            "tool": sorted({p.tool for p in known if p.tool}), "reasoning": sorted({p.reasoning for p in known
                                                                                   if p.reasoning}),
            "architectures": sorted(architectures), "auto": engine == "sglang",
            "templates": sorted({p.tool_chat_template for p in known if p.tool_chat_template}), "problems": []}


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")  # as `date -Iseconds` writes it


@dataclass(frozen=True)
class Outcome:
    """How a job's start ends once its weights are loaded: by default the engine serves."""

    exit_code: int | None = None  # the engine exits with this code, after writing `log`
    log: str = ""
    slurm_state: str | None = None  # Slurm ends the job so (TIMEOUT, CANCELLED, NODE_FAIL...)
    starts: bool = True  # False: the job stays pending forever


@dataclass
class FakeRun:
    """One run of a job's engine (a requeued job runs again: another node, port, key and start)."""

    node: str
    port: int
    key: str
    started: str
    log: str = ""
    exit_code: int | None = None
    ready: bool = False
    alive: bool = True
    probes: int = 0
    leases: dict[str, float] = field(default_factory=dict)  # client -> expiry (time.time()), as the relay keeps
    generated: int = 0  # completion tokens served (its /metrics counter)
    used: int = 0  # keyed requests that reach the engine (what the relay counts as activity)
    in_flight: int = 0  # chat requests being answered


@dataclass
class FakeJob:
    job_id: str
    name: str
    model: str
    engine: str
    sbatch: dict[str, str]  # the script's #SBATCH --key=value lines
    script: str
    node: str  # where its next run starts
    outcome: Outcome
    state: str = "PENDING"  # as squeue's %T prints it (set_state may add "by 1001")
    reason: str = "Priority"
    expected_start: str = ""
    start_time: str = ""
    waited: int = 0  # probes seen while pending
    run: FakeRun | None = None
    ending: str | None = None  # the state Slurm gives at the next probe (the engine has exited)
    slurm_log: str = ""
    key_from: str | None = None  # a successor (renew) takes over this job's key


class FakeFiles:
    """Model directories in memory; with no root, the models are under any root asked for."""

    def __init__(self, models: Mapping[str, Mapping[str, Any]], model_root: str | None) -> None:
        self.root = model_root.rstrip("/") if model_root else None
        self.dirs = {name: _model_files(config) for name, config in models.items()}

    def _model(self, path: str) -> dict[str, tuple[int, bytes]] | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.dirs.get(name) if self.root is None or parent == self.root else None

    def list(self, path: str) -> list[FileInfo]:
        model = self._model(path)
        if model is not None:
            return [FileInfo(name, size, _MTIME, False, False) for name, (size, _) in model.items()]
        if self.root is None or path.rstrip("/") == self.root:
            return [FileInfo(name, 4096, _MTIME, True, False) for name in self.dirs]
        raise FileNotFoundError(path)

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        parent, _, name = path.rpartition("/")
        found = (self._model(parent) or {}).get(name)
        if found is None:
            raise FileNotFoundError(path)
        return found[1][:limit]


def _model_files(config: Mapping[str, Any]) -> dict[str, tuple[int, bytes]]:
    """config.json, a chat template where family detection needs one, and bf16 shards of at most 4 GB."""
    files = {"config.json": json.dumps(config, indent=2).encode()}
    template = _TEMPLATES.get(str(config.get("model_type")))
    if template:
        files["tokenizer_config.json"] = json.dumps({"chat_template": template}).encode()
    hidden, layers = int(config.get("hidden_size", 0)), int(config.get("num_hidden_layers", 0))
    total = 2 * (12 * layers * hidden**2 + 2 * int(config.get("vocab_size", 0)) * hidden)
    count = max(1, -(-total // 4_000_000_000))
    listing = {name: (len(data), data) for name, data in files.items()}
    listing.update({f"model-{i:05d}-of-{count:05d}.safetensors": (total // count, b"") for i in range(1, count + 1)})
    return listing


class _Tunnel(ThreadingHTTPServer):
    fake: FakeTransport
    target: tuple[str, int]  # the node:port this forward reaches
    connections: set[socket.socket]  # open ones, for close() to cut


class _Engine(BaseHTTPRequestHandler):
    """The engine's OpenAI API, as whatever run listens at the tunnel's node:port serves it."""

    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Tunnel

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def do_DELETE(self) -> None:
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        found = self.server.fake.listening(*self.server.target)
        if found is None:  # nothing listens there (any more): the connection drops, as a dead forward's does
            self.close_connection = True
            return
        job, run = found
        path = self.path.split("?")[0]
        if path == "/health":
            return self._send(200 if run.ready else 503, {})
        if self.headers.get("Authorization") != f"Bearer {run.key}":
            return self._send(401, _error("Unauthorized: the API key is missing or wrong.", 401))
        if path == "/hpcllm/lease":  # the job's relay keeps leases, whether the engine is ready or not
            return self._lease(run, body)
        if path == "/hpcllm/status":
            with self.server.fake._lock:
                return self._send(200, {"idle_timeout": 3600, "leases": len(run.leases), "requests_trusted": 0})
        if not run.ready:
            return self._send(503, _error("The server is starting.", 503))
        if not path.startswith("/hpcllm/"):
            with self.server.fake._lock:
                run.used += 1
        if path == "/hpcllm/metrics":  # the relay reads the engine's /metrics (vLLM's or SGLang's names)
            return self._send(200, {"metrics": _metrics_text(job.engine, run)})
        if self.command == "GET" and path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": job.model, "object": "model", "created": 0,
                                                                "owned_by": job.engine}]})
        if self.command == "POST" and path == "/v1/chat/completions":
            with self.server.fake._lock:
                run.in_flight += 1
            try:
                return self._chat(job, run, json.loads(body or b"{}"))
            except (ValueError, AttributeError) as error:  # not JSON, or not the shape of a chat request
                return self._send(400, _error(f"Bad request: {error}", 400))
            finally:
                with self.server.fake._lock:
                    run.in_flight -= 1
        self._send(404, _error(f"Not found: {self.command} {path}", 404))

    def _lease(self, run: FakeRun, body: bytes) -> None:
        client = self.path.partition("client=")[2] if self.command == "DELETE" else ""
        with self.server.fake._lock:
            if self.command == "DELETE":
                run.leases.pop(client, None)
                return self._send(200, {})
            request = json.loads(body or b"{}")
            run.leases[str(request["client"])] = time.time() + float(request["ttl"])
        return self._send(200, {"idle_timeout": 3600, "renew_every": self.server.fake.lease_renew_every,
                                "lease_expires": run.leases[str(request["client"])]})

    def _chat(self, job: FakeJob, run: FakeRun, request: dict[str, Any]) -> None:
        if request.get("model") != job.model:
            return self._send(404, _error(f"The model `{request.get('model')}` does not exist.", 404))
        messages = request.get("messages") or []
        content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        if isinstance(content, list):  # content parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        words = re.findall(r"\S+\s*", f"Echo: {content}")
        with self.server.fake._lock:
            run.generated += len(words)
        base = {"id": f"chatcmpl-{secrets.token_hex(8)}", "created": int(time.time()), "model": job.model}
        if not request.get("stream"):
            prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
            return self._send(200, {**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "".join(words)}, "logprobs": None,
                "finish_reason": "stop"}], "usage": {"prompt_tokens": prompt, "completion_tokens": len(words),
                                                     "total_tokens": prompt + len(words)}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        deltas: list[dict[str, str]] = [{"role": "assistant", "content": ""}, *({"content": w} for w in words), {}]
        for delta in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if not delta else None}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode() + (b"data: [DONE]\n\n" if not delta else b""))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _metrics_text(engine: str, run: FakeRun) -> str:
    """Prometheus text under the engine's own names (a vLLM counter of tokens; SGLang's throughput gauge)."""
    if engine == "sglang":
        return (f"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{{model_name=\"m\"}} {run.in_flight}\n"
                "sglang:num_queue_reqs{model_name=\"m\"} 0\nsglang:token_usage{model_name=\"m\"} 0.25\n"
                f"sglang:gen_throughput{{model_name=\"m\"}} {40.0 if run.in_flight else 0.0}\n")
    return (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {run.in_flight}\n"
            "vllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n"
            f"vllm:generation_tokens_total{{model_name=\"m\"}} {float(run.generated)}\n")


def _error(message: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class FakeForward:
    """A local HTTP server standing for a tunnel to node:port; close() stops it."""

    def __init__(self, fake: FakeTransport, host: str, port: int, local_port: int = 0) -> None:
        self._server = _Tunnel(("127.0.0.1", local_port), _Engine)
        self.target = self._server.target = (host, port)
        self._server.fake, self._server.connections = fake, set()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True,
                                        name=f"fake-forward-{host}:{port}")  # polls often: close() is quick
        self._thread.start()
        self.closed = False
        self.last_refusal: str | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def raise_if_failed(self) -> None:
        pass

    def retarget(self, host: str, port: int) -> None:
        self.target = self._server.target = (host, port)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._server.shutdown()
            self._server.server_close()
            for connection in list(self._server.connections):
                with contextlib.suppress(OSError):  # it may be closing on its own
                    connection.shutdown(socket.SHUT_RDWR)  # kept-alive clients are cut off too
            self._thread.join(5)


class FakeTransport:
    """An in-memory Slurm cluster with jobs that advance one step per probe."""

    description = "fake cluster"

    def __init__(self, *, models: Mapping[str, Mapping[str, Any]] = DEFAULT_MODELS, model_root: str | None = None,
                 pending_probes: int = 1, loading_probes: int = 2, shards: int | None = None,
                 outcome: Outcome = Outcome(), node: str = "gpu01", pending_reason: str = "Priority") -> None:
        self.pending_probes, self.loading_probes, self.shards = pending_probes, loading_probes, shards
        self.outcome = outcome  # of the jobs submitted from now on; a job's own is jobs[id].outcome
        self.node, self.pending_reason = node, pending_reason
        self.sbatch_error: str | None = None  # set it and sbatch refuses with this message
        self.extend_allowed = False  # whether `scontrol update TimeLimit=+N` works (only admins, mostly)
        self.lease_renew_every = 60.0  # what the relay of every job tells a lease to do
        self.renewals: dict[str, str] = {}  # job -> its successor ("" claimed, not yet submitted)
        self.committed: dict[str, str] = {}  # job -> its successor, once it serves and takes over
        self.renewal_owners: dict[str, str] = {}  # job -> the token of the renewer that claimed it
        # What each engine image says of itself when probed (planning.images): every parser of the family
        # table and the architectures of the fake's models. Change it to test what images decide.
        self.images: dict[str, dict[str, Any] | str | None] = {engine: _image(engine, models)
                                                         for engine in ("vllm", "sglang")}
        self.jobs: dict[str, FakeJob] = {}
        self.commands: list[str] = []
        self.fresh_connections = 0
        self.submissions: dict[str, _Out] = {}  # token -> what sbatch answered (a retry gets the same)
        self._drops: list[tuple[re.Pattern[str], str, list[int]]] = []  # pattern, when, [times left]
        self._files = FakeFiles(models, model_root)
        self.forwards: list[FakeForward] = []  # every forward opened (closed ones too)
        self._listening: dict[tuple[str, int], tuple[FakeJob, FakeRun]] = {}
        self._next_id, self._next_port = 1000, 20001
        self._lock = threading.RLock()
        mark = r"echo; echo @@hpcllm:(?P=b):"
        probe = (rf"cd; (?=echo; echo @@hpcllm:(?P<b>[0-9a-f]+):)"
                 rf"(?:{mark}queue; squeue -h -t all -j {_ID} -o {_FMT} 2>&1; )?"
                 rf"{mark}server; cat {_J}/{_ID}/server\.json 2>/dev/null; "
                 rf"{mark}exit; cat {_J}/\3/exit_code 2>/dev/null; "
                 rf"{mark}idle; cat {_J}/\3/idle_exit 2>/dev/null; "
                 rf"{mark}activity; cat {_J}/\3/activity\.json 2>/dev/null; "
                 rf"{mark}log; tail -c (\d+) {_J}/\3/engine\.log 2>/dev/null; "
                 rf"{mark}slurm; tail -c 2000 {_J}/slurm-\3\.out 2>/dev/null; "
                 rf"{mark}now; date \+%s; true")
        self._commands: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], _Out]]] = [
            (re.compile(rf"cd && mkdir -p {_J} && chmod 700 \.hpcllm {_J} \|\| exit 1; trap '' HUP; find .*; "
                        rf"i=0; while :; do if mkdir {_J}/\.submit-([0-9a-f]+) 2>/dev/null; then .* -ne (\d+) .*?"
                        rf"(?:squeue -h -u \"\$USER\" -n (\S+) .*?)?"
                        rf"sbatch --parsable(?: --export=ALL,HPCLLM_KEY_FROM=(\d+))? --comment=(\S+) .*"),
             self._sbatch),
            (re.compile(rf"cat {_J}/{_ID}/job\.sh"), self._job_script),
            (re.compile(rf"cd; if mkdir {_J}/{_ID}/renewal 2>/dev/null; then echo ([0-9a-f]+) > \S+; echo (\S+); .*"),
             self._claim_renewal),
            (re.compile(rf"cd; echo {_ID} > {_J}/{_ID}/renewal/job\.new && mv .*"), self._record_renewal),
            (re.compile(rf"cd; rm -rf {_J}/{_ID}/renewal"), self._drop_renewal),
            (re.compile(rf"cd; echo {_ID} > {_J}/{_ID}/renewal/ready\.new && mv .*"), self._commit_renewal),
            (re.compile(rf"cd; cat {_J}/{_ID}/renewal/ready 2>/dev/null; true"), self._successor),
            (re.compile(rf"cd; cat {_J}/{_ID}/renewal/job 2>/dev/null; true"),
             lambda m, _: (0, self.renewals[m[1]] + "\n" if self.renewals.get(m[1]) else "", "")),
            (re.compile(rf"scontrol update JobId={_ID} TimeLimit=\+(\d+)"), self._extend),
            (re.compile(rf'squeue -h -u "\$USER" -o {_FMT}(?: -n (\S+))?(?: -t ([A-Z,]+))?'), self._squeue),
            (re.compile(rf"scancel {_ID}"), self._scancel),
            (re.compile(rf"cat {_J}/{_ID}/key"), self._key),
            (re.compile(rf"cd; tail -n (\d+) {_J}/{_ID}/engine\.log"), self._tail),
            (re.compile(rf"cd; tail -c \+(\d+) {_J}/{_ID}/engine\.log 2>/dev/null; true"), self._tail),
            (re.compile(probe), self._probe),
            (re.compile(r"stat -L -c %Y (\S+)"), lambda m, _: (0, f"{_MTIME:.0f}\n", "")),
            (re.compile(r"cd; .*HPCLLM-IMAGE-PROBE.*\s(vllm|sglang)\s+\S+\s*; done.*", re.DOTALL), self._image_probe),
        ]

    # -- the Transport interface

    def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None,
            check: bool = True) -> CommandResult:
        with self._lock:
            self.commands.append(command)
            self._maybe_drop(command, "before")
            for pattern, handler in self._commands:
                match = pattern.fullmatch(command)
                if match:
                    result = CommandResult(command, *handler(match, stdin or ""))
                    self._maybe_drop(command, "after")
                    return check_result(result, check)
        raise RemoteCommandError(command, 127, "", f"bash: {command.split()[0]}: command not found (the fake "
                                                   "cluster does not know this command)")

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Any:
        raise ConnectError(f"The fake cluster has no network: cannot connect to {host}:{port}.")

    def files(self) -> FakeFiles:
        return self._files

    def forward(self, host: str, port: int, *, local_port: int = 0) -> FakeForward:
        forward = FakeForward(self, host, port, local_port)
        with self._lock:
            self.forwards.append(forward)
        return forward

    def connect(self) -> FakeTransport:
        return self

    def fresh(self) -> FakeTransport:
        """A new connection to the same fake cluster (the same object: the cluster's state is shared)."""
        with self._lock:
            self.fresh_connections += 1
        return self

    def close(self) -> None:
        with self._lock:
            forwards = list(self.forwards)
        for forward in forwards:
            forward.close()

    # -- test hooks

    def drop(self, pattern: str = ".*", *, when: str = "before", times: int = 1) -> None:
        """The connection dies under the next `times` commands matching `pattern` (a regex searched in the
        command): ``before`` they run, or ``after`` they ran (their effect stays, their output is lost)."""
        with self._lock:
            self._drops.append((re.compile(pattern), when, [times]))

    def _maybe_drop(self, command: str, when: str) -> None:
        for pattern, moment, left in self._drops:
            if moment == when and left[0] > 0 and pattern.search(command):
                left[0] -= 1
                raise ConnectionLost(f"The SSH connection to the fake cluster broke while running "
                                     f"`{command.split()[0]}` (a test dropped it).")

    def listening(self, node: str, port: int) -> tuple[FakeJob, FakeRun] | None:
        """The job run whose engine listens at node:port, if one does."""
        with self._lock:
            found = self._listening.get((node, port))
            return found if found and found[1].alive else None

    def set_state(self, job_id: str, state: str) -> None:
        """Give a job a state as Slurm or an admin would ("CANCELLED by 1001", "TIMEOUT", "SUSPENDED")."""
        with self._lock:
            job = self.jobs[job_id]
            if JobState.parse(state).is_finished or JobState.parse(state) is JobState.COMPLETING:
                self._end(job, state, f"{state.split()[0]} AT {_now()[:19]}")
            else:
                job.state = state

    def requeue(self, job_id: str, node: str | None = None) -> None:
        """Requeue a job (a node failed, a preemption): pending again, then a new run on `node`."""
        with self._lock:
            job = self.jobs[job_id]
            self._end(job, "PENDING", "REQUEUED")
            job.reason, job.waited, job.start_time, job.node = "BeginTime", 0, "", node or job.node

    # -- the commands

    def _sbatch(self, match: re.Match[str], script: str) -> _Out:
        token, size, unique, key_from = match[1], int(match[2]), match[3], match[4]
        comment = shlex.split(match[5])[0]
        if token in self.submissions:  # the same submission again: answered, never submitted twice
            return self.submissions[token]
        if len(script.encode()) != size:  # half a script (its connection died while sending it)
            return 76, "", "jupyter-hpcllm: the job script arrived incomplete; nothing was submitted\n"
        twin = next((job for job in self.jobs.values() if job.name == unique and JobState.parse(job.state)
                     in (JobState.PENDING, JobState.RUNNING, JobState.REQUEUED)), None) if unique else None
        if twin is not None:  # the locked look for a twin found one: nothing submitted
            self.submissions[token] = answer = (0, f"hpcllm-reuse:{twin.job_id}\n", "")
            return answer
        self.submissions[token] = answer = self._submit(script, comment)
        if answer[0] == 0 and key_from:
            self.jobs[answer[1].strip()].key_from = key_from
        return answer

    def _job_script(self, match: re.Match[str], _: str) -> _Out:
        job = self.jobs.get(match[1])
        if job is None or job.run is None:
            return 1, "", f"cat: {JOBS_DIR}/{match[1]}/job.sh: No such file or directory\n"
        return 0, job.script, ""

    def _claim_renewal(self, match: re.Match[str], _: str) -> _Out:
        job, token, claimed = match[1], match[2], match[3]
        if job not in self.renewals:
            self.renewals[job], self.renewal_owners[job] = "", token
            return 0, f"{claimed}\n", ""
        if self.renewal_owners.get(job) == token:  # its own claim, asked again
            return 0, f"{claimed}\n", ""
        return 0, (self.renewals[job] + "\n") if self.renewals[job] else "", ""

    def _record_renewal(self, match: re.Match[str], _: str) -> _Out:
        if match[2] not in self.renewals:  # as `echo > renewal/job.new` into a directory that is gone
            return 1, "", f"bash: {JOBS_DIR}/{match[2]}/renewal/job.new: No such file or directory\n"
        self.renewals[match[2]] = match[1]
        return 0, "", ""

    def _commit_renewal(self, match: re.Match[str], _: str) -> _Out:
        if match[2] not in self.renewals:
            return 1, "", f"bash: {JOBS_DIR}/{match[2]}/renewal/ready.new: No such file or directory\n"
        self.committed[match[2]] = match[1]
        return 0, "", ""

    def _successor(self, match: re.Match[str], _: str) -> _Out:
        successor = self.committed.get(match[1], "")
        return 0, successor + "\n" if successor else "", ""

    def _drop_renewal(self, match: re.Match[str], _: str) -> _Out:
        self.renewals.pop(match[1], None)
        self.committed.pop(match[1], None)
        self.renewal_owners.pop(match[1], None)
        return 0, "", ""

    def _extend(self, match: re.Match[str], _: str) -> _Out:
        job = self.jobs.get(match[1])
        if job is None:
            return 1, "", "slurm_update error: Invalid job id specified\n"
        if not self.extend_allowed:
            return 1, "", f"Job {match[1]}: Access/permission denied\nslurm_update error: Access/permission denied\n"
        return 0, "", ""

    def _submit(self, script: str, given: str) -> _Out:
        sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))
        comment = {k: v for k, _, v in (part.partition("=") for part in sbatch.get("comment", "").split(";")[1:])}
        sbatch["comment"] = given  # sbatch's own --comment wins over the script's, as in Slurm
        if not script.startswith("#!/bin/bash") or not sbatch.get("job-name") or "model" not in comment:
            return 1, "", "sbatch: error: not a jupyter-hpcllm job script (no --job-name or --comment=hpcllm;...)\n"
        if self.sbatch_error:
            return 1, "", f"sbatch: error: {self.sbatch_error}\n"
        job_id, self._next_id = str(self._next_id), self._next_id + 1
        expected = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
        self.jobs[job_id] = FakeJob(job_id, sbatch["job-name"], comment["model"], comment.get("engine", "vllm"),
                                    sbatch, script, self.node, self.outcome, reason=self.pending_reason,
                                    expected_start=expected)
        return 0, f"{job_id}\n", ""

    def _squeue(self, match: re.Match[str], _: str) -> _Out:
        name = shlex.split(match[1])[0] if match[1] else None
        states = match[2].split(",") if match[2] else None
        rows = [self._row(job) for job in self.jobs.values() if (name is None or job.name == name)
                and (JobState.parse(job.state).value in states if states else JobState.parse(job.state).is_active)]
        return 0, "".join(row + "\n" for row in rows), ""

    def _row(self, job: FakeJob) -> str:
        pending, run = JobState.parse(job.state) in (JobState.PENDING, JobState.REQUEUED), job.run
        start = (job.expected_start if pending else job.start_time) or "N/A"
        return "|".join([job.job_id, job.name, job.state, run.node if run and not pending else "",
                         job.sbatch.get("time", ""), job.reason if pending else "None", start,
                         job.sbatch.get("comment", ""), job.sbatch.get("gres", ""),
                         f"0:{run.probes:02d}" if run and not pending else "0:00"])

    def _scancel(self, match: re.Match[str], _: str) -> _Out:
        job = self.jobs.get(match[1])
        if job is None:
            return 1, "", f"scancel: error: Kill job error on job id {match[1]}: Invalid job id specified\n"
        if JobState.parse(job.state).is_active:
            self._end(job, "CANCELLED", f"CANCELLED AT {_now()[:19]}")
        return 0, "", ""

    def _key(self, match: re.Match[str], _: str) -> _Out:
        run = self.jobs[match[1]].run if match[1] in self.jobs else None
        return (0, run.key + "\n", "") if run else (1, "", f"cat: {match[0][4:]}: No such file or directory\n")

    def _tail(self, match: re.Match[str], _: str) -> _Out:
        number, job_id, from_byte = int(match[1]), match[2], "-c" in match[0]
        run = self.jobs[job_id].run if job_id in self.jobs else None
        if run is None:
            return 0 if from_byte else 1, "", f"tail: cannot open '{JOBS_DIR}/{job_id}/engine.log'\n"
        if from_byte:
            return 0, run.log.encode()[number - 1:].decode(errors="replace"), ""
        return 0, "".join(run.log.splitlines(keepends=True)[-number:]), ""

    def _probe(self, match: re.Match[str], _: str) -> _Out:
        mark, queue_id, job_id, log_bytes = f"@@hpcllm:{match['b']}:", match[2], match[3], int(match[4])
        if queue_id is not None and queue_id != job_id:
            raise RemoteCommandError(match[0], 127, "", "the probe names two different jobs")
        job = self.jobs.get(job_id)
        if job is not None:
            self._advance(job)
        run = job.run if job else None
        out = ""
        if queue_id is not None:
            out += f"\n{mark}queue\n" + (self._row(job) + "\n" if job else
                                          "slurm_load_jobs error: Invalid job id specified\n")
        server = {"job_id": job_id, "node": run.node, "port": run.port, "model": job.model, "engine": job.engine,
                  "started": run.started} if run and job else None
        out += f"\n{mark}server\n" + (json.dumps(server) + "\n" if server else "")
        out += f"\n{mark}exit\n" + (f"{run.exit_code}\n" if run and run.exit_code is not None else "")
        out += f"\n{mark}idle\n\n{mark}activity\n"
        if run is not None and run.alive:
            live = [expiry for expiry in run.leases.values() if expiry > time.time()]
            out += json.dumps({"idle_timeout": 3600, "last_activity": time.time() - 60 * run.probes,
                               "leases": len(live), "lease_expires": max(live) if live else None}) + "\n"
        log = run.log.encode()[-log_bytes:].decode(errors="replace") if run and log_bytes else ""
        out += f"\n{mark}log\n{log}\n{mark}slurm\n" + (job.slurm_log[-2000:] if job else "")
        return 0, out + f"\n{mark}now\n{int(time.time())}\n", ""

    def _image_probe(self, match: re.Match[str], _: str) -> _Out:
        """An image's answer to the probe (planning.images.PROBE); None in `images`: the client gives up
        waiting; "slow": the login node's `timeout` ends it first."""
        if self.images[match[1]] is None:
            raise CommandTimeout("(the image probe)", 180)
        if self.images[match[1]] == "slow":
            return 0, "INFO importing the model registry\n@@hpcllm-probe-exit:124\n", ""
        return 0, "INFO some start-up line\nHPCLLM-IMAGE-PROBE " + json.dumps(self.images[match[1]]) + "\n", ""

    # -- how a job moves, one step per probe

    def _advance(self, job: FakeJob) -> None:
        if job.ending:
            job.state, job.ending = job.ending, None
        state = JobState.parse(job.state)
        if state in (JobState.PENDING, JobState.REQUEUED):
            if job.outcome.starts and job.waited >= self.pending_probes:
                self._start(job)
            else:
                job.waited += 1
            return
        run = job.run
        if state is not JobState.RUNNING or run is None or not run.alive:
            return
        run.probes += 1
        if run.probes <= self.loading_probes:
            total = self.shards or sum(n.endswith(".safetensors") for n in self._files.dirs.get(job.model, {})) or 1
            done = total * run.probes // self.loading_probes
            run.log += (f"\rLoading safetensors checkpoint shards: {100 * done // total:3d}% Completed | "
                        f"{done}/{total} [00:0{run.probes}<00:00,  1.00s/it]")
        elif run.probes == self.loading_probes + 1:
            outcome = job.outcome
            if outcome.slurm_state:
                self._end(job, outcome.slurm_state, f"{outcome.slurm_state} AT {_now()[:19]}")
            elif outcome.exit_code is not None:
                run.log += "\n" + outcome.log
                run.exit_code, run.alive = outcome.exit_code, False
                job.ending = "COMPLETED" if outcome.exit_code == 0 else "FAILED"
            else:
                run.log += "\nINFO:     Application startup complete.\n"
                run.ready = True

    def _start(self, job: FakeJob) -> None:
        started = _now()
        job.state, job.reason, job.start_time = "RUNNING", "None", started[:19]
        predecessor = self.jobs.get(job.key_from or "")
        key = predecessor.run.key if predecessor and predecessor.run else secrets.token_hex(32)
        run = FakeRun(job.node, self._next_port, key, started)
        run.log = f"INFO {job.engine} (fake) serving {job.model} on {job.node}:{run.port}\n"
        self._next_port += 1
        job.run = run
        self._listening[(run.node, run.port)] = (job, run)

    def _end(self, job: FakeJob, state: str, why: str) -> None:
        """Slurm ends (or requeues) the job: a running engine gets TERM, the script writes its exit code."""
        job.state, job.ending = state, None
        run = job.run
        if run is not None and run.alive:
            run.alive, run.ready = False, False
            if run.exit_code is None and JobState.parse(state) not in (JobState.NODE_FAIL, JobState.BOOT_FAIL):
                run.exit_code = 143  # TERM; a failed node writes nothing
            job.slurm_log += f"slurmstepd: error: *** JOB {job.job_id} ON {run.node} {why} ***\n"
