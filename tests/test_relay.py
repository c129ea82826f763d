"""The job's relay (jupyter_hpcllm/node/relay.py) in front of the engine double, as real processes.

The double runs as vLLM with an API key through the singularity stand-in, on 127.0.0.1, as a job runs it;
the relay runs as `python3 -c SOURCE ...`, exactly as the job script runs it ($HPCLLM_RELAY_PYTHON picks
another interpreter, e.g. a Python 3.6, the oldest a node may have). No cluster needed.
"""

from __future__ import annotations

import ast
import json
import os
import pwd
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SINGULARITY = str(HERE / "cluster" / "singularity")
RELAY_SOURCE = (HERE.parent / "jupyter_hpcllm" / "node" / "relay.py").read_text()
RELAY_PYTHON = os.environ.get("HPCLLM_RELAY_PYTHON", "python3")
KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
MODEL = "Qwen3-8B"
NEEDS_KEY = "needs the job's API key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat(text: str, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


# --- raw HTTP: the tests control every byte -------------------------------------------------------------


def request(method: str, path: str, body: object = None, key: str | None = KEY, close: bool = True,
            headers: dict[str, str] | None = None) -> bytes:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: relay-test"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if data or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if close:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)

    def events(self) -> list[str]:
        return [line[6:] for line in self.body.decode().splitlines() if line.startswith("data: ")]

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:200]!r})"


def read_response(reader, head: bool = False) -> Response:
    """One response from a buffered reader (pipelined responses follow one another)."""
    status_line = reader.readline()
    if not status_line:
        raise EOFError("the connection closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head:
        body = b""
    elif "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(reader.readline().strip(), 16):
            body += reader.read(size)
            reader.readline()
        reader.readline()
    else:
        body = reader.read()
    return Response(status, headers, body)


class Conn:
    """A client connection to one port."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> Conn:
        self.sock.sendall(data)
        return self

    def response(self, head: bool = False) -> Response:
        return read_response(self.reader, head)

    def at_eof(self) -> bool:
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def exchange(port: int, data: bytes, head: bool = False) -> Response:
    """One request on its own connection."""
    conn = Conn(port).send(data)
    try:
        return conn.response(head)
    finally:
        conn.close()


# --- the engine and the relay ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> int:
    """The vLLM double with the key, on 127.0.0.1: its port. Shared by the module (it is stateless enough)."""
    tmp = tmp_path_factory.mktemp("engine")
    model = tmp / MODEL
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 40960}))
    (model / "model.safetensors").write_bytes(b"")
    (tmp / "vllm.sif").write_text("engine=vllm\ndelay=0.1\n")
    port = free_port()
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "VLLM_API_KEY": KEY}
    environment.pop("PYTHONPATH", None)
    process = subprocess.Popen([SINGULARITY, "exec", "--nv", str(tmp / "vllm.sif"), "vllm", "serve", str(model),
                                "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port)],
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        assert process.poll() is None and time.monotonic() < deadline, "the engine double did not start"
        try:
            if exchange(port, request("GET", "/health", key=None)).status == 200:
                break
        except OSError:
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


class Relay:
    def __init__(self, job: Path, process: subprocess.Popen, stand_in: subprocess.Popen) -> None:
        self.job, self.process, self.stand_in = job, process, stand_in
        self.port = 0

    def wait_port(self) -> Relay:
        deadline = time.monotonic() + 10
        while not (self.job / "relay.port").exists():
            assert self.process.poll() is None, self.process.communicate()[1]
            assert time.monotonic() < deadline, "the relay wrote no relay.port"
            time.sleep(0.02)
        self.port = int((self.job / "relay.port").read_text())
        return self

    def activity(self) -> dict:
        return json.loads((self.job / "activity.json").read_text())

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(5)
        if self.stand_in.poll() is None:
            self.stand_in.kill()
            self.stand_in.wait()
        return self.process.stderr.read()


@pytest.fixture
def start_relay(tmp_path):
    """Start a relay: (engine port, relay options...) → Relay. The engine pid it is given is a stand-in
    (`sleep 60`), so that what the relay signals can be seen and the shared engine lives on."""
    started: list[Relay] = []

    def start(engine_port: int, *options: str, key: str | None = KEY) -> Relay:
        job = tmp_path / f"job{len(started)}"
        job.mkdir(mode=0o700)
        if key is not None:
            (job / "key").write_text(key + "\n")
            (job / "key").chmod(0o600)
        stand_in = subprocess.Popen(["sleep", "60"])
        process = subprocess.Popen(
            [RELAY_PYTHON, "-c", RELAY_SOURCE, "--job-dir", str(job), "--engine-port", str(engine_port),
             "--engine-pid", str(stand_in.pid), "--listen", "127.0.0.1", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        relay = Relay(job, process, stand_in)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        assert KEY not in relay.stop(), "the relay printed the key"


@pytest.fixture
def relay(engine, start_relay) -> Relay:
    return start_relay(engine, "--head-timeout", "1").wait_port()


def requests_served(engine_port: int) -> float:
    """The engine's count of completions run (its /metrics)."""
    metrics = exchange(engine_port, request("GET", "/metrics", key=None)).body.decode()
    return float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("vllm:request_success_total")))


