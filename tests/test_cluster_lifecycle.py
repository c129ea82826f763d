"""End to end on the local cluster: up → stages → streamed chat through the forward → down."""

from __future__ import annotations

import _thread
import asyncio
import threading
import uuid
from dataclasses import replace

import pytest

import jupyter_hpcllm as hpc
from jupyter_hpcllm.edge.slurm import JobState, parse_probe, parse_queue, probe_command, queue_command
from jupyter_hpcllm.errors import ConfigError, JobFailed, ModelNotFound, SubmitError
from jupyter_hpcllm.lifecycle import Cluster, Stage

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]


@pytest.fixture(params=["paramiko", "openssh"])
def ssh_backend(request) -> str:
    """The whole suite runs over both ways in: paramiko, and the system ssh with a ControlMaster."""
    return str(request.param)


def _stages(progress_list):
    return [p.stage for p in progress_list]


def _secrets_check(transport, server):
    """The key is in the 0600 key file and nowhere a person or another user could read it."""
    job_dir = f".hpcllm/jobs/{server.job_id}"
    key = server.api_key
    assert len(key) >= 32  # 128 bits at least, hex
    modes = transport.run(f"stat -c '%a %n' .hpcllm {job_dir} {job_dir}/key {job_dir}/engine.log").stdout
    assert modes.split()[0::2] == ["700", "700", "600", "600"], modes
    exposed = transport.run(
        f"ps -eo args; scontrol show job {server.job_id}; scontrol write batch_script {server.job_id} -; "
        f"squeue -o '%all'; cat {job_dir}/engine.log .hpcllm/jobs/slurm-{server.job_id}.out", check=False
    )
    assert key not in exposed.stdout + exposed.stderr


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_up_chat_down(profile_with, transport, engine):
    profile = profile_with(delay=1.0)
    seen = []
    server = hpc.up("gpt-oss-20b", profile=profile, engine=engine, gpus=2, on_progress=seen.append, timeout=120)
    try:
        stages = _stages(seen)
        assert stages[0] is Stage.SUBMITTED and stages[-1] is Stage.READY
        assert Stage.RUNNING in stages and Stage.LOADING in stages
        shards = [p.shards for p in seen if p.shards]
        assert shards, "no weight-loading progress was reported"
        assert all(total == 3 for _, total in shards) and [done for done, _ in shards] == sorted(
            done for done, _ in shards), shards
        assert seen[-1].node in ("gpu01", "gpu02")
        assert server.base_url.startswith("http://127.0.0.1:")

        client = server.client()
        assert [m.id for m in client.models.list()] == ["gpt-oss-20b"]
        stream = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hello cluster"}], stream=True
        )
        text, reasoning = "", ""
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                text += delta.content or ""
                reasoning += getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None) or ""
        assert "hello cluster" in text
        assert "hello cluster" in reasoning  # gpt-oss has a reasoning parser on both engines

        # a wrong key is refused
        import openai

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.base_url, api_key="wrong").models.list()

        _secrets_check(transport, server)

        # idempotent: the same up reuses the running job
        again = hpc.up("gpt-oss-20b", profile=profile, engine=engine, gpus=2, on_progress=seen.append)
        assert again.job_id == server.job_id and Stage.REUSED in _stages(seen)
        again.close()

        listed = {s.job_id: s for s in hpc.list_servers(profile)}
        assert listed[server.job_id].model == "gpt-oss-20b" and listed[server.job_id].engine == engine
        assert server.status().state is JobState.RUNNING
        assert "gpt-oss-20b" in server.logs()
    finally:
        final = server.down()
    assert not final.is_active
    assert server.job_id not in [r.job_id for r in parse_queue(transport.run(queue_command()).stdout)]
    server.down()  # idempotent


def test_attach_after_restart(profile_with):
    profile = profile_with(delay=0.5)
    server = hpc.up("Qwen3-8B", profile=profile, timeout=120)
    try:
        server.close()  # as if the kernel restarted: the job keeps running
        attached = hpc.attach(server.job_id, profile=profile)
        reply = attached.client().chat.completions.create(
            model="Qwen3-8B", messages=[{"role": "user", "content": "again"}])
        assert "again" in reply.choices[0].message.content

        async def ask_async() -> str:
            async with attached.async_client() as client:
                answer = await client.chat.completions.create(
                    model="Qwen3-8B", messages=[{"role": "user", "content": "async hello"}])
                return answer.choices[0].message.content

        assert "async hello" in asyncio.run(ask_async())
        assert attached.api_key not in repr(attached)
        attached.close()
    finally:
        server.down()


def test_an_unknown_parser_is_refused_before_submitting(profile_with, transport):
    """The image's registry is asked first: a name it lacks never costs a job (the engine would stop with
    `invalid tool call parser`, which `planning.diagnose` explains for names a plugin was meant to add)."""
    with pytest.raises(ConfigError, match="does not register the tool-call parser 'no_such_parser'") as caught:
        hpc.up("Qwen3-8B", profile=profile_with(delay=0.3), timeout=120, tool_call_parser="no_such_parser")
    assert "Pass --tool-call-parser NAME with one of:" in str(caught.value)


