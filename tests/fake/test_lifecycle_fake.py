"""The whole lifecycle against the in-memory cluster (`FakeTransport`): no SSH, no Slurm, no sleeping.

Time is a fake clock that moves only when the lifecycle sleeps; jobs move one step per probe.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import openai
import pytest
from lifecycle_helpers import JOIN, Clock, reached, sent, stages

import jupyter_hpcllm.lifecycle.shared as cluster_module
from jupyter_hpcllm.edge.fake import VLLM_MAX_MODEL_LEN_ERROR, FakeJob, FakeTransport, Outcome
from jupyter_hpcllm.edge.slurm import JobState, parse_probe, probe_command, submit_command
from jupyter_hpcllm.errors import (
    ConfigError,
    ConnectError,
    JobFailed,
    JobNotFound,
    LaunchCancelled,
    ModelNotFound,
    RemoteCommandError,
    ServerNotReady,
    SubmitError,
)
from jupyter_hpcllm.lifecycle import Cluster, LaunchHandle, Progress, Server, Stage
from jupyter_hpcllm.lifecycle.waiting import api_answers

# --- launching ------------------------------------------------------------------------------------------


def test_launch_goes_through_every_stage_to_a_server_that_chats(cluster: Cluster, fake: FakeTransport):
    handle = cluster.launch("Qwen3-8B")
    server = handle.result(timeout=JOIN)
    assert [(p.stage, p.shards) for p in handle.history] == [
        (Stage.SUBMITTED, None), (Stage.PENDING, None), (Stage.RUNNING, None), (Stage.LOADING, None),
        (Stage.LOADING, (2, 5)), (Stage.LOADING, (5, 5)), (Stage.READY, None)]  # Qwen3-8B: 5 shards
    assert handle.history[0].message == "Submitted job 1000 (gpu:a100:1, 4:00:00)."
    assert handle.history[1].reason == "Priority" and handle.history[1].expected_start
    assert handle.progress is not None and handle.progress.stage is Stage.READY
    assert handle.done() and handle.exception() is None and not handle.cancelled() and handle.submitted
    assert repr(handle) == "<LaunchHandle Qwen3-8B: job 1000, done>"
    assert handle.join(JOIN)

    run = fake.jobs["1000"].run
    assert run is not None
    assert (server.job_id, server.model, server.engine, server.node, server.port) == (
        "1000", "Qwen3-8B", "vllm", "gpu01", run.port)
    assert server.api_key == run.key and run.key not in repr(server)
    assert server.base_url == f"http://{fake.forwards[0].address}/v1"
    assert "#SBATCH --comment=hpcllm;model=Qwen3-8B;engine=vllm" in fake.jobs["1000"].script

    client = server.client(max_retries=0)
    assert [m.id for m in client.models.list()] == ["Qwen3-8B"]
    answer = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "hello cluster"}])
    assert answer.choices[0].message.content == "Echo: hello cluster" and answer.usage is not None
    chunks = list(client.chat.completions.create(
        model="Qwen3-8B", messages=[{"role": "user", "content": [{"type": "text", "text": "stream me"}]}],
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: stream me"
    assert chunks[-1].choices[0].finish_reason == "stop" and len(chunks) > 3
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="Qwen3-8B", messages=["not a message"])  # type: ignore[list-item]

    async def chat() -> str | None:
        reply = await server.async_client(max_retries=0).chat.completions.create(
            model="Qwen3-8B", messages=[{"role": "user", "content": "async"}])
        return reply.choices[0].message.content

    assert asyncio.run(chat()) == "Echo: async"

    info = server.status()
    assert (info.state, info.node, info.port, info.url, info.model) == (
        JobState.RUNNING, "gpu01", run.port, server.base_url, "Qwen3-8B")
    assert server.down() is JobState.CANCELLED
    assert fake.jobs["1000"].state == "CANCELLED" and fake.forwards[0].closed
    with pytest.raises(openai.APIConnectionError):  # the forward is closed: nothing, kept-alive or new, gets through
        client.models.list()
    assert server.down() is JobState.CANCELLED  # idempotent: no second scancel
    assert sent(fake, "scancel") == ["scancel 1000"]
    ended = server.status()  # while Slurm remembers the job, its status says how it ended
    assert ended.state is JobState.CANCELLED and ended.url is None and ended.time_left is None


def test_up_reuses_a_running_twin_and_reuse_false_submits_anew(cluster: Cluster, fake: FakeTransport):
    first = cluster.up("Qwen3-8B")
    seen: list[Progress] = []
    again = cluster.up("Qwen3-8B", on_progress=seen.append)
    assert again.job_id == first.job_id == "1000" and again.api_key == first.api_key
    assert stages(seen) == [Stage.REUSED, Stage.RUNNING, Stage.LOADING, Stage.READY]
    assert seen[0].message == "Reusing job 1000 with the same model and options."
    assert list(fake.jobs) == ["1000"]  # one job: the second launch's locked look found the first
    assert "-n hpcllm-Qwen3-8B-" in sent(fake, "cd && mkdir")[1]
    other = cluster.up("Qwen3-8B", reuse=False)
    assert other.job_id == "1001" and "squeue" not in sent(fake, "cd && mkdir")[2]
    different = cluster.up("Qwen3-8B", gpus=2)  # other options, other script: no twin
    assert different.job_id == "1002" and fake.jobs["1002"].sbatch["gres"] == "gpu:a100:2"


def test_a_completing_twin_is_not_reused(cluster: Cluster, fake: FakeTransport):
    first = cluster.up("Qwen3-8B")
    fake.set_state(first.job_id, "COMPLETING")  # cancelled a moment ago: its engine is stopping
    second = cluster.up("Qwen3-8B")
    assert second.job_id == "1001"


def test_a_reused_pending_launch_cancelled_leaves_the_job_alone(cluster: Cluster, fake: FakeTransport):
    fake.outcome = Outcome(starts=False)
    pending, on_pending = reached(Stage.PENDING)
    owner = cluster.launch("Qwen3-8B", on_progress=on_pending)
    assert pending.wait(JOIN)
    reuser = cluster.launch("Qwen3-8B")
    reused, on_reused = reached(Stage.REUSED)
    reuser.add_callback(on_reused)
    assert reused.wait(JOIN) and reuser.job_id == "1000" and not reuser.submitted
    assert reuser.cancel() and reuser.join(JOIN)
    with pytest.raises(LaunchCancelled):
        reuser.result(0)
    assert sent(fake, "scancel") == [] and fake.jobs["1000"].state == "PENDING"
    assert owner.cancel() and owner.join(JOIN)
    assert sent(fake, "scancel") == ["scancel 1000"]


def test_cancel_from_another_thread_while_pending(cluster: Cluster, fake: FakeTransport):
    fake.outcome = Outcome(starts=False)
    pending, on_pending = reached(Stage.PENDING)
    handle = cluster.launch("Qwen3-8B", on_progress=on_pending)
    assert pending.wait(JOIN)
    with pytest.raises(TimeoutError, match="still in progress"):
        handle.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        handle.exception(timeout=0.01)
    canceller = threading.Thread(target=handle.cancel)
    canceller.start()
    canceller.join(JOIN)
    assert handle.join(JOIN)
    with pytest.raises(LaunchCancelled) as raised:
        handle.result(timeout=JOIN)
    assert str(raised.value) == "The launch of Qwen3-8B was cancelled; job 1000 was cancelled, its GPUs are free."
    assert handle.cancelled() and not handle.cancel()  # ended: nothing left to cancel
    assert sent(fake, "scancel") == ["scancel 1000"] and fake.jobs["1000"].state == "CANCELLED"


def test_callbacks_replay_history_and_done_callbacks_run_once(cluster: Cluster):
    done_early: list[LaunchHandle] = []
    handle = cluster.launch("gpt-oss-20b", on_progress=lambda p: 1 / 0)  # a failing callback stops nothing
    handle.add_done_callback(done_early.append)
    server = handle.result(timeout=JOIN)
    assert handle.join(JOIN) and done_early == [handle]
    replayed: list[Progress] = []
    handle.add_callback(replayed.append)
    assert replayed == handle.history and stages(replayed)[-1] is Stage.READY
    done_late: list[LaunchHandle] = []
    handle.add_done_callback(done_late.append)
    assert done_late == [handle]
    assert handle.plan is not None and "--tool-call-parser openai" in handle.plan.script
    assert server.model == "gpt-oss-20b"


def test_cancelled_just_as_it_became_ready(cluster: Cluster, fake: FakeTransport):
    holder: list[LaunchHandle] = []
    started = threading.Event()

    def on_progress(progress: Progress) -> None:
        if progress.stage is Stage.READY:
            started.wait(JOIN)
            holder[0].cancel()

    holder.append(cluster.launch("Qwen3-8B", on_progress=on_progress))
    started.set()
    with pytest.raises(LaunchCancelled):
        holder[0].result(timeout=JOIN)
    assert holder[0].join(JOIN)
    assert fake.forwards[0].closed and fake.jobs["1000"].state == "CANCELLED"


def test_an_engine_failure_after_submit_cancels_the_job(cluster: Cluster, fake: FakeTransport):
    fake.outcome = Outcome(exit_code=1, log=VLLM_MAX_MODEL_LEN_ERROR)
    handle = cluster.launch("Qwen3-8B")
    with pytest.raises(JobFailed) as raised:
        handle.result(timeout=JOIN)
    assert handle.join(JOIN) and handle.exception() is raised.value
    assert "exited with code 1 while starting" in raised.value.message
    assert raised.value.hint == "Fix: retry with -- --max-model-len 15344 (or more GPUs: --gpus)."
    assert sent(fake, "scancel") == ["scancel 1000"]
    assert fake.forwards and all(f.closed for f in fake.forwards)
    assert stages(handle.history)[-1] is Stage.LOADING


@pytest.mark.parametrize(("state", "expected"), [
    ("TIMEOUT", "Job 1000 reached its time limit before the server was ready."),
    ("NODE_FAIL", "Job 1000 ended (NODE_FAIL) before the server was ready."),
])
def test_slurm_ends_the_job_while_it_loads(cluster: Cluster, fake: FakeTransport, state: str, expected: str):
    fake.outcome = Outcome(slurm_state=state)
    with pytest.raises(JobFailed) as raised:
        cluster.up("Qwen3-8B")
    assert raised.value.message == expected and raised.value.state == state
    assert f"*** JOB 1000 ON gpu01 {state} AT" in fake.jobs["1000"].slurm_log


def test_the_timeout_option_gives_up_and_cancels_the_job(cluster: Cluster, fake: FakeTransport, clock: Clock):
    fake.outcome = Outcome(starts=False)
    start = clock.now
    with pytest.raises(ServerNotReady) as raised:
        cluster.up("Qwen3-8B", timeout=120)
    assert raised.value.message == "Job 1000 was not ready after 120 s." and "It was cancelled" in raised.value.hint
    assert 120 < clock.now - start < 131  # pending polls at most every 10 s
    assert fake.jobs["1000"].state == "CANCELLED"


def test_an_interrupted_up_cancels_its_launch(cluster: Cluster, fake: FakeTransport,
                                              monkeypatch: pytest.MonkeyPatch):
    fake.outcome = Outcome(starts=False)
    pending, on_pending = reached(Stage.PENDING)
    joins: list[float | None] = []
    join = LaunchHandle.join

    def interrupted(self: LaunchHandle, timeout: float | None = None) -> Server:
        assert pending.wait(JOIN)  # Ctrl-C while the job is pending
        raise KeyboardInterrupt

    def impatient_join(self: LaunchHandle, timeout: float | None = None) -> bool:
        joins.append(timeout)
        if len(joins) == 1:
            raise KeyboardInterrupt  # a second Ctrl-C while the cancel is on its way
        return join(self, timeout)

    monkeypatch.setattr(LaunchHandle, "result", interrupted)
    monkeypatch.setattr(LaunchHandle, "join", impatient_join)
    with pytest.raises(KeyboardInterrupt):
        cluster.up("Qwen3-8B", on_progress=on_pending)
    assert len(joins) >= 2  # up() waited through the second Ctrl-C until the job was cancelled
    assert fake.jobs["1000"].state == "CANCELLED" and sent(fake, "scancel") == ["scancel 1000"]


def test_an_interrupt_as_it_becomes_ready_stops_the_job(cluster: Cluster, fake: FakeTransport,
                                                        monkeypatch: pytest.MonkeyPatch):
    result = LaunchHandle.result

    def interrupted(self: LaunchHandle, timeout: float | None = None) -> Server:
        result(self, JOIN)  # ready, but the Ctrl-C came before up() returned it
        raise KeyboardInterrupt

    monkeypatch.setattr(LaunchHandle, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cluster.up("Qwen3-8B")
    assert fake.jobs["1000"].state == "CANCELLED" and fake.forwards[0].closed


def test_a_key_that_cannot_be_read_closes_the_forward(cluster: Cluster, fake: FakeTransport,
                                                      monkeypatch: pytest.MonkeyPatch):
    run = fake.run

    def no_key(command: str, **options: Any) -> Any:
        if command.endswith("/key"):
            raise RemoteCommandError(command, 1, "", "cat: .hpcllm/jobs/1000/key: Permission denied")
        return run(command, **options)

    monkeypatch.setattr(fake, "run", no_key)
    with pytest.raises(RemoteCommandError, match="Permission denied"):
        cluster.up("Qwen3-8B")
    assert len(fake.forwards) == 1 and fake.forwards[0].closed
    assert fake.jobs["1000"].state == "CANCELLED"  # a failed launch leaves no job behind


def test_sbatch_refusing_is_a_submit_error(cluster: Cluster, fake: FakeTransport):
    fake.sbatch_error = "Batch job submission failed: Requested node configuration is not available"
    with pytest.raises(SubmitError) as raised:
        cluster.up("Qwen3-8B")
    assert raised.value.message == ("Slurm refused the job: Batch job submission failed: Requested node "
                                    "configuration is not available.")
    assert fake.jobs == {} and sent(fake, "scancel") == []


def test_a_model_that_is_not_there(cluster: Cluster, fake: FakeTransport):
    with pytest.raises(ModelNotFound) as raised:
        cluster.up("Qwen3-8")
    assert raised.value.candidates[0] == "Qwen3-8B" and fake.jobs == {}


def test_parsers_are_checked_against_the_image(cluster: Cluster, fake: FakeTransport):
    assert "hermes" in cluster.parsers()["tool"] and "qwen3" in cluster.parsers("sglang")["reasoning"]
    with pytest.raises(ConfigError, match="does not register the tool-call parser 'hermez'.*Nearest.*hermes"):
        cluster.up("Qwen3-8B", tool_call_parser="hermez")
    assert fake.jobs == {}
    assert cluster.up("Qwen3-8B", engine="sglang").engine == "sglang"


def test_planning_and_models_read_the_fake_files(cluster: Cluster, fake: FakeTransport):
    summaries = {s.facts.name: s for s in cluster.models()}
    assert summaries["Qwen3-8B"].family == "qwen3" and summaries["gpt-oss-20b"].family == "gpt-oss"
    assert summaries["Qwen3-8B"].facts.shards == 5 and 15 < summaries["Qwen3-8B"].facts.weight_gb < 18
    assert summaries["Qwen3-8B"].suggestion == "1 × a100 (80 GB)"
    assert repr(cluster) == "<Cluster ebi via fake cluster>"
    plan = cluster.plan("Qwen3-8B")
    assert (plan.gpus, plan.tool_parser, plan.reasoning_parser) == (1, "hermes", "qwen3")
    assert "#SBATCH --job-name=hpcllm-Qwen3-8B-" in cluster.job_script("Qwen3-8B")
    # Facts come through files(); the shell only asks each image what it holds (a stat and one probe each).
    assert [command.split()[0] for command in fake.commands] == ["stat", "cd;", "stat", "cd;"]
    fake.commands.clear()
    cluster.plan("Qwen3-8B")
    assert [command.split()[0] for command in fake.commands] == ["stat", "stat"]  # the answers are cached


def test_a_strict_model_root(profile: Any):
    fake = FakeTransport(model_root="~/models")
    with Cluster(replace(profile, model_root="~/models"), transport=fake) as cluster:
        assert {s.facts.name for s in cluster.models()} == {"Qwen3-8B", "gpt-oss-20b"}
    with pytest.raises(ModelNotFound, match="does not exist on the cluster"):
        Cluster(profile, transport=fake).models()


# --- attach, list, status, logs, cancel ---------------------------------------------------------------


def test_attach_from_another_session(cluster: Cluster, fake: FakeTransport, profile: Any, clock: Clock):
    job_id = cluster.submit(cluster.plan("Qwen3-8B"))
    other = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep)
    seen: list[Progress] = []
    server = other.attach(job_id, on_progress=seen.append)
    assert stages(seen) == [Stage.PENDING, Stage.RUNNING, Stage.LOADING, Stage.LOADING, Stage.LOADING, Stage.READY]
    again = cluster.attach(job_id)
    assert (again.port, again.api_key) == (server.port, server.api_key)
    assert api_answers(cluster.open_forward(server).address, server.api_key)
    client = server.client(max_retries=0)
    assert [m.id for m in client.models.list()] == ["Qwen3-8B"]
    server.close()
    with pytest.raises(openai.APIConnectionError):  # its forward is closed, kept-alive connections too
        client.models.list()
    assert [m.id for m in again.client(max_retries=0).models.list()] == ["Qwen3-8B"]  # the job still serves
    again.close()
    assert fake.jobs[job_id].state == "RUNNING" and sent(fake, "scancel") == []  # close() leaves it running


def test_attach_timeout_leaves_the_job_running(cluster: Cluster, fake: FakeTransport):
    fake.outcome = Outcome(starts=False)
    job_id = cluster.submit(cluster.plan("Qwen3-8B"))
    with pytest.raises(ServerNotReady, match=f"hpcllm down {job_id}"):
        cluster.attach(job_id, timeout=30)
    assert fake.jobs[job_id].state == "PENDING" and sent(fake, "scancel") == []


def test_list_status_logs_and_cancel(cluster: Cluster, fake: FakeTransport, clock: Clock):
    server = cluster.up("Qwen3-8B")
    fake.outcome = Outcome(starts=False)
    waiting = cluster.submit(cluster.plan("gpt-oss-20b"))
    fake.jobs["999"] = replace(fake.jobs[waiting], job_id="999", name="jupyter-notebook")  # not one of ours
    listed = {info.job_id: info for info in cluster.list()}
    assert sorted(listed) == ["1000", "1001"]
    assert (listed["1000"].state, listed["1000"].model, listed["1000"].engine) == (JobState.RUNNING, "Qwen3-8B", "vllm")
    assert listed["1001"].state is JobState.PENDING and listed["1001"].reason == "Priority"

    status = cluster.status("1000")
    assert (status.node, status.port, status.time_left, status.reason) == ("gpu01", server.port, "4:00:00", None)
    assert status.started and status.expected_start is None
    pending = cluster.status(waiting)
    assert pending.port is None and pending.expected_start and pending.started is None
    with pytest.raises(JobNotFound):
        cluster.status("4242")

    log = cluster.logs("1000")
    assert log.startswith("INFO vllm (fake) serving Qwen3-8B") and log.endswith("Application startup complete.\n")
    assert cluster.logs("1000", lines=1) == "INFO:     Application startup complete.\n"
    with pytest.raises(JobNotFound, match="no engine log"):
        cluster.logs(waiting)

    assert cluster.cancel(waiting) is JobState.CANCELLED
    assert cluster.status(waiting).state is JobState.CANCELLED
    with pytest.raises(RemoteCommandError, match="Invalid job id"):
        cluster.cancel("4242")
    start = clock.now
    assert cluster.wait_gone("1000", 1.0) is JobState.RUNNING  # still running after the time allowed
    assert 1.0 < clock.now - start <= 1.5
    assert not cluster.cancel_quietly("4242")  # scancel failed (no such job): the caller must not say "freed"
    assert not cluster.cancel_quietly("x; rm -rf ~")  # never raises; not a job id, so nothing is run
    assert fake.commands[-1] == "scancel 4242" and not any("rm -rf ~" in command for command in fake.commands)
    with pytest.raises(ConfigError, match="is not a Slurm job id"):
        cluster.cancel("--me")  # scancel --me would cancel every job of the user


def test_follow_logs_until_the_job_ends(profile: Any, fake: FakeTransport):
    clock = Clock(max_sleeps=200)
    server = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep).up("Qwen3-8B")
    follow = server.follow_logs(poll=0.5)
    first = next(follow)
    assert first == server.logs(lines=100)
    run = fake.jobs[server.job_id].run
    assert run is not None
    run.log += "INFO 200 OK\n"
    assert next(follow) == "INFO 200 OK\n"
    fake.set_state(server.job_id, "CANCELLED by 1001")
    assert list(follow) == []  # ends once the job has
    assert fake.jobs[server.job_id].state == "CANCELLED by 1001"
    assert server.status().state is JobState.CANCELLED


@pytest.mark.parametrize("bad", ["--me", "", "12a", "_1", "1_", "1;2", "\u00b2", "\u0661\u0662"])
def test_a_bad_job_id_runs_no_command(cluster: Cluster, fake: FakeTransport, bad: str):
    for call in (cluster.status, cluster.logs, cluster.cancel, cluster.attach,
                 lambda job_id: next(cluster.follow_logs(job_id))):
        with pytest.raises(ConfigError, match="is not a Slurm job id"):
            call(bad)
    assert fake.commands == []


def test_down_through_the_context_manager(cluster: Cluster, fake: FakeTransport):
    with cluster.up("Qwen3-8B") as server:
        assert server.profile is cluster.profile
    assert fake.jobs[server.job_id].state == "CANCELLED"


# --- requeue ------------------------------------------------------------------------------------------------


def test_a_requeue_while_loading_is_followed_to_the_new_node(profile: Any, clock: Clock):
    fake = FakeTransport(loading_probes=3, pending_probes=2)
    cluster = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep)
    requeued: list[str] = []

    def on_progress(progress: Progress) -> None:
        if progress.shards and not requeued:
            run = fake.jobs[progress.job_id].run
            assert run is not None
            requeued.append(run.key)
            fake.requeue(progress.job_id, node="gpu02")

    with cluster:
        handle = cluster.launch("Qwen3-8B", on_progress=on_progress)
        server = handle.result(timeout=JOIN)
        assert (server.node, server.port) == ("gpu02", 20002)
        run = fake.jobs["1000"].run
        assert run is not None and server.api_key == run.key != requeued[0]
        assert [(f.target, f.closed) for f in fake.forwards] == [(("gpu01", 20001), True), (("gpu02", 20002), False)]
        nodes = [(p.stage, p.node) for p in handle.history if p.stage in (Stage.RUNNING, Stage.PENDING)]
        assert nodes == [(Stage.PENDING, None), (Stage.RUNNING, "gpu01"), (Stage.PENDING, None),
                         (Stage.RUNNING, "gpu02")]
        assert "REQUEUED" in fake.jobs["1000"].slurm_log
        answer = server.client(max_retries=0).chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "still there?"}])
        assert answer.choices[0].message.content == "Echo: still there?"
    assert fake.forwards[1].closed  # closing the cluster closes its transport's forwards


# --- the fake itself ----------------------------------------------------------------------------------------


def test_the_fake_refuses_what_it_does_not_know(fake: FakeTransport):
    with pytest.raises(RemoteCommandError) as raised:
        fake.run("hostname", check=False)
    assert raised.value.exit_status == 127 and "command not found" in raised.value.stderr
    not_ours = "#!/bin/bash\necho not ours\n"
    refused = fake.run(submit_command("0123456789ab", "hpcllm", len(not_ours)), stdin=not_ours, check=False)
    assert refused.exit_status == 1 and "not a jupyter-hpcllm job script" in refused.stderr
    unknown = parse_probe(fake.run(probe_command("31337", "0123456789abcdef")).stdout, "0123456789abcdef")
    assert unknown.queue_checked and unknown.row is None and unknown.server is None and unknown.exit_code is None
    with pytest.raises(RemoteCommandError):
        fake.run("cat .hpcllm/jobs/31337/key")
    from jupyter_hpcllm.errors import ConnectError

    with pytest.raises(ConnectError):
        fake.open_channel("gpu01", 22)


def test_a_forward_to_nothing_drops_the_connection(fake: FakeTransport):
    forward = fake.forward("gpu09", 1234)
    assert not api_answers(forward.address, "key")
    forward.raise_if_failed()
    forward.close()
    forward.close()
    assert forward.closed


# --- the module-level conveniences ----------------------------------------------------------------------


def test_module_level_functions_share_one_cluster(profile: Any, monkeypatch: pytest.MonkeyPatch, clock: Clock):
    made: list[Cluster] = []

    def make(p: Any, prompt: Any = None) -> Cluster:
        made.append(Cluster(p, transport=FakeTransport(), clock=clock, sleep=clock.sleep))
        return made[-1]

    monkeypatch.setattr(cluster_module, "_shared", {})
    monkeypatch.setattr(cluster_module, "Cluster", make)
    shared = cluster_module.cluster_for(profile)
    assert cluster_module.cluster_for(profile) is shared and made == [shared]
    server = cluster_module.up("Qwen3-8B", profile=profile)
    handle = cluster_module.launch("Qwen3-8B", profile=profile)
    assert handle.result(timeout=JOIN).job_id == server.job_id == "1000"
    assert cluster_module.attach(server.job_id, profile=profile).port == server.port
    assert [s.job_id for s in cluster_module.list_servers(profile)] == [server.job_id]
    assert cluster_module.cancel(server.job_id, profile=profile) is JobState.CANCELLED
    assert made == [shared]  # every call went to the one cluster
    shared.close()


def test_fake_jobs_are_plain_data(fake: FakeTransport, cluster: Cluster):
    job_id = cluster.submit(cluster.plan("Qwen3-8B"))
    job = fake.jobs[job_id]
    assert isinstance(job, FakeJob) and (job.model, job.engine, job.state, job.run) == (
        "Qwen3-8B", "vllm", "PENDING", None)
    assert job.sbatch["time"] == "4:00:00" and job.sbatch["gres"] == "gpu:a100:1"
    assert job.name == job.sbatch["job-name"] and job.name.startswith("hpcllm-Qwen3-8B-")


def test_a_cancel_that_breaks_still_ends_the_launch(cluster: Cluster, fake: FakeTransport):
    """The job fails, and the scancel sent for it breaks with a non-jupyter-hpcllm error: the launch must
    still end (with the job's failure), never hang."""
    from jupyter_hpcllm.edge.fake import Outcome

    fake.outcome = Outcome(exit_code=1, log="boom\n")
    original = fake.run

    def run(command, **kwargs):
        if command.startswith("scancel"):
            raise OSError("socket closed")
        return original(command, **kwargs)

    fake.run = run
    handle = cluster.launch("Qwen3-8B")
    with pytest.raises(JobFailed):
        handle.result(timeout=10)
    assert handle.done()


def test_a_second_down_sends_scancel_again_after_a_failed_one(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    original = fake.run
    calls = []

    def run(command, **kwargs):
        if command.startswith("scancel") and not calls:
            calls.append(command)
            raise ConnectError("dropped")
        return original(command, **kwargs)

    fake.run = run
    with pytest.raises(ConnectError):
        server.down()
    assert server.down() is JobState.CANCELLED and fake.jobs[server.job_id].state == "CANCELLED"


def test_an_image_that_does_not_answer_in_time_costs_only_its_answers(cluster: Cluster, fake: FakeTransport):
    from jupyter_hpcllm.views import plan_text

    answers = dict(fake.images)
    fake.images = {"vllm": None, "sglang": None}  # the probe times out
    plan = cluster.plan("Qwen3-8B")
    assert plan.tool_parser == "hermes" and plan.parsers.tool.source == "qwen3 in the family table"
    assert "did not answer within 180 s" in plan_text(plan)
    fake.images = {"vllm": "slow", "sglang": "slow"}  # the login node's `timeout` ended the probe first
    assert "did not answer within 180 s" in plan_text(cluster.plan("Qwen3-8B"))
    fake.images = answers
    assert not cluster.plan("Qwen3-8B").image.problems  # neither was cached: asked again, and answered


def test_an_image_slow_this_time_is_taken_at_its_earlier_word(cluster: Cluster, fake: FakeTransport):
    """A plan that changed with the login node's load would not find its twin job: a probe that runs out of
    time uses the image's earlier answer, and says so."""
    answered = {engine: cluster.image(engine) for engine in ("vllm", "sglang")}
    fake.images = {"vllm": None, "sglang": "slow"}  # the client gives up; the login node's timeout ends it
    for engine in ("vllm", "sglang"):
        again = cluster.image(engine, refresh=True)  # asked again: no answer this time
        assert (again.tool_parsers, again.architectures) == (answered[engine].tool_parsers,
                                                             answered[engine].architectures)
        assert "its answer to an earlier probe is used" in again.problems[-1]