# --- the door: nothing without the key but /health -------------------------------------------------------

ROUTES = [  # (method, path, body, a check of the answer with the key)
    ("GET", "/v1/models", None, lambda r: r.json()["data"][0]["id"] == MODEL),
    ("POST", "/v1/chat/completions", chat("door"),
     lambda r: r.json()["choices"][0]["message"]["content"] == "Echo: door"),
    ("POST", "/invocations", chat("side door"),
     lambda r: r.json()["choices"][0]["message"]["content"] == "Echo: side door"),
    ("POST", "/tokenize", {"prompt": "one two three"}, lambda r: r.json()["count"] == 3),
    ("POST", "/detokenize", {"tokens": [1000]}, lambda r: "prompt" in r.json()),
    ("POST", "/pooling", {"input": "a b"}, lambda r: r.json()["data"][0]["object"] == "pooling"),
    ("POST", "/score", {"text_1": "a b", "text_2": "a c"}, lambda r: 0 < r.json()["data"][0]["score"] < 1),
    ("POST", "/rerank", {"query": "a", "documents": ["b", "a"]}, lambda r: r.json()["results"][0]["index"] == 1),
    ("POST", "/classify", {"input": "good"}, lambda r: r.json()["data"][0]["label"] == "positive"),
    ("GET", "/version", None, lambda r: "version" in r.json()),
    ("GET", "/ping", None, lambda r: r.status == 200),
    ("POST", "/ping", None, lambda r: r.status == 200),
    ("GET", "/load", None, lambda r: r.json()["server_load"] >= 0),
    ("GET", "/metrics", None, lambda r: b"vllm:num_requests_running" in r.body),
    ("POST", "/invocations", None, lambda r: r.status == 400 and "JSON object" in r.json()["message"]),
    ("GET", "/v1/models", b'{"with": "a body"}', lambda r: r.json()["object"] == "list"),
    ("GET", "/health?probe=1", b"x", lambda r: r.status == 200),  # /health, but with a body: not exempt
    ("POST", "/health", None, lambda r: r.status == 404),  # the double has no POST /health: it says so
    ("HEAD", "/v1/models", None, lambda r: r.status == 405),  # the double's answer: the key got it there
]


@pytest.mark.parametrize("method, path, body, check", ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_every_route_needs_the_key(engine, relay, method, path, body, check):
    refused = exchange(relay.port, request(method, path, body, key=None), head=method == "HEAD")
    assert refused.status == 401 and refused.headers["connection"] == "close"
    if method != "HEAD":
        assert NEEDS_KEY in refused.json()["error"]
    answered = exchange(relay.port, request(method, path, body), head=method == "HEAD")
    assert check(answered), answered


def test_the_open_routes_are_open_on_the_engine_itself(engine):
    """Why the relay exists: vLLM runs /invocations and answers /tokenize for anyone."""
    assert exchange(engine, request("POST", "/invocations", chat("free"), key=None)).status == 200
    assert exchange(engine, request("POST", "/tokenize", {"prompt": "x"}, key=None)).status == 200
    assert exchange(engine, request("POST", "/v1/chat/completions", chat("free"), key=None)).status == 401


def test_health_needs_no_key(relay):
    assert exchange(relay.port, request("GET", "/health", key=None)).status == 200
    assert exchange(relay.port, request("GET", "/health?verbose=1", key=None)).status == 200
    assert exchange(relay.port, request("HEAD", "/health", key=None), head=True).status == 200
    for path in ("/health/", "/healthz", "//health", "/%68ealth", "/health/../invocations"):
        assert exchange(relay.port, request("GET", path, key=None)).status == 401, path


@pytest.mark.parametrize("authorization", [
    f"Bearer {KEY[:-1]}x", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}", f"Bearer\t{KEY}", f"Bearer {KEY}x",
    f"Bearer {KEY[:-1]}", f"Bearer {KEY} x", f"Basic {KEY}", KEY, "Bearer", "",
])
def test_wrong_keys_and_bearer_variants_are_refused(relay, authorization):
    data = request("POST", "/invocations", chat("sneak"), key=None, headers={"Authorization": authorization})
    assert exchange(relay.port, data).status == 401