def test_a_tp_that_does_not_divide_the_heads_is_refused_before_submitting(profile, transport):
    with pytest.raises(ConfigError, match=r"32 attention heads and 8 KV heads: 3 GPUs cannot split them"):
        hpc.up("Qwen3-8B", profile=profile, gpus=3)


def test_the_engines_own_tp_failure_is_explained(profile_with):
    """Past our check (a plan made without the model's facts, as `hpcllm script` makes), the engine fails
    with its own message, and the error says what it means."""
    with Cluster(profile_with(delay=0.3)) as cluster:
        job = cluster.submit(cluster.plan("Qwen3-8B", offline=True, gpus=3))
        with pytest.raises(JobFailed) as caught:
            cluster.attach(job, timeout=120)
    assert "must be divisible by tensor parallel size (3)" in caught.value.log_tail
    assert "the tensor-parallel size 3 does not divide the model's 32 attention heads" in str(caught.value)


def test_too_long_context_suggests_the_length_that_fits(profile_with):
    with pytest.raises(JobFailed) as caught:
        hpc.up("Qwen3-8B", profile=profile_with(delay=0.3, max_model_len_fits=16384), timeout=120)
    assert "Fix: retry with -- --max-model-len 16384" in str(caught.value)


def test_up_chooses_the_smallest_allocation_that_fits(profile_with, transport):
    server = hpc.up("gpt-oss-120b", profile=profile_with(delay=0.3), timeout=120)
    try:
        row = parse_probe(transport.run(probe_command(server.job_id, "0123456789abcdef", log_bytes=0)).stdout,
                          "0123456789abcdef").row
        assert row.gres.endswith("gpu:h200:1"), row.gres  # 82 GB: one H200, not 2 × A100
        log = server.logs(50)  # vLLM logs its non-default arguments: a tensor-parallel size of 1 is not one
        assert "non-default args" in log and "tensor_parallel_size" not in log, log
    finally:
        server.down()


def test_sglang_bad_parser_is_refused_before_submitting(profile_with, transport):
    """SGLang would stop with argparse's `invalid choice: 'nope'`: its registry, asked first, says so sooner."""
    with pytest.raises(ConfigError, match="SGLang 0.5.4.*does not register the reasoning parser 'nope'"):
        hpc.up("Qwen3-8B", profile=profile_with(delay=0.3), engine="sglang", reasoning_parser="nope", timeout=120)


def test_missing_image_is_refused_before_submitting(profile, transport):
    broken = replace(profile, images={"vllm": "/nowhere/vllm.sif"})
    with pytest.raises(ConfigError, match="The vllm image /nowhere/vllm.sif of profile 'testcluster' does not exist"):
        hpc.up("Qwen3-8B", profile=broken, timeout=120)
    # With another engine's image there, auto takes that one.
    other = replace(profile, images={"vllm": "/nowhere/vllm.sif", "sglang": profile.images["sglang"]})
    assert Cluster(other, transport=transport).plan("Qwen3-8B").engine == "sglang"


def test_engine_dies_after_loading(profile_with):
    with pytest.raises(JobFailed) as caught:
        hpc.up("Qwen3-8B", profile=profile_with(delay=0.3, crash_after_load=1), timeout=120)
    assert "CUDA out of memory" in caught.value.log_tail


def test_model_not_found_suggests_and_submits_nothing(profile, transport):
    with pytest.raises(ModelNotFound) as caught:
        hpc.up("gpt-oss-12b", profile=profile)
    assert "gpt-oss-120b" in caught.value.candidates
    assert "Closest names there" in str(caught.value)


def test_sbatch_rejection_shows_slurms_message(profile):
    with pytest.raises(SubmitError, match="invalid partition specified: nope"):
        hpc.up("Qwen3-8B", profile=profile, partition="nope")


def test_too_much_memory_is_rejected_by_slurm(profile):
    with pytest.raises(SubmitError, match="Requested node configuration is not available"):
        hpc.up("Qwen3-8B", profile=profile, mem="900G")


def test_shell_syntax_never_runs(profile_with, transport):
    marker = f"/tmp/hpcllm-pwned-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError):
        hpc.up(f"x; touch {marker}", profile=profile_with())
    with pytest.raises(JobFailed) as caught:
        hpc.up("Qwen3-8B", profile=profile_with(delay=0.2), engine_args=["--seed", f"1; touch {marker}",
               "--dtype", f"$(touch {marker})`touch {marker}`"], timeout=120)
    assert "exited with code" in str(caught.value)
    assert transport.run(f"test -e {marker}", check=False).exit_status == 1


