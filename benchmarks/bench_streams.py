"""Many streamed requests at once through one forward and the job's relay, on the local test cluster.

    python benchmarks/bench_streams.py [--streams 64] [--seconds 60] [--token-delay 0.002]

One server (the vLLM double), one `Server` (one local forward, through the SSH connection and the job's
key-checking relay), `--streams` threads each streaming requests back to back for `--seconds`, each with a
prompt of its own: every answer must be exactly that prompt's ("Echo: <prompt>"), so a stream mixed up
with another's is counted. Prints a Markdown table: requests, errors, mixed-up streams, chunks per
second, and the median and 99th percentile time of a whole request. (The tests run the same for 10 s:
tests/test_cluster_safety.py.) Needs the local test cluster (tests/cluster/testcluster.sh up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HPCLLM_CONFIG", "/tmp/hpcllm-testcluster/config.toml")

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.lifecycle import Cluster


def image(token_delay: float) -> str:
    directory = Path("/tmp/hpcllm-test-images")
    directory.mkdir(mode=0o755, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="bench-streams-", suffix=".sif", dir=directory)
    os.write(handle, f"engine=vllm\ndelay=0.5\ntoken_delay={token_delay}\n".encode())
    os.close(handle)
    os.chmod(path, 0o644)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--token-delay", type=float, default=0.002, help="the double's delay between tokens (s)")
    args = parser.parse_args()
    profile = replace(load_profile("testcluster"), images={"vllm": image(args.token_delay)})
    with Cluster(profile) as cluster:
        server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120)
        try:
            errors: list[str] = []
            mixed: list[str] = []
            durations: list[float] = []
            chunks = [0]
            lock = threading.Lock()
            deadline = time.monotonic() + args.seconds

            def stream(index: int) -> None:
                client = server.client(max_retries=0, timeout=120)
                while time.monotonic() < deadline:
                    prompt = f"stream {index} {uuid.uuid4().hex} " + " ".join(["word"] * 20)
                    started = time.monotonic()
                    try:
                        received = 0
                        parts = []
                        for chunk in client.chat.completions.create(
                                model=server.model, stream=True, messages=[{"role": "user", "content": prompt}]):
                            received += 1
                            if chunk.choices:
                                parts.append(chunk.choices[0].delta.content or "")
                    except Exception as error:  # counted and shown
                        with lock:
                            errors.append(f"{index}: {error!r}")
                        continue
                    with lock:
                        durations.append(time.monotonic() - started)
                        chunks[0] += received
                        if "".join(parts) != f"Echo: {prompt}":
                            mixed.append(f"{index}: {''.join(parts)[:60]!r}")

            began = time.monotonic()
            threads = [threading.Thread(target=stream, args=(i,)) for i in range(args.streams)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.monotonic() - began
        finally:
            server.down()
    durations.sort()
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] if durations else float("nan")
    print(f"\n`{' '.join(['python', *sys.argv])}`\n")
    print(f"| {args.streams} streams × {args.seconds:g} s, one forward | value |")
    print("|---|---|")
    print(f"| requests completed | {len(durations):,} |")
    print(f"| errors | {len(errors)} |")
    print(f"| mixed-up streams | {len(mixed)} |")
    print(f"| chunks per second | {chunks[0] / took:,.0f} |")
    print(f"| request time, median / p99 | {statistics.median(durations) * 1000:.0f} ms / {p99 * 1000:.0f} ms |")
    for line in (errors + mixed)[:5]:
        print("  ", line)
    return 1 if errors or mixed else 0


if __name__ == "__main__":
    sys.exit(main())
