"""The job's authenticating relay: the one listener of a model-server job that other nodes can reach.

The engine listens on the node's 127.0.0.1 only. vLLM's --api-key guards just its /v1 paths (/invocations
runs a completion for anyone; /tokenize, /pooling, /metrics... answer anyone), so the relay lets nothing
through without `Authorization: Bearer <the job's key>` except a bodiless GET or HEAD /health. The first
request that carries the key makes its connection trusted: from then on bytes are copied both ways,
unparsed. It also ends an idle job: nothing relayed for --idle-timeout seconds, no request waiting for its
answer and no live lease (POST /hpcllm/lease, answered here) → write idle_exit, TERM the engine, exit 0.

Stdlib only, Python ≥ 3.6: it runs under the node's (or the image's) python3 as `python3 -c "$RELAY_PY" ...`.
Files in --job-dir: key (read); relay.port, activity.json, idle_exit (written atomically, mode 0600).
"""
# ruff: noqa: UP006, UP035, UP045  (typing.Dict, Optional: the node's python may be 3.6)

import argparse
import contextlib
import errno
import hmac
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs

HEAD_LIMIT = 16 * 1024
BODY_LIMIT = 4096  # the one body the relay reads itself: a lease
METRICS_LIMIT = 4 << 20  # the engine's /metrics answer, as the relay reads it (a few hundred KB at most)
METRICS_SECONDS = 5.0  # well within a client's 10 s: a slow engine is a 504, not a client that gave up
MAX_CONNECTIONS = 1024
MAX_UNTRUSTED = 128  # connections yet to show the key
UP_BUFFER = 64 * 1024  # client → engine: requests are small
DOWN_BUFFER = 256 * 1024  # engine → client: one recv takes all that has arrived, so a burst costs few syscalls
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110: methods and header names
NEEDS_KEY = "Unauthorized: this server needs the job's API key (Authorization: Bearer <key>)"
Headers = Dict[str, List[str]]


class Refuse(Exception):
    """Refuse(status, message): answer with a JSON error and `Connection: close`, then close."""


def write_private(path: str, text: str) -> None:
    """Atomically (a reader never sees half a file), mode 0600 whatever the umask."""
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    os.rename(temporary, path)


def parse_head(head: bytes) -> Tuple[str, str, Headers]:
    """Strict on purpose: what an engine could read as two requests (a bare LF, an obs-fold, `Name :`) is a
    400. The engine must never see a request boundary, or a header, that the relay did not see."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line or b"\0" in line for line in lines):
        raise Refuse(400, "malformed request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]) or not parts[1].startswith(b"/") \
            or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Refuse(400, "malformed request line")
    headers: Headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.match(name):
            raise Refuse(400, "malformed header line")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.strip(b" \t").decode("latin-1"))
    return parts[0].decode("ascii"), parts[1].decode("latin-1"), headers


def recv_by(sock: socket.socket, deadline: float, size: int) -> Optional[bytes]:
    """recv, or None at the deadline. poll, not select: descriptors pass FD_SETSIZE with many connections."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return sock.recv(size) if poller.poll(max(0.0, deadline - time.monotonic()) * 1000) else None


def close_quietly(sock: Optional[socket.socket], how: Optional[int] = None) -> None:
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(how) if how is not None else sock.close()


def port_owner(port: int) -> Optional[int]:
    """The uid that listens on this TCP port on the node (Linux's /proc/net/tcp), None if unknown: the
    engine's loopback port is open to every user of the node, and whoever binds it first would get the
    key from the relay. (Once the engine holds it, nobody else can bind it.)"""
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 7 and fields[3] == "0A" and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                        owners.add(int(fields[7]))
        except (OSError, ValueError):
            continue
    if not owners:
        return None
    return owners.pop() if len(owners) == 1 else -1  # two owners: never ours alone


def engine_healthy(port: int) -> bool:
    """GET /health answers 200: the engine has loaded (SGLang listens early and answers 503 until then)."""
    if port_owner(port) not in (None, os.getuid()):
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            return sock.recv(64).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


