"""Orchestration overhead of `up` on the local test cluster.

    python benchmarks/bench_up.py [--runs 5] [--delay 2.0] [--engine vllm]

Overhead = time from calling `up` to a ready client, minus the engine double's own start delay: what
jupyter-hpcllm and Slurm add (submit, scheduling, job start, address file, forward, readiness checks).
Needs the local test cluster (tests/cluster/testcluster.sh up). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HPCLLM_CONFIG", "/tmp/hpcllm-testcluster/config.toml")

import jupyter_hpcllm as hpc


def image(engine: str, delay: float) -> str:
    directory = Path("/tmp/hpcllm-test-images")
    directory.mkdir(mode=0o755, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix=f"bench-{engine}-", suffix=".sif", dir=directory)
    os.write(handle, f"engine={engine}\ndelay={delay}\n".encode())
    os.close(handle)
    os.chmod(path, 0o644)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=2.0, help="the engine double's start-up delay (s)")
    parser.add_argument("--engine", default="vllm", choices=("vllm", "sglang"))
    args = parser.parse_args()
    profile = hpc.load_profile("testcluster")
    profile = replace(profile, images={args.engine: image(args.engine, args.delay)})
    rows = []
    for run in range(args.runs):
        marks: dict[str, float] = {}
        started = time.monotonic()

        def note(progress: hpc.Progress, marks: dict[str, float] = marks, started: float = started) -> None:
            marks.setdefault(progress.stage.value, time.monotonic() - started)

        server = hpc.up("gpt-oss-20b", profile=profile, engine=args.engine, on_progress=note,
                        engine_args=["--seed", str(run)], timeout=120)
        ready = time.monotonic() - started
        server.down()
        rows.append((ready, ready - args.delay, marks.get("submitted", 0), marks.get("running", 0),
                     marks.get("loading", 0)))
        print(f"run {run + 1}: ready after {ready:.2f} s, overhead {ready - args.delay:.2f} s", file=sys.stderr)
    median = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(f"| `up` ({args.engine}, double delay {args.delay:g} s, {args.runs} runs) | median |")
    print("|---|---|")
    for label, value in zip(("time to ready client", "**orchestration overhead** (target ≤ 1.5 s)",
                             "submitted (sbatch returned)", "running (job started, seen)",
                             "loading (address file seen, forward open)"), median, strict=True):
        print(f"| {label} | {value:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
