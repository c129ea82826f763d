"""Launch a model on the cluster, stream an answer from it, stop it.

    python examples/quickstart.py [MODEL] [--gpus N] [--engine vllm|sglang] [--profile P]

Uses the profile named by --profile, $HPCLLM_PROFILE or the config file's default_profile.
"""

from __future__ import annotations

import argparse
import sys

import jupyter_hpcllm as hpc
from jupyter_hpcllm.errors import HpcllmError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="gpt-oss-20b")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--engine", choices=("vllm", "sglang"))
    parser.add_argument("--profile")
    args = parser.parse_args()

    def show(progress: hpc.Progress) -> None:
        print(f"[{progress.elapsed:5.1f}s] {progress.message}", flush=True)

    try:
        server = hpc.up(args.model, gpus=args.gpus, engine=args.engine, profile=args.profile, on_progress=show)
    except HpcllmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with server:  # leaving the block cancels the job: no GPUs held after the demo
        client = server.client()
        print(f"\n{server}\n\n> Explain in one sentence what a Slurm job is.\n")
        stream = client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "Explain in one sentence what a Slurm job is."}],
            stream=True,
        )
        thinking = False
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            # Reasoning models stream their thinking first (vLLM: `reasoning`, SGLang: `reasoning_content`).
            reasoning = getattr(delta, "reasoning", None) or getattr(delta, "reasoning_content", None)
            if reasoning:
                print(("(thinking) " if not thinking else "") + reasoning, end="", flush=True)
                thinking = True
            if delta.content:
                print(("\n\n" if thinking else "") + delta.content, end="", flush=True)
                thinking = False
        print("\n")
    print(f"Job {server.job_id} cancelled; its GPUs are free.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
