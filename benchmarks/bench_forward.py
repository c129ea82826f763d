"""The port forward against OpenSSH's `ssh -L` and a direct connection, in the same run.

    python benchmarks/bench_forward.py [--repeats 5] [--megabytes 100] [--streams 32] [--pings 400]

A small HTTP/1.1 server of its own (not the engine double, which is far slower than any path) runs in a
separate process on 127.0.0.1, with TCP_NODELAY: ``GET /bytes/N`` serves N bytes from memory (one
``sendall`` of a ready buffer: ≥ 1 GB/s direct, so it outruns every path), ``GET /ping`` a tiny
keep-alive answer in one write, and ``GET /stream/N`` a streamed answer: the head, then N small chunks
5 ms apart, as an engine streams tokens. Three paths reach it: a direct TCP connection; `ssh -N -L`
through the test cluster's sshd (OpenSSH's defaults, ~/.ssh/config ignored); and jupyter-hpcllm's
forward, ``SSHTransport(profile).forward(...)``, the code path `up` uses, through the same sshd. The
load comes from a separate client process per measurement, the same for every path, that reads with
``recv_into`` a preallocated buffer. For each path and repeat: MB/s of one ``--megabytes`` response on a
warm keep-alive connection; the round trip of a small request (median of ``--pings``); the time to the
first chunk of a streamed answer (median of 8); the total MB/s of ``--streams`` concurrent connections
that each fetch ``--stream-megabytes``; and the CPU time the forwarding process (ssh, or this one, where
the forward's threads run) spends per 100 MB of the large response. The paths take turns within each
repeat, so drift hits all alike. Needs the local test cluster (tests/cluster/testcluster.sh up).
Prints a Markdown table of medians and the ratios forward / `ssh -L`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HPCLLM_CONFIG", "/tmp/hpcllm-testcluster/config.toml")


# --- the server (its own process) -------------------------------------------------------------------

TOKEN = b'data: {"choices": [{"delta": {"content": " token"}}]}\n\n'
TOKEN_GAP = 0.005  # seconds between the chunks of a streamed answer (an engine at 200 tokens/s)


def serve(max_megabytes: int) -> int:
    """Serve until stdin closes; print the port first."""
    body = memoryview(b"0123456789abcdef" * 65536 * (max_megabytes + 1))  # ≥ max_megabytes × 10^6 bytes
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/bytes/"):
                    size = int(path.rsplit("/", 1)[1])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % size)
                    conn.sendall(body[:size])
                elif path.startswith("/stream/"):  # a streamed answer: the head, then a chunk every 5 ms
                    count = int(path.rsplit("/", 1)[1])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (count * len(TOKEN)))
                    for _ in range(count):
                        time.sleep(TOKEN_GAP)
                        conn.sendall(TOKEN)
                else:  # /ping: the whole response in one write, as a keep-alive health check
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()  # the benchmark closes our stdin when it is done
    return 0


# --- the load (its own process) ----------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection that reads bodies into a reused buffer (no parsing cost)."""

    def __init__(self, port: int, buffer_size: int = 1 << 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)

    def get(self, path: str) -> int:
        """Send GET path, read the whole response; returns the body's size."""
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
        got = 0
        while True:  # the head (a small response arrives whole, with its body)
            n = self.sock.recv_into(self.view[got:])
            if not n:
                raise ConnectionError("the server closed the connection")
            got += n
            end = self.buffer.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                break
        head = bytes(self.buffer[:end]).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        remaining = length - (got - end - 4)
        while remaining > 0:
            n = self.sock.recv_into(self.view, min(remaining, len(self.buffer)))
            if not n:
                raise ConnectionError("the server closed the connection mid-body")
            remaining -= n
        return length

    def close(self) -> None:
        self.sock.close()


