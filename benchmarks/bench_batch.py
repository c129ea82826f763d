"""A map over prompts (`jupyter_hpcllm.map`) against the engine double with a concurrency limit, versus a
sequential loop and an unbounded `asyncio.gather`; and the client's peak memory over many items.

    python benchmarks/bench_batch.py [--prompts 2000] [--limit 64] [--tokens 20] [--token-delay 0.02]
                                     [--sequential 50] [--memory-items 100000]

The engine double (tests/engine_double/fake_engine.py, as vLLM) runs locally with `--max-num-seqs LIMIT`:
at most LIMIT requests run, each taking TOKENS × TOKEN_DELAY seconds, first come first served, the rest
wait; so its maximum throughput is LIMIT / (TOKENS × TOKEN_DELAY) requests per second, reached only with
LIMIT requests in flight. Every prompt is distinct (no cache: `cache=False`) and answered with TOKENS
tokens. Each client runs in a process of its own (the engine too), so each measures its own peak
memory (ru_maxrss after the run, less the same process's before it, after imports and a warm-up):

- map: `hpc.map(prompts, client, model=...)` with its default pacing (from the engine's /metrics);
- sequential: `client.chat.completions.create` in a for loop (on the first SEQUENTIAL prompts: it is slow);
- gather: `asyncio.gather` of one AsyncOpenAI request per prompt, all at once;
- memory: `hpc.imap` over a generator of MEMORY_ITEMS prompts (and of a tenth as many), consumed as
  the answers come, with a fast engine (no token delay, limit 256): the peak must not grow with the items.

Target: map ≥ 0.9 × the engine's maximum throughput. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "tests" / "engine_double" / "fake_engine.py"
MODEL = "bench-model"
KEY = "bench-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prompts(count: int, words: int, start: int = 0):
    """Distinct prompts whose echo ("Echo: " + the prompt) is `words` + 1 tokens."""
    filler = " ".join(["w"] * max(0, words - 2))
    for i in range(start, start + count):
        yield f"item{i:08d} {filler}"


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- the clients (each in its own process) ---------------------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    import openai

    import jupyter_hpcllm as hpc

    base = f"http://127.0.0.1:{args.port}/v1"
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "warm up"}])
    words = args.tokens - 1
    before = peak_kib()
    started = time.perf_counter()
    count = args.count
    if args.client == "map":
        answers = hpc.map(list(prompts(count, words)), client, model=MODEL, cache=False, progress=False)
        assert len(answers) == count and not answers.failures, answers.failures[:3]
    elif args.client == "sequential":
        for prompt in prompts(count, words):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
    elif args.client == "gather":
        async def everything() -> None:
            aclient = openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=3600)
            await asyncio.gather(*(aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": p}]) for p in prompts(count, words)))
            await aclient.close()

        asyncio.run(everything())
    elif args.client == "imap":
        seen = 0
        for result in hpc.imap(prompts(count, words), client, model=MODEL, cache=False):
            assert result.error is None, result.error
            seen += 1
        assert seen == count
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "rate": count / elapsed, "peak_mib": (peak_kib() - before) / 1024}))
    return 0


def run_client(kind: str, port: int, count: int, tokens: int) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--client", kind, "--port", str(port), "--count", str(count),
                             "--tokens", str(tokens)], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the engine ---------------------------------------------------------------------------------------


class Engine:
    def __init__(self, work: Path, limit: int, token_delay: float) -> None:
        model = work / MODEL
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps({
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
            "max_position_embeddings": 32768}))
        (model / "model.safetensors").write_bytes(b"")
        image = work / f"image-{limit}-{token_delay}"
        image.write_text(f"engine=vllm\ndelay=0.1\ntoken_delay={token_delay}\n")
        self.port = free_port()
        environment = {**os.environ, "HPCLLM_FAKE_IMAGE": str(image), "VLLM_API_KEY": KEY, "CUDA_VISIBLE_DEVICES": "0"}
        self.process = subprocess.Popen(
            [sys.executable, str(ENGINE), "vllm", "serve", str(model), "--served-model-name", MODEL, "--host",
             "127.0.0.1", "--port", str(self.port), "--max-num-seqs", str(limit)],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the engine double did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--memory-items", type=int, default=100_000)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    maximum = args.limit / (args.tokens * args.token_delay)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        engine = Engine(work, args.limit, args.token_delay)
        try:
            for kind, count in (("map", args.prompts), ("sequential", args.sequential), ("gather", args.prompts)):
                result = run_client(kind, engine.port, count, args.tokens)
                rows.append((f"{kind} ({count:,} prompts)", result["rate"], result["rate"] / maximum,
                             result["peak_mib"], result["seconds"]))
        finally:
            engine.close()
        fast = Engine(work, 256, 0.0)
        try:
            memory = []
            for count in (args.memory_items // 10, args.memory_items):
                result = run_client("imap", fast.port, count, 4)
                memory.append((count, result["peak_mib"], result["rate"]))
        finally:
            fast.close()
    print(f"Engine double: --max-num-seqs {args.limit}, {args.tokens} tokens × {args.token_delay * 1000:.0f} ms per "
          f"request; its maximum: {maximum:,.1f} requests/s.\n")
    print("| client | requests/s | × the engine's maximum | peak memory added, MiB | wall time, s |")
    print("|---|---|---|---|---|")
    for name, rate, ratio, peak, seconds in rows:
        print(f"| {name} | {rate:,.1f} | {ratio:.2f} | {peak:,.1f} | {seconds:,.1f} |")
    print("\n| imap over a generator (fast engine, limit 256) | items | peak memory added, MiB | items/s |")
    print("|---|---|---|---|")
    for count, peak, rate in memory:
        print(f"| | {count:,} | {peak:,.1f} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
