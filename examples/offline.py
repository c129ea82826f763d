"""The whole lifecycle with no cluster: an in-memory Slurm (FakeTransport) whose jobs answer the OpenAI API.

    python examples/offline.py

Useful to try the API, to write your own tools on top of it, or to test them: swap in a real
`Cluster("ebi")` when you are done.
"""

from __future__ import annotations

import sys

import jupyter_hpcllm as hpc


def main() -> int:
    try:
        return run()
    except hpc.errors.HpcllmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run() -> int:
    # The "ebi" preset describes a real cluster; the fake transport stands in for SSH and Slurm.
    with hpc.Cluster(hpc.load_profile("ebi"), transport=hpc.FakeTransport()) as cluster:
        print(cluster.job_script("Qwen3-8B").splitlines()[1])  # #SBATCH --job-name=...: what would run
        # What `up` would choose, each choice with its source: two copies of the model, one GPU each.
        plan = cluster.plan("Qwen3-8B", gpus=2, replicas=2)
        print(f"engine: {plan.engine} ({plan.engine_reason})")
        print(f"{plan.parsers.tool.describe()}; {plan.parsers.reasoning.describe()}")
        print(f"{plan.replicas} replicas × tensor-parallel {plan.tensor_parallel}: {plan.spec.gres}")
        handle = cluster.launch("Qwen3-8B", on_progress=lambda p: print(f"[{p.stage.value:9}] {p.message}"))
        server = handle.result(timeout=60)
        reply = server.client().chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "Hello from a notebook"}])
        print("answer:", reply.choices[0].message.content)
        print("servers:", [(s.job_id, s.state.value, s.model) for s in cluster.list()])
        print("after down:", server.down().value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
