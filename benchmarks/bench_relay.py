"""The job's relay (jupyter_hpcllm/node/relay.py) against a direct connection to the engine, in the same run.

    python benchmarks/bench_relay.py [--repeats 5] [--requests 300] [--words 20000]

The engine double (tests/engine_double/fake_engine.py, as vLLM, with an API key) listens on 127.0.0.1;
the relay runs in front of it exactly as a job runs it (`python3 -c SOURCE --job-dir ... --engine-port
...`). No cluster is needed. Two paths reach the engine: directly, and through the relay. For each path
and repeat, from a separate client process (it must not share the GIL with the relay or the engine):

- the median round trip of a small non-streamed `/v1/chat/completions` on one keep-alive connection
  (``--requests`` of them, after a warm-up); the relay's cost is the difference to the direct median;
- the streamed chunks per second of one long answer (`/bench N` answers N words, one SSE `data:` event
  each): events counted at the client, from sending the request to the last byte; the ratio relay/direct.

The paths take turns within each repeat (and at going first), so drift hits both alike; the added time
and the ratio are the medians of the per-repeat differences and ratios. On a loaded machine the rates swing
widely (the relay path has one process more to schedule); the CPU time per request and per chunk, also
printed, is the steadier measure of the relay's cost. Targets: ≤ 1 ms added per request,
≥ 0.95 × the direct chunk rate. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "tests" / "engine_double" / "fake_engine.py"
RELAY = ROOT / "jupyter_hpcllm" / "node" / "relay.py"
MODEL = "bench-model"
KEY = "bench-key-0123456789abcdef"


# --- the client (its own process) -------------------------------------------------------------------


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def chat(text: str, stream: bool = False) -> bytes:
    return post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": text}],
                                         "stream": stream})


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(1 << 20)
        self.view = memoryview(self.buffer)

    def complete(self, request: bytes) -> bytes:
        """Send a non-streamed request, read its answer (Content-Length) whole."""
        self.sock.sendall(request)
        got = 0
        while True:
            n = self.sock.recv_into(self.view[got:])
            if not n:
                raise ConnectionError("the server closed the connection")
            got += n
            end = self.buffer.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                head = bytes(self.buffer[:end]).lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if got >= end + 4 + length:
                    if not head.startswith(b"http/1.1 200"):
                        raise RuntimeError(f"the server answered {head[:40]!r}")
                    return bytes(self.buffer[end + 4:end + 4 + length])

    def stream(self, request: bytes) -> tuple[int, float]:
        """Send a streamed request; read until the chunked body's end. Returns (data: events, seconds)."""
        started = time.perf_counter()
        self.sock.sendall(request)
        got = 0
        while True:
            if got == len(self.buffer):
                self.view.release()
                self.buffer.extend(bytes(len(self.buffer)))
                self.view = memoryview(self.buffer)
            n = self.sock.recv_into(self.view[got:])
            if not n:
                raise ConnectionError("the server closed the connection mid-stream")
            got += n
            if self.buffer.endswith(b"\r\n0\r\n\r\n", 0, got):
                elapsed = time.perf_counter() - started
                return self.buffer.count(b"data: ", 0, got), elapsed


def client_main(args: argparse.Namespace) -> int:
    client = Client(args.client)
    if args.what == "latency":
        for i in range(20):
            client.complete(chat(f"warm up {i}"))
        times = []
        for i in range(args.requests):
            started = time.perf_counter()
            answer = client.complete(chat(f"hello {i}"))
            times.append(time.perf_counter() - started)
            if f"Echo: hello {i}".encode() not in answer:
                raise RuntimeError(f"a wrong answer: {answer[:200]!r}")
        print(json.dumps({"latency": statistics.median(times) * 1e3}))
    else:
        client.complete(chat("warm up"))
        events, seconds = client.stream(chat(f"/bench {args.words}", stream=True))
        expected = args.words + 3  # the role, the words, the finish, [DONE]
        if events != expected:
            raise RuntimeError(f"{events} events, expected {expected}")
        print(json.dumps({"chunks": events / seconds}))
    return 0


# --- the engine, the relay and the table ------------------------------------------------------------


def wait_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} ended with {process.returncode}")
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


