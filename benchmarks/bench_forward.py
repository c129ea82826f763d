"""The port forward against OpenSSH's `ssh -L` and a direct connection, in the same run.

    python benchmarks/bench_forward.py [--repeats 5] [--tokens 4000] [--megabytes 50]

The engine double serves on 127.0.0.1 (no Slurm job: this measures the forward alone). Three paths
reach it: a direct TCP connection; `ssh -N -L` through the test cluster's sshd; and jupyter-hpcllm's
PortForward (paramiko direct-tcpip through the same sshd). For each: streamed chunks per second for a
`--tokens` answer at 1 and 32 concurrent streams, the time per chunk at 1 stream (the difference to
direct is the latency the forward adds per chunk), and MB/s on one large non-streamed response. The
load comes from a separate client process, the same for every path.
Needs the local test cluster (tests/cluster/testcluster.sh up). Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HPCLLM_CONFIG", "/tmp/hpcllm-testcluster/config.toml")
KEY = "bench-key"
MODEL = "bench-model"


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


def start_double(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    model = workdir / MODEL
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 36, "hidden_size": 4096, "max_position_embeddings": 40960,
    }))
    image = workdir / "vllm.sif"
    image.write_text("engine=vllm\ndelay=0\n")
    port = free_port()
    env = {**os.environ, "HPCLLM_FAKE_IMAGE": str(image), "CUDA_VISIBLE_DEVICES": "0", "VLLM_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/engine_double/vllm-bin/vllm"), "serve", str(model), "--served-model-name",
         MODEL, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return process, port


def request(port: int, words: int, stream: bool) -> tuple[int, int, float, float]:
    """One chat completion; returns (chunks, bytes, seconds to first byte, total seconds)."""
    body = json.dumps({"model": MODEL, "stream": stream,
                       "messages": [{"role": "user", "content": f"/bench {words}"}]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    first = None
    chunks = size = 0
    if stream:
        for line in response:
            if first is None:
                first = time.perf_counter() - started
            size += len(line)
            if line.startswith(b"data: "):
                chunks += 1
    else:
        while data := response.read(1 << 20):
            if first is None:
                first = time.perf_counter() - started
            size += len(data)
    total = time.perf_counter() - started
    connection.close()
    return chunks, size, first or total, total


def streams(port: int, words: int, concurrency: int) -> tuple[float, float]:
    """(chunks per second over all streams, seconds per chunk within one stream)."""
    results: list[tuple[int, int, float, float]] = []
    lock = threading.Lock()

    def one() -> None:
        outcome = request(port, words, stream=True)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    chunks = sum(r[0] for r in results)
    per_chunk = statistics.median((r[3] - r[2]) / max(r[0] - 1, 1) for r in results)
    return chunks / wall, per_chunk


def throughput(port: int, megabytes: int) -> float:
    words = megabytes * 1_000_000 // 6  # the double's words are ~6 bytes each
    _, size, _, total = request(port, words, stream=False)
    return size / total / 1e6


def measure(port: int, what: str, tokens: int, megabytes: int) -> dict[str, float]:
    """Run one measurement in a separate process, so the load generator does not share the GIL (or
    the CPU time) of the forward under test: each path gets the same outside client."""
    done = subprocess.run([sys.executable, __file__, "--client", str(port), "--what", what, "--tokens", str(tokens),
                           "--megabytes", str(megabytes)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def client_main(port: int, what: str, tokens: int, megabytes: int) -> int:
    if what == "stream1":
        rate, per_chunk = streams(port, tokens, 1)
        print(json.dumps({"rate1": rate, "per_chunk": per_chunk}))
    elif what == "stream32":
        rate, _ = streams(port, tokens, 32)
        print(json.dumps({"rate32": rate}))
    else:
        print(json.dumps({"mbps": throughput(port, megabytes)}))
    return 0


def start_ssh_l(profile, target_port: int) -> tuple[subprocess.Popen[bytes], int]:  # type: ignore[no-untyped-def]
    port = free_port()
    process = subprocess.Popen(
        ["ssh", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
         "-o", f"UserKnownHostsFile={profile.known_hosts}", "-i", profile.identity_file, "-p", str(profile.port),
         "-L", f"127.0.0.1:{port}:127.0.0.1:{target_port}", f"{profile.user}@{profile.host}"],
        stdin=subprocess.DEVNULL,
    )
    wait_port(port)
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args.client, args.what, args.tokens, args.megabytes)

    from jupyter_hpcllm.config.profiles import load_profile
    from jupyter_hpcllm.edge.forward import PortForward
    from jupyter_hpcllm.edge.transport import connect

    profile = load_profile("testcluster")
    transport = connect(profile)
    with tempfile.TemporaryDirectory() as workdir:
        double, port = start_double(Path(workdir))
        ssh_l, ssh_port = start_ssh_l(profile, port)
        forward = PortForward(lambda: transport.open_channel("127.0.0.1", port), f"127.0.0.1:{port}")
        paths = {"direct": port, "ssh -L (OpenSSH)": ssh_port, "jupyter-hpcllm forward": forward.local_port}
        results: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
        try:
            for _ in range(args.repeats):
                for name, target in paths.items():
                    for what in ("stream1", "stream32", "mbps"):
                        for key, value in measure(target, what, args.tokens, args.megabytes).items():
                            results[name].setdefault(key, []).append(value)
        finally:
            forward.close()
            ssh_l.terminate()
            double.terminate()
    median = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in results.items()}
    direct = median["direct"]
    ssh = median["ssh -L (OpenSSH)"]
    print(f"| path ({args.repeats} repeats, medians) | chunks/s, 1 stream | chunks/s, 32 streams | "
          f"µs per chunk (added vs direct) | MB/s, {args.megabytes} MB response |")
    print("|---|---|---|---|---|")
    for name, row in median.items():
        added = (row["per_chunk"] - direct["per_chunk"]) * 1e6
        print(f"| {name} | {row['rate1']:,.0f} | {row['rate32']:,.0f} | {row['per_chunk'] * 1e6:.0f} "
              f"({added:+.0f}) | {row['mbps']:,.0f} |")
    ours = median["jupyter-hpcllm forward"]
    print(f"\nforward / ssh -L: {ours['rate1'] / ssh['rate1']:.2f}× chunks/s at 1 stream, "
          f"{ours['rate32'] / ssh['rate32']:.2f}× at 32 streams, {ours['mbps'] / ssh['mbps']:.2f}× MB/s "
          "(target ≥ 0.8×); added per chunk vs direct: "
          f"{(ours['per_chunk'] - direct['per_chunk']) * 1e3:.3f} ms (target ≤ 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