def terminate(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.kill(pid, signal.SIGTERM)


class Relay:
    """What the connections share: the key, the activity, the leases."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.job_dir, self.engine_port, self.engine_pid = args.job_dir, args.engine_port, args.engine_pid
        self.idle_timeout, self.head_timeout = max(0.0, args.idle_timeout), args.head_timeout
        with open(os.path.join(self.job_dir, "key"), "rb") as handle:
            self.expected = b"Bearer " + handle.read().strip()
        if self.expected == b"Bearer ":
            raise ValueError("the key file is empty")
        self.lock = threading.Lock()
        self.last_activity = time.time()
        self.leases: Dict[str, float] = {}  # client id → expiry (epoch seconds)
        self.open: Set[Connection] = set()
        self.trusted_total = 0
        self.engine_verified = False  # the engine's port seen listening under our own uid
        self.engine_ready: Optional[float] = None  # when /health first answered 200: the idle clock starts
        self.stopping = self.write_failed = False
        self.fatal: Optional[str] = None

    def authorized(self, headers: Headers) -> bool:
        return any(hmac.compare_digest(value.encode("latin-1"), self.expected)
                   for value in headers.get("authorization", []))

    def idle_seconds(self, now: float) -> Optional[float]:
        """A request waiting for its answer keeps the job too: a long non-streamed one sends nothing for minutes."""
        if self.engine_ready is None:
            return None  # still loading: a load longer than the idle timeout must not end the job
        idle = now - max(self.last_activity, self.engine_ready)
        if self.idle_timeout <= 0 or idle < self.idle_timeout:
            return None
        with self.lock:
            if any(expiry > now for expiry in self.leases.values()) or any(c.awaiting for c in self.open):
                return None
        return idle

    def activity(self) -> Dict[str, Any]:
        now = time.time()
        with self.lock:
            live = [expiry for expiry in self.leases.values() if expiry > now]
            return {"idle_timeout": self.idle_timeout, "last_activity": self.last_activity, "leases": len(live),
                    "lease_expires": max(live) if live else None, "connections": len(self.open),
                    "requests_trusted": self.trusted_total, "written": now}

    def write_activity(self) -> None:
        """A full disk or quota must not end the job, nor fail a lease: say so once, and go on."""
        try:
            write_private(os.path.join(self.job_dir, "activity.json"), json.dumps(self.activity()) + "\n")
        except OSError as error:
            if not self.write_failed:
                sys.stderr.write(f"hpcllm relay: cannot write activity.json: {error}\n")
            self.write_failed = True

    def answer(self, method: str, path: str, query: str, body: bytes) -> Tuple[int, Dict[str, Any]]:
        """/hpcllm/...: leases, status and the engine's metrics. Not activity: a lease says how long, on
        purpose, and a dashboard that watches the metrics does not use the model."""
        if path == "/hpcllm/status" and method in ("GET", "HEAD"):
            return 200, self.activity()
        if path == "/hpcllm/metrics" and method in ("GET", "HEAD"):
            return self.engine_metrics()
        if path != "/hpcllm/lease" or method not in ("POST", "DELETE"):
            routes = ("/hpcllm/status", "/hpcllm/lease", "/hpcllm/metrics")
            return (405 if path in routes else 404), {"error": "no such route"}
        now = time.time()
        if method == "DELETE":
            with self.lock:
                released = self.leases.pop((parse_qs(query).get("client") or [""])[0], None) is not None
            self.write_activity()
            return 200, {"released": released}
        try:
            request = json.loads(body.decode("utf-8"))
            client, ttl = request["client"], float(request["ttl"])
            if not isinstance(client, str) or not 0 < len(client) <= 64 or not client.isprintable():
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'the body must be {"client": "<1 to 64 printable characters>", "ttl": seconds}'}
        with self.lock:
            self.leases = {c: e for c, e in self.leases.items() if e > now}  # forget the expired
            self.leases[client] = expires = now + min(3600.0, max(1.0, ttl))
        self.write_activity()
        renew = max(1.0, min(60.0, self.idle_timeout / 4)) if self.idle_timeout else 60.0
        return 200, {"idle_timeout": self.idle_timeout, "renew_every": renew, "lease_expires": expires}


    def engine_metrics(self) -> Tuple[int, Dict[str, Any]]:
        """The engine's Prometheus text (GET /metrics on its loopback port, which needs no key: none is
        sent), as {"metrics": text}. Only from an engine port our own uid listens on; only a whole answer
        (to its Content-Length, or to the engine's close) within METRICS_SECONDS, else 504."""
        owner = port_owner(self.engine_port)
        if owner is not None and owner != os.getuid():
            return 503, {"error": "the model server's port is held by another user's program"}
        deadline, received, ended = time.monotonic() + METRICS_SECONDS, b"", False
        try:
            with socket.create_connection(("127.0.0.1", self.engine_port), timeout=2) as engine:
                engine.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")  # 1.0: it closes after
                while len(received) <= METRICS_LIMIT:
                    data = recv_by(engine, deadline, 1 << 16)
                    if data is None:  # the deadline: an answer cut short must not pass for the whole
                        break
                    if not data:
                        ended = True
                        break
                    received += data
        except OSError:
            return 503, {"error": "the model server does not accept connections yet (still loading?)"}
        head, _, text = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)[1:2]
        lengths = [line.split(b":", 1)[1].strip() for line in lines[1:] if line.lower().startswith(b"content-length:")]
        whole = ended and (not lengths or lengths[-1] == str(len(text)).encode())
        if len(received) > METRICS_LIMIT:
            return 502, {"error": "the model server's /metrics answer is larger than 4 MB"}
        if not whole:
            return 504, {"error": f"the model server's /metrics did not answer whole within {METRICS_SECONDS:g} s"}
        if status != [b"200"]:
            shown = (status or [b"no answer"])[0].decode("latin-1")
            return 502, {"error": f"the model server's /metrics answered {shown}"}
        return 200, {"metrics": text.decode("utf-8", "replace")}