def wait_health(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the engine on {port} did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, what: str, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--client", str(port), "--what", what, "--requests", str(args.requests),
               "--words", str(args.words)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {what} client failed: {done.stderr.strip()}")
    return float(next(iter(json.loads(done.stdout).values())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="small requests per repeat (latency)")
    parser.add_argument("--words", type=int, default=20000, help="words of the streamed answer per repeat")
    parser.add_argument("--python", default="python3", help="the interpreter that runs the relay (as the job's)")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        work = Path(tmp)
        model, job = work / MODEL, work / "job"
        model.mkdir()
        job.mkdir(mode=0o700)
        (model / "config.json").write_text(json.dumps({
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
            "max_position_embeddings": 32768}))
        (model / "model.safetensors").write_bytes(b"")
        (work / "image").write_text("engine=vllm\ndelay=0.1\n")
        (job / "key").write_text(KEY + "\n")
        (job / "key").chmod(0o600)
        engine_port = free_port()
        environment = {**os.environ, "HPCLLM_FAKE_IMAGE": str(work / "image"), "VLLM_API_KEY": KEY,
                       "CUDA_VISIBLE_DEVICES": "0"}
        engine = subprocess.Popen([sys.executable, str(ENGINE), "vllm", "serve", str(model), "--served-model-name",
                                   MODEL, "--host", "127.0.0.1", "--port", str(engine_port)],
                                  env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        relay = subprocess.Popen([args.python, "-c", RELAY.read_text(), "--job-dir", str(job), "--engine-port",
                                  str(engine_port), "--engine-pid", str(engine.pid), "--idle-timeout", "0",
                                  "--listen", "127.0.0.1"])
        try:
            wait_health(engine_port)
            relay_port = int(wait_file(job / "relay.port", relay))
            paths = {"direct": engine_port, "relay": relay_port}
            results: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
            for repeat in range(args.repeats):
                for name, port in sorted(paths.items(), reverse=repeat % 2 == 1):  # take turns going first
                    for what in ("latency", "chunks"):
                        before = cpu_seconds(relay.pid), cpu_seconds(engine.pid)
                        value = measure(port, what, args)
                        after = cpu_seconds(relay.pid), cpu_seconds(engine.pid)
                        row = results[name]
                        row.setdefault(what, []).append(value)
                        row.setdefault(f"{what} relay cpu", []).append(after[0] - before[0])
                        row.setdefault(f"{what} engine cpu", []).append(after[1] - before[1])
                direct, relayed = results["direct"], results["relay"]
                print(f"repeat {repeat + 1}/{args.repeats}: " + "; ".join(
                    f"{name} {row['latency'][-1]:.3f} ms, {row['chunks'][-1]:,.0f} chunks/s"
                    for name, row in results.items())
                    + f"; relay/direct {relayed['chunks'][-1] / direct['chunks'][-1]:.2f}×", file=sys.stderr)
        finally:
            relay.terminate()
            engine.terminate()
            relay.wait(10)
            engine.wait(10)
        if relay.returncode != 0:
            raise RuntimeError(f"the relay exited with {relay.returncode} on SIGTERM")
        if (job / "idle_exit").exists():
            raise RuntimeError("the relay wrote idle_exit though it was stopped")

    median = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in results.items()}
    direct, relayed = median["direct"], median["relay"]
    # Paired within each repeat (the machine's load drifts between repeats), then the median.
    pairs = {what: list(zip(results["relay"][what], results["direct"][what], strict=True)) for what in results["relay"]}
    added = statistics.median(r - d for r, d in pairs["latency"])
    ratio = statistics.median(r / d for r, d in pairs["chunks"])
    version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\n`{shlex.join(['python3', 'benchmarks/bench_relay.py', *sys.argv[1:]])}` — {os.cpu_count()} cores; "
          f"relay under {version}; engine double and clients under Python {sys.version.split()[0]}\n")
    print(f"| path ({args.repeats} repeats, medians) | small `/v1/chat/completions`, keep-alive, ms "
          f"(added vs direct, paired) | streamed chunks/s, one {args.words:,}-word answer (relay / direct, paired) |")
    print("|---|---|---|")
    print(f"| direct to the engine | {direct['latency']:.3f} | {direct['chunks']:,.0f} |")
    print(f"| through the relay | {relayed['latency']:.3f} (**{added:+.3f}**) | {relayed['chunks']:,.0f} "
          f"(**{ratio:.3f}×**) |")
    # Summed over the repeats: /proc counts CPU time in 10 ms ticks.
    requests, chunks = args.repeats * (args.requests + 21), args.repeats * (args.words + 3)
    relay_request = sum(results["relay"]["latency relay cpu"]) / requests * 1e6
    relay_chunk = sum(results["relay"]["chunks relay cpu"]) / chunks * 1e6
    engine_chunk = sum(results["direct"]["chunks engine cpu"]) / chunks * 1e6
    print(f"\nCPU time (over all repeats; it moves less with the machine's load than the rates): the relay spends "
          f"{relay_request:.0f} µs per small request and {relay_chunk:.2f} µs per streamed chunk; the engine "
          f"double spends {engine_chunk:.2f} µs per chunk it makes (real engines spend more).")
    verdict = "met" if added <= 1.0 and ratio >= 0.95 else "NOT met"
    print(f"Targets (≤ 1 ms added per request, ≥ 0.95× the direct chunk rate): {verdict}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