def test_cancelled_from_outside(profile_with, transport):
    profile = profile_with(delay=30)
    errors = []

    def cancel_when_running(progress):
        if progress.stage is Stage.LOADING:
            transport.run(f"scancel {progress.job_id}")

    def run():
        try:
            hpc.up("Qwen3-8B", profile=profile, on_progress=cancel_when_running, timeout=120)
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(150)
    assert len(errors) == 1 and isinstance(errors[0], JobFailed), errors
    assert "was cancelled (CANCELLED" in str(errors[0]), str(errors[0])


def test_interrupt_cancels_the_job_it_submitted(profile_with, transport, sigint_raises):
    """Ctrl-C reaches the main thread, which waits in up(): the launch is cancelled, its job too."""
    profile = profile_with(delay=30)
    submitted = []

    def interrupt(progress):
        submitted.append(progress.job_id)
        if progress.stage in (Stage.RUNNING, Stage.PENDING) and len(submitted) < 10:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        hpc.up("Qwen3-8B", profile=profile, on_progress=interrupt)
    assert submitted
    rows = parse_queue(transport.run(queue_command()).stdout)
    assert submitted[0] not in [r.job_id for r in rows if r.state is not JobState.COMPLETING]


def test_pending_reports_the_reason(profile_with, transport):
    """Fill both nodes' a100s, then a third a100 job waits with Slurm's reason; cancel it while pending."""
    profile = profile_with(delay=60)
    cluster = Cluster(profile, transport=transport)
    blockers = [cluster.submit(cluster.plan("Qwen3-8B", offline=True, gpus=4, mem="1G",
                                            engine_args=["--seed", str(i)]))
                for i in range(2)]
    seen = []

    def stop_when_pending(progress):
        seen.append(progress)
        # Right after sbatch Slurm may not have looked at the job yet (reason "None"): wait for its verdict.
        if progress.stage is Stage.PENDING and progress.reason not in ("", "None"):
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            hpc.up("Qwen3-8B", profile=profile, gpus=4, gpu_type="a100", on_progress=stop_when_pending)
    finally:
        for job in blockers:
            transport.run(f"scancel {job}")
    pending = [p for p in seen if p.stage is Stage.PENDING]
    assert pending and pending[-1].reason in ("Resources", "Priority")


def test_time_limit_from_outside(profile_with):
    """A job that reaches its time limit while loading (Slurm kills a 1-minute job at about +72 s)."""
    with pytest.raises(JobFailed) as caught:
        hpc.up("Qwen3-8B", profile=profile_with(delay=600), time="1", timeout=200)
    assert "reached its time limit" in str(caught.value), str(caught.value)


def test_timeout_cancels_what_it_submitted(profile_with, transport):
    from jupyter_hpcllm.errors import HpcllmError

    seen = []
    with pytest.raises(HpcllmError, match=r"was not ready after 3 s\. It was cancelled"):
        hpc.up("Qwen3-8B", profile=profile_with(delay=60), timeout=3, on_progress=seen.append)
    rows = parse_queue(transport.run(queue_command()).stdout)
    assert seen[0].job_id not in [r.job_id for r in rows if r.state is not JobState.COMPLETING]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_live_metrics_through_the_jobs_relay(profile_with, engine):
    """The engine's /metrics under its own names, read through the forward and the relay with the key."""
    with Cluster(profile_with(delay=0.3)) as cluster:
        server = cluster.up("Qwen3-8B", engine=engine)
        try:
            idle = server.metrics()
            assert (idle.running, idle.waiting, idle.kv_cache) == (0.0, 0.0, 0.0), idle
            assert idle.tokens_per_second is not None  # vLLM: from two readings; SGLang: its gauge
            server.client().chat.completions.create(model="Qwen3-8B",
                                                    messages=[{"role": "user", "content": "count my tokens"}])
            after = server.metrics(rate_within=0)
            if engine == "vllm":
                assert after.generation_tokens is not None and after.generation_tokens > 0
        finally:
            server.down()


def test_watching_a_jobs_metrics_does_not_keep_it_from_ending_itself(profile_with):
    """A dashboard (the lab sidebar) attaches without a lease and reads metrics every second: the job, which
    nobody uses, still ends itself after its idle timeout (6 s here)."""
    import contextlib
    import time

    with Cluster(profile_with(delay=0.3)) as cluster:
        server = cluster.up("Qwen3-8B", idle_timeout=0.1)
        job = server.job_id
        server.close()  # the lease is given back: nothing holds the job now
        watcher = cluster.attach(job, hold=False)
        try:
            deadline = time.monotonic() + 60
            while cluster.status(job).state.is_active and time.monotonic() < deadline:
                with contextlib.suppress(hpc.errors.ServerNotReady):  # the engine may be stopping
                    watcher.metrics(rate_within=0)
                time.sleep(1.0)
            info = cluster.status(job)
            assert info.ended_idle and not info.state.is_active, info
        finally:
            watcher.close()
            cluster.cancel_quietly(job)