def first_chunk(port: int, answers: int = 8) -> float:
    """Milliseconds from sending a request to the first chunk of its streamed answer (median)."""
    client = Client(port, 65536)
    client.get("/ping")
    times = []
    for _ in range(answers):
        started = time.perf_counter()
        client.sock.sendall(b"GET /stream/4 HTTP/1.1\r\nHost: bench\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or got.endswith(b"\r\n\r\n"):  # the head, then a body byte
            data = client.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            got += data
        times.append(time.perf_counter() - started)
        remaining = 4 * len(TOKEN) - len(got.partition(b"\r\n\r\n")[2])
        while remaining > 0:
            remaining -= len(client.sock.recv(65536))
    client.close()
    return statistics.median(times) * 1e3


def bulk(port: int, megabytes: int) -> float:
    client = Client(port)
    client.get("/ping")  # the connection (and a forward's channel) is open before the clock starts
    started = time.perf_counter()
    size = client.get(f"/bytes/{megabytes * 1_000_000}")
    elapsed = time.perf_counter() - started
    client.close()
    return size / elapsed / 1e6


def round_trip(port: int, pings: int) -> float:
    client = Client(port, 4096)
    for _ in range(20):
        client.get("/ping")
    times = []
    for _ in range(pings):
        started = time.perf_counter()
        client.get("/ping")
        times.append(time.perf_counter() - started)
    client.close()
    return statistics.median(times) * 1e3


def concurrent(port: int, streams: int, megabytes: float) -> float:
    size = int(megabytes * 1_000_000)
    clients = [Client(port, 256 << 10) for _ in range(streams)]
    for client in clients:
        client.get("/ping")
    start = threading.Barrier(streams + 1)
    total = [0] * streams

    def one(i: int) -> None:
        start.wait()
        total[i] = clients[i].get(f"/bytes/{size}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return sum(total) / elapsed / 1e6


def client_main(args: argparse.Namespace) -> int:
    port = args.client
    if args.what == "bulk":
        print(json.dumps({"bulk": bulk(port, args.megabytes)}))
    elif args.what == "rtt":
        print(json.dumps({"rtt": round_trip(port, args.pings)}))
    elif args.what == "first":
        print(json.dumps({"first": first_chunk(port)}))
    else:
        print(json.dumps({"streams": concurrent(port, args.streams, args.stream_megabytes)}))
    return 0


# --- the paths and the table ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_ssh_l(profile: Any, target_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """OpenSSH's own forward with its defaults (cipher and all), ignoring any ~/.ssh/config."""
    port = free_port()
    process = subprocess.Popen(
        ["ssh", "-F", "none", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
         "-o", f"UserKnownHostsFile={profile.known_hosts}", "-i", profile.identity_file, "-p", str(profile.port),
         "-L", f"127.0.0.1:{port}:127.0.0.1:{target_port}", f"{profile.user}@{profile.host}"],
        stdin=subprocess.DEVNULL,
    )
    wait_port(port)
    return process, port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, forwarder: int | None, args: argparse.Namespace) -> dict[str, float]:
    """One round of the load, each part from a separate process (it must not share the GIL or the CPU
    time of the forward under test). ``forwarder``: the process that relays (its CPU time per 100 MB
    of the bulk response is recorded)."""
    result: dict[str, float] = {}
    for what in ("bulk", "rtt", "first", "streams"):
        command = [sys.executable, __file__, "--client", str(port), "--what", what, "--megabytes", str(args.megabytes),
                   "--pings", str(args.pings), "--streams", str(args.streams),
                   "--stream-megabytes", str(args.stream_megabytes)]
        client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        before = cpu_seconds(forwarder) if forwarder else None
        out, _ = client.communicate()
        after = cpu_seconds(forwarder) if forwarder else None
        if client.returncode:
            raise RuntimeError(f"the load for {what} failed (exit code {client.returncode})")
        result.update(json.loads(out))
        if what == "bulk" and before is not None and after is not None:
            result["cpu"] = (after - before) * 100 / args.megabytes
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=100, help="size of the one large response")
    parser.add_argument("--pings", type=int, default=400, help="round trips per repeat for the small request")
    parser.add_argument("--streams", type=int, default=32, help="concurrent connections")
    parser.add_argument("--stream-megabytes", type=float, default=4.0, help="each concurrent connection's response")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.client:
        return client_main(args)

    from jupyter_hpcllm.config.profiles import load_profile
    from jupyter_hpcllm.edge.ssh import SSHTransport

    profile = load_profile("testcluster")
    largest = max(args.megabytes, int(args.stream_megabytes) + 1)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(largest)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())
    ssh_l, ssh_port = start_ssh_l(profile, port)
    transport = SSHTransport(profile)
    forward = transport.forward("127.0.0.1", port)
    forward_port = int(forward.address.rsplit(":", 1)[1])
    session = transport.session()
    paths: dict[str, tuple[int, int | None]] = {
        "direct": (port, None),
        "`ssh -N -L` (OpenSSH)": (ssh_port, ssh_l.pid),
        "jupyter-hpcllm forward": (forward_port, os.getpid()),  # the forward's threads run in this process
    }
    results: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    try:
        for repeat in range(args.repeats):
            for name, (target, forwarder) in paths.items():
                for key, value in measure(target, forwarder, args).items():
                    results[name].setdefault(key, []).append(value)
            print(f"repeat {repeat + 1}/{args.repeats}: " + "; ".join(
                f"{name} {row['bulk'][-1]:,.0f} MB/s {row['rtt'][-1]:.3f} ms {row['first'][-1]:.1f} ms "
                f"{row['streams'][-1]:,.0f} MB/s" for name, row in results.items()), file=sys.stderr)
        forward.raise_if_failed()
    finally:
        forward.close()
        transport.close()
        ssh_l.terminate()
        server.stdin.close()
        server.wait()
        ssh_l.wait()
    median = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in results.items()}
    direct, ssh, ours = median["direct"], median["`ssh -N -L` (OpenSSH)"], median["jupyter-hpcllm forward"]

    def cpu(row: dict[str, float]) -> str:
        return f"{row['cpu']:.2f}" if "cpu" in row else "—"

    import paramiko

    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0]
    print(f"{os.cpu_count()} cores; {openssh} (`ssh -L` with its default cipher); paramiko {paramiko.__version__}, "
          f"the forward's cipher {session.remote_cipher}, {type(session.packetizer).__name__}\n")
    print(f"| path ({args.repeats} repeats, medians) | MB/s, one {args.megabytes} MB response | "
          f"round trip of a small keep-alive request, ms (added vs direct) | "
          f"first chunk of a streamed answer, ms (added vs direct) | "
          f"MB/s, {args.streams} concurrent streams × {args.stream_megabytes:g} MB | "
          "CPU s per 100 MB in the forwarding process |")
    print("|---|---|---|---|---|---|")
    for name, row in median.items():
        print(f"| {name} | {row['bulk']:,.0f} | {row['rtt']:.3f} ({row['rtt'] - direct['rtt']:+.3f}) | "
              f"{row['first']:.1f} ({row['first'] - direct['first']:+.1f}) | {row['streams']:,.0f} | {cpu(row)} |")
    print(f"| **forward / `ssh -L`** | **{ours['bulk'] / ssh['bulk']:.2f}×** | "
          f"**{(ours['rtt'] - ssh['rtt']) * 1e3:+.0f} µs** vs `ssh -L` | "
          f"**{ours['first'] - ssh['first']:+.1f} ms** vs `ssh -L` | "
          f"**{ours['streams'] / ssh['streams']:.2f}×** | |")
    print(f"\nTargets: ≥ 0.8× `ssh -L` throughput; round trip within 1 ms of `ssh -L`'s. The server must outrun "
          f"both forwards (≥ 1 GB/s direct): {direct['bulk']:,.0f} MB/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