def test_the_key_header_name_is_case_insensitive(relay):
    data = request("POST", "/invocations", chat("hi"), key=None, headers={"aUtHoRiZaTiOn": f"Bearer {KEY}"})
    assert exchange(relay.port, data).json()["choices"][0]["message"]["content"] == "Echo: hi"


# --- smuggling: the engine never sees a request the relay did not check ----------------------------------


def test_pipelined_health_then_invocations_in_one_write(engine, relay):
    before = requests_served(engine)
    conn = Conn(relay.port).send(request("GET", "/health", key=None, close=False)
                                 + request("POST", "/invocations", chat("smuggled"), key=None, close=False))
    assert conn.response().status == 200
    refused = conn.response()
    assert refused.status == 401 and NEEDS_KEY in refused.json()["error"]
    assert conn.at_eof()
    conn.close()
    assert requests_served(engine) == before


@pytest.mark.parametrize("data", [
    # chunked (or any) body on /health before the key
    b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 120\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n",
    # heads an engine could read as two requests, or with a header the relay would not have seen
    b"GET /health HTTP/1.1\r\nHost: x\n\nGET /load HTTP/1.1\r\nX: y\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\rTransfer-Encoding: chunked\r\n\r\n",
    b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/2\r\nHost: x\r\n\r\n",
    b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["chunked", "two-lengths", "upgrade", "bare-lf", "space-before-colon", "obs-fold", "bare-cr",
        "two-spaces", "http2", "absolute-form"])
def test_health_that_is_not_plain_is_refused(engine, relay, data):
    before = requests_served(engine)
    conn = Conn(relay.port).send(data + b"0\r\n\r\n" + request("POST", "/invocations", chat("smuggled"), key=None))
    assert conn.response().status in (400, 401)
    assert conn.at_eof()
    conn.close()
    assert requests_served(engine) == before


def test_an_incomplete_head_times_out_and_a_huge_one_is_refused(relay):
    conn = Conn(relay.port).send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert conn.response().status == 408  # --head-timeout 1
    assert conn.at_eof() and 0.8 < time.monotonic() - started < 3
    conn.close()
    conn = Conn(relay.port).send(b"GET /health HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 17000 + b"\r\n\r\n")
    assert conn.response().status == 431 and conn.at_eof()
    conn.close()
    # Nothing at all: an idle connection is just closed.
    conn = Conn(relay.port)
    assert conn.at_eof()
    conn.close()


# --- trusted connections: a splice ------------------------------------------------------------------------


def test_keep_alive_on_a_trusted_connection(relay):
    conn = Conn(relay.port)
    for _ in range(3):  # health polls before the key, on the same connection
        assert conn.send(request("GET", "/health", key=None, close=False)).response().status == 200
    for i in range(50):
        reply = conn.send(request("POST", "/v1/chat/completions", chat(f"number {i}"), close=False)).response()
        assert reply.json()["choices"][0]["message"]["content"] == f"Echo: number {i}"
    # Trust is per connection: once the key was seen, the rest is spliced unread (the engine checks its /v1).
    assert conn.send(request("POST", "/invocations", chat("later"), key=None, close=False)).response().status == 200
    conn.close()
    assert exchange(relay.port, request("GET", "/hpcllm/status")).json()["requests_trusted"] == 1  # connections


def test_a_half_close_is_passed_on_and_the_answer_still_arrives(relay):
    conn = Conn(relay.port).send(request("POST", "/v1/chat/completions", chat("then EOF"), close=False))
    conn.sock.shutdown(socket.SHUT_WR)  # "no more requests": the engine still answers this one, then closes
    assert conn.response().json()["choices"][0]["message"]["content"] == "Echo: then EOF"
    assert conn.at_eof()
    conn.close()


def test_streaming_through_the_relay_matches_direct(engine, relay):
    def contents(port: int) -> list[str]:
        reply = exchange(port, request("POST", "/v1/chat/completions", chat("/bench 300", stream=True)))
        events = reply.events()
        assert events[-1] == "[DONE]"
        return [json.loads(e)["choices"][0]["delta"].get("content", "?") for e in events[:-1]]

    direct = contents(engine)
    assert len(direct) == 302 and contents(relay.port) == direct


def test_concurrent_streams_get_their_own_answers(relay):
    answers: dict[int, str] = {}
    barrier = threading.Barrier(32)

    def one(i: int) -> None:
        prompt = " ".join(f"c{i}w{j}" for j in range(40))
        barrier.wait()
        reply = exchange(relay.port, request("POST", "/v1/chat/completions", chat(prompt, stream=True)))
        answers[i] = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                             for e in reply.events()[:-1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(answers) == list(range(32))
    for i, answer in answers.items():
        assert answer == "Echo: " + " ".join(f"c{i}w{j}" for j in range(40))


def test_connections_without_the_key_cannot_lock_the_owner_out(engine, start_relay):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"needs 2200 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))  # the relay inherits it
    try:
        relay = start_relay(engine, "--head-timeout", "10", "--idle-timeout", "2").wait_port()  # activity: 0.5 s
        assert exchange(relay.port, request("POST", "/hpcllm/lease", {"client": "t", "ttl": 60})).status == 200
        # A flood of connections that never show the key: the oldest are shed past 128.
        idle = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(1024)]
        deadline = time.monotonic() + 10
        while relay.activity()["connections"] > 130:
            assert time.monotonic() < deadline, relay.activity()
            time.sleep(0.1)
        mine = exchange(relay.port, request("GET", "/v1/models"))  # the owner, with the key, still gets in
        assert mine.status == 200 and mine.json()["data"]
        shed = sum(1 for sock in idle[:800] if _closed_by_peer(sock))
        assert shed >= 700, shed
        for sock in idle:
            sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_an_engine_that_is_not_listening_gives_503(start_relay):
    relay = start_relay(free_port()).wait_port()
    for key in (None, KEY):
        reply = exchange(relay.port, request("GET", "/health" if key is None else "/v1/models", key=key))
        assert reply.status == 503 and reply.headers["connection"] == "close" and "loading" in reply.json()["error"]


# --- leases, activity and the idle exit --------------------------------------------------------------------


def test_leases_and_status(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "40").wait_port()
    conn = Conn(relay.port).send(request("POST", "/hpcllm/lease", {"client": "kernel-1", "ttl": 30}, close=False))
    lease = conn.response()
    assert lease.status == 200 and lease.headers["connection"] == "close" and conn.at_eof()  # never spliced
    conn.close()
    now = time.time()
    assert lease.json()["idle_timeout"] == 40 and lease.json()["renew_every"] == 10
    assert abs(lease.json()["lease_expires"] - (now + 30)) < 2
    long = exchange(relay.port, request("POST", "/hpcllm/lease", {"client": "kernel-2", "ttl": 1e9})).json()
    assert abs(long["lease_expires"] - (now + 3600)) < 2  # clamped
    status = exchange(relay.port, request("GET", "/hpcllm/status")).json()
    assert status["leases"] == 2 and status["lease_expires"] == long["lease_expires"]
    assert relay.activity()["leases"] == 2  # written when a lease changes
    released = exchange(relay.port, request("DELETE", "/hpcllm/lease?client=kernel-2"))
    assert released.status == 200 and released.json() == {"released": True}
    status = exchange(relay.port, request("GET", "/hpcllm/status")).json()
    assert status["leases"] == 1 and abs(status["lease_expires"] - lease.json()["lease_expires"]) < 0.01
    assert status["requests_trusted"] == 0  # the relay's own routes are not the engine's requests
    assert exchange(relay.port, request("POST", "/hpcllm/lease", {"client": "x", "ttl": 5}, key=None)).status == 401
    assert exchange(relay.port, request("GET", "/hpcllm/status", key="wrong")).status == 401
    for bad in ({"client": "", "ttl": 5}, {"client": "x" * 65, "ttl": 5}, {"client": "a\nb", "ttl": 5},
                {"client": "x"}, {"client": "x", "ttl": "soon"}, [1]):
        assert exchange(relay.port, request("POST", "/hpcllm/lease", bad)).status == 400, bad
    assert exchange(relay.port, request("GET", "/hpcllm/lease")).status == 405
    assert exchange(relay.port, request("GET", "/hpcllm/nothing")).status == 404
    assert exchange(relay.port, request("POST", "/hpcllm/lease", b"x" * 5000)).status == 413
    zero = exchange(start_relay(engine).wait_port().port, request("POST", "/hpcllm/lease",
                                                                    {"client": "a", "ttl": 0})).json()
    assert zero["renew_every"] == 60 and zero["idle_timeout"] == 0 and zero["lease_expires"] - time.time() < 1.5


def test_activity_json_follows_the_traffic(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "3").wait_port()  # written every 0.75 s
    first = relay.activity()
    assert first["requests_trusted"] == 0 and first["connections"] == 0 and first["idle_timeout"] == 3
    for name in ("activity.json", "relay.port"):
        assert (relay.job / name).stat().st_mode & 0o777 == 0o600
    exchange(relay.port, request("GET", "/health", key=None))  # not activity: anyone may poll it
    time.sleep(1.2)
    assert relay.activity()["last_activity"] == first["last_activity"]
    assert exchange(relay.port, request("GET", "/v1/models")).status == 200
    time.sleep(1.2)
    later = relay.activity()
    assert later["requests_trusted"] == 1 and later["last_activity"] > first["last_activity"]
    assert later["written"] > first["written"]


def test_idle_exit_terms_the_engine(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "1").wait_port()
    started = time.monotonic()
    assert relay.process.wait(5) == 0
    assert time.monotonic() - started < 3
    idle = json.loads((relay.job / "idle_exit").read_text())
    assert idle["reason"] == "idle" and idle["idle_seconds"] >= 1 and abs(idle["at"] - time.time()) < 5
    assert (relay.job / "idle_exit").stat().st_mode & 0o777 == 0o600
    assert relay.stand_in.wait(2) == -signal.SIGTERM


def test_a_live_lease_holds_off_the_idle_exit(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "1").wait_port()
    lease = exchange(relay.port, request("POST", "/hpcllm/lease", {"client": "notebook", "ttl": 2.5}))
    assert lease.json()["renew_every"] == 1
    time.sleep(1.8)
    assert relay.process.poll() is None and not (relay.job / "idle_exit").exists()
    assert relay.process.wait(3) == 0 and time.time() >= lease.json()["lease_expires"]
    assert (relay.job / "idle_exit").exists() and relay.stand_in.wait(2) == -signal.SIGTERM


def test_traffic_holds_off_the_idle_exit(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "1").wait_port()
    conn = Conn(relay.port)
    for i in range(8):
        conn.send(request("POST", "/v1/chat/completions", chat(f"still here {i}"), close=False)).response()
        time.sleep(0.25)
    assert relay.process.poll() is None
    conn.close()
    assert relay.process.wait(3) == 0


def test_an_idle_keep_alive_connection_does_not_hold_the_job(engine, start_relay):
    # Requests answered on one kept-alive connection (an httpx pool in a kernel) that then sits idle: the
    # job still ends itself (the answer must clear "waiting for an answer" however fast it comes back).
    for _ in range(5):
        relay = start_relay(engine, "--idle-timeout", "1").wait_port()
        conn = Conn(relay.port)
        for i in range(3):
            conn.send(request("GET", "/v1/models", close=False)).response()
            conn.send(request("POST", "/v1/chat/completions", chat(f"fast {i}"), close=False)).response()
        assert relay.process.wait(4) == 0, "an idle kept-alive connection held the job"
        conn.close()


def test_the_idle_clock_waits_for_the_engine_to_load(start_relay):
    # Nothing listens yet (a model loading for longer than the idle timeout): the job must not end itself.
    relay = start_relay(free_port(), "--idle-timeout", "1").wait_port()
    time.sleep(3)
    assert relay.process.poll() is None and not (relay.job / "idle_exit").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to listen as another user")
def test_an_engine_port_taken_by_another_user_is_never_given_the_key(start_relay):
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    thief = subprocess.Popen(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "/usr/bin/python3", "-c",
         "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); print('up', flush=True)"
         "; c, _ = s.accept(); sys.stdout.write(repr(c.recv(4096))); sys.stdout.flush()", str(port)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert thief.stdout is not None and thief.stdout.readline().strip() == "up"
        relay = start_relay(port).wait_port()
        for key in (KEY, None):
            reply = exchange(relay.port, request("GET", "/v1/models" if key else "/health", key=key))
            assert reply.status == 503 and "another user" in reply.json()["error"], reply
        time.sleep(0.5)
        assert thief.poll() is None  # it never got a connection, let alone the key
    finally:
        thief.kill()
        got = thief.communicate(timeout=5)[0]
    assert KEY not in got


def test_sigterm_stops_the_relay_not_the_engine(engine, start_relay):
    relay = start_relay(engine, "--idle-timeout", "0").wait_port()
    assert exchange(relay.port, request("GET", "/v1/models")).status == 200
    started = time.monotonic()
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(3) == 0 and time.monotonic() - started < 2  # at once, not at the next check
    assert not (relay.job / "idle_exit").exists()
    assert relay.stand_in.poll() is None  # the job script stops the engine itself


def test_a_fatal_error_terms_the_engine(engine, start_relay):
    relay = start_relay(engine, key=None)  # no key file
    assert relay.process.wait(5) == 1
    error = relay.process.stderr.read()
    assert error.count("\n") == 1 and "hpcllm relay:" in error and "key" in error
    assert relay.stand_in.wait(2) == -signal.SIGTERM


# --- the source, as the job script carries it ---------------------------------------------------------------


def test_the_source_runs_on_python_3_6_and_survives_the_job_scripts_heredoc(tmp_path):
    ast.parse(RELAY_SOURCE, feature_version=(3, 6))  # no walrus, no 3.8+ syntax
    assert "\nPY\n" not in RELAY_SOURCE  # the heredoc's end marker
    (tmp_path / "relay.py").write_text(RELAY_SOURCE)
    embedded = subprocess.run(["bash", "-c", 'RELAY_PY=$(cat <<\'PY\'\n' + RELAY_SOURCE.rstrip("\n")
                               + '\nPY\n)\nprintf %s "$RELAY_PY"'], capture_output=True, text=True, check=True)
    assert embedded.stdout == RELAY_SOURCE.rstrip("\n")
    helped = subprocess.run([RELAY_PYTHON, "-c", embedded.stdout, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--idle-timeout" in helped.stdout


def test_the_engines_metrics_with_the_key_are_not_activity(engine, start_relay):
    """A dashboard (the lab extension's sidebar) reads the metrics through the relay; watching a model is
    not using it, so the job still ends itself when idle."""
    relay = start_relay(engine, "--idle-timeout", "3").wait_port()
    first = relay.activity()
    answer = exchange(relay.port, request("GET", "/hpcllm/metrics"))
    assert answer.status == 200 and "vllm:num_requests_running" in answer.json()["metrics"]
    assert exchange(relay.port, request("GET", "/hpcllm/metrics", key=None)).status == 401
    assert exchange(relay.port, request("GET", "/hpcllm/metrics", key="wrong")).status == 401
    assert exchange(relay.port, request("POST", "/hpcllm/metrics")).status == 405
    time.sleep(1.2)
    later = relay.activity()
    assert later["last_activity"] == first["last_activity"] and later["requests_trusted"] == 0
    nothing = start_relay(free_port(), "--idle-timeout", "3").wait_port()  # no engine listening yet
    assert exchange(nothing.port, request("GET", "/hpcllm/metrics")).status == 503


@pytest.mark.parametrize("answer, stall", [
    (b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nvllm:num_requests_running 17", False),  # closed early
    (b"HTTP/1.0 200 OK\r\n\r\nvllm:num_requests_running 1", True),  # stalls: the rest never comes
])
def test_metrics_cut_short_are_a_504_never_a_wrong_number(start_relay, answer, stall):
    """An engine that sends part of its /metrics and closes, or stalls, must not pass `running 1` for 17."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def engine():
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(answer)
        if stall:
            done.wait(15)
        connection.close()

    threading.Thread(target=engine, daemon=True).start()
    relay = start_relay(port).wait_port()
    try:
        started = time.monotonic()
        conn = Conn(relay.port, timeout=15).send(request("GET", "/hpcllm/metrics"))
        reply = conn.response()
        conn.close()
        assert reply.status == 504 and "whole" in reply.json()["error"], reply.json()
        assert time.monotonic() - started < 9  # within the client's 10 s
    finally:
        done.set()
        listener.close()