def pump(src: socket.socket, dst: socket.socket, size: int, connection: "Connection", upstream: bool) -> None:
    """Copy until src's EOF: per chunk one recv_into, one sendall and two attribute stores."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    recv_into, sendall, relay, clock = src.recv_into, dst.sendall, connection.relay, time.time
    while True:
        n = recv_into(buffer)
        if not n:
            return
        if connection.trusted:  # an unauthenticated /health poll must not keep the job alive
            relay.last_activity = clock()
            # Before the bytes go: the engine's answer (which clears it) may come back before sendall returns.
            connection.awaiting = upstream
        sendall(view[:n])


class Connection:
    """One client: request heads parsed until one carries the key, then a splice."""

    def __init__(self, relay: Relay, client: socket.socket) -> None:
        self.relay, self.client = relay, client
        self.engine: Optional[socket.socket] = None  # opened by the first request let through
        self.down: Optional[threading.Thread] = None  # engine → client, a raw copy
        self.trusted = self.awaiting = False
        self.opened = time.monotonic()
        self.shed = False  # closed to make room (see shed_oldest_untrusted)
        self.local = False  # the relay answers itself: the engine's EOF must not end the client's side

    def run(self) -> None:
        pending = b""
        while True:
            head, pending = self.read_head(pending)
            if head is None:
                return
            method, target, headers = parse_head(head)
            path, _, query = target.partition("?")
            keyed = self.relay.authorized(headers)
            if path.startswith("/hpcllm/"):  # answered here, with the key only, and never spliced
                if not keyed:
                    raise Refuse(401, NEEDS_KEY)
                self.respond(*self.relay.answer(method, path, query, self.read_body(pending, headers)), method)
                return
            if keyed:
                engine = self.connect()
                with self.relay.lock:
                    self.relay.trusted_total += 1
                self.trusted = self.awaiting = True  # before the bytes go: the answer may beat the next line
                self.relay.last_activity = time.time()
                engine.sendall(head + b"\r\n\r\n" + pending)
                pump(self.client, engine, UP_BUFFER, self, True)
                engine.shutdown(socket.SHUT_WR)  # pass the half-close on
                return
            if method not in ("GET", "HEAD") or path != "/health" or "transfer-encoding" in headers \
                    or "upgrade" in headers or headers.get("content-length", ["0"]) != ["0"]:
                raise Refuse(401, NEEDS_KEY)
            self.connect().sendall(head + b"\r\n\r\n")  # only the head: what follows is the next request

    def read_head(self, pending: bytes) -> Tuple[Optional[bytes], bytes]:
        deadline = time.monotonic() + self.relay.head_timeout
        while True:
            end = pending.find(b"\r\n\r\n")
            if 0 <= end <= HEAD_LIMIT:
                return pending[:end], pending[end + 4:]
            if len(pending) > HEAD_LIMIT:
                raise Refuse(431, "the request head is larger than 16 KiB")
            data = recv_by(self.client, deadline, HEAD_LIMIT)
            if data is None and pending:
                raise Refuse(408, f"no complete request head within {self.relay.head_timeout:g} s")
            if not data:
                return None, b""  # closed, or an idle keep-alive connection: just close
            pending += data

    def read_body(self, pending: bytes, headers: Headers) -> bytes:
        length = headers.get("content-length", ["0"])[-1]
        if "transfer-encoding" in headers or not length.isdigit() or int(length) > BODY_LIMIT:
            raise Refuse(413, "send at most 4 KiB, with a Content-Length")
        deadline = time.monotonic() + self.relay.head_timeout
        while len(pending) < int(length):
            data = recv_by(self.client, deadline, BODY_LIMIT)
            if not data:
                raise Refuse(400, "the body ended early")
            pending += data
        return pending[:int(length)]

    def connect(self) -> socket.socket:
        if self.engine is None:
            if not self.relay.engine_verified:
                owner = port_owner(self.relay.engine_port)
                if owner is not None and owner != os.getuid():
                    # Another user took the engine's port first: they would get the key. Never connect.
                    raise Refuse(503, "the model server's port is held by another user's program")
                # Ours: nobody else can bind it while the engine holds it, so it is not read again.
                self.relay.engine_verified = owner == os.getuid()
            try:
                self.engine = socket.create_connection(("127.0.0.1", self.relay.engine_port), timeout=5)
            except OSError:
                raise Refuse(503, "the model server does not accept connections yet (still loading?)") from None
            self.engine.settimeout(None)
            self.engine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.down = threading.Thread(target=self.downstream, daemon=True)
            self.down.start()
        return self.engine

    def downstream(self) -> None:
        assert self.engine is not None
        try:
            pump(self.engine, self.client, DOWN_BUFFER, self, False)
            self.awaiting = False  # the engine closed: nothing it owes this client any more
            if not self.local:
                self.client.shutdown(socket.SHUT_WR)  # the engine closed: so does the relay, towards the client
        except OSError:  # one side broke: wake the other direction
            self.awaiting = False
            close_quietly(self.client, socket.SHUT_RDWR)
            close_quietly(self.engine, socket.SHUT_RDWR)

    def respond(self, status: int, body: Dict[str, Any], method: str = "GET") -> None:
        """The relay's own answer, after the engine's to earlier (pipelined) requests; then close."""
        self.local = True
        self.end_engine()
        data = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n"
                + ("WWW-Authenticate: Bearer\r\n" if status == 401 else "") + "\r\n")
        with contextlib.suppress(OSError):
            self.client.sendall(head.encode() + (b"" if method == "HEAD" else data))
            # A close with unread input sends a reset, which can destroy the answer: read what comes first.
            self.client.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + 1, 0
            while drained < 1 << 16:
                data = recv_by(self.client, deadline, 1 << 16) or b""
                if not data:
                    break
                drained += len(data)

    def end_engine(self) -> None:
        """Let the engine's answers still on their way arrive: all of them once trusted, else (/health
        answers only) for 10 s at most."""
        if self.down is not None:
            if not self.trusted:
                close_quietly(self.engine, socket.SHUT_WR)
                self.down.join(10)
                close_quietly(self.engine, socket.SHUT_RDWR)
            self.down.join()

    def finish(self) -> None:
        self.end_engine()
        close_quietly(self.client)
        close_quietly(self.engine)


def serve(relay: Relay, client: socket.socket) -> None:
    connection = Connection(relay, client)
    with relay.lock:
        relay.open.add(connection)
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.run()
    except Refuse as refusal:
        connection.respond(refusal.args[0], {"error": refusal.args[1]})
    except OSError:  # a reset or a broken pipe: close both
        close_quietly(connection.engine, socket.SHUT_RDWR)
    except Exception as error:  # a bug: one line, and this connection only
        sys.stderr.write(f"hpcllm relay: a connection failed: {type(error).__name__}: {error}\n")
    finally:
        connection.finish()
        with relay.lock:
            relay.open.discard(connection)


def accept(relay: Relay, listener: socket.socket, waker: socket.socket) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EINTR,
                               errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                               errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EPERM):
                time.sleep(0.1)  # out of descriptors or memory for a moment: ending connections free them
                continue
            relay.fatal = f"accept failed: {error}"
            waker.send(b"!")
            return
        try:
            shed_oldest_untrusted(relay)
            if len(relay.open) >= MAX_CONNECTIONS:
                raise RuntimeError("too many connections")
            threading.Thread(target=serve, args=(relay, client), daemon=True).start()
        except Exception:  # the cap, or no thread to be had: this client is refused, the relay goes on
            with contextlib.suppress(OSError):
                client.settimeout(1)
                client.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n'
                               b'Content-Length: 33\r\nConnection: close\r\n\r\n{"error": "too many connections"}')
            close_quietly(client)


def shed_oldest_untrusted(relay: Relay) -> None:
    """Connections without the key may hold at most MAX_UNTRUSTED places: past that, the oldest is closed,
    so nobody without the key can fill the relay and lock its owner out."""
    with relay.lock:
        untrusted = [c for c in relay.open if not c.trusted and not c.shed]
        oldest = min(untrusted, key=lambda c: c.opened) if len(untrusted) >= MAX_UNTRUSTED else None
        if oldest is not None:
            oldest.shed = True
    if oldest is not None:
        close_quietly(oldest.client, socket.SHUT_RDWR)


def watch(relay: Relay, wake: socket.socket) -> int:
    """The main thread: idle checks and activity.json. Signals only set a flag, and wake it up at once."""
    timeout = relay.idle_timeout
    check = max(0.2, min(1.0, timeout / 10)) if timeout else 1.0
    every = max(0.5, min(10.0, timeout / 4)) if timeout else 10.0
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    next_write, next_health = time.monotonic() + every, time.monotonic()
    while not relay.stopping:
        poller.poll(check * 1000)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            wake.recv(4096)
        if relay.fatal:
            raise RuntimeError(relay.fatal)
        now = time.time()
        if relay.engine_ready is None and time.monotonic() >= next_health:
            next_health = time.monotonic() + 2.0
            if engine_healthy(relay.engine_port):
                relay.engine_ready = now
        idle = relay.idle_seconds(now)
        if idle is not None and not relay.stopping:
            with contextlib.suppress(OSError):  # the job ends as idle all the same
                write_private(os.path.join(relay.job_dir, "idle_exit"),
                              json.dumps({"reason": "idle", "idle_seconds": round(idle, 3), "at": now}) + "\n")
            terminate(relay.engine_pid)
            return 0
        if time.monotonic() >= next_write:
            relay.write_activity()
            next_write = time.monotonic() + every
    return 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="The job's authenticating relay to its engine.")
    parser.add_argument("--job-dir", required=True, help="reads DIR/key; writes relay.port, activity.json, idle_exit")
    parser.add_argument("--engine-port", type=int, required=True, help="the engine listens on 127.0.0.1:N")
    parser.add_argument("--engine-pid", type=int, required=True, help="TERMed on an idle exit or a fatal error")
    parser.add_argument("--idle-timeout", type=float, default=0.0, help="seconds; 0 = never")
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--head-timeout", type=float, default=10.0, help="seconds to send a complete request head")
    args = parser.parse_args(argv)
    threading.stack_size(512 * 1024)  # two threads per connection: keep the memory they reserve small
    try:
        relay = Relay(args)
        listener = socket.socket(socket.AF_INET6 if ":" in args.listen else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.listen, args.port))
        listener.listen(512)
        wake, waker = socket.socketpair()
        wake.setblocking(False)
        waker.setblocking(False)

        def stop(signum: int, frame: Any) -> None:
            relay.stopping = True

        signal.set_wakeup_fd(waker.fileno())
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        relay.write_activity()
        threading.Thread(target=accept, args=(relay, listener, waker), daemon=True).start()
        write_private(os.path.join(args.job_dir, "relay.port"), f"{listener.getsockname()[1]}\n")
        return watch(relay, wake)
    except Exception as error:  # the engine is unreachable without the relay: do not hold the GPUs
        sys.stderr.write(f"hpcllm relay: {type(error).__name__}: {error}".replace("\n", " ") + "\n")
        terminate(args.engine_pid)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
