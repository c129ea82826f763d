"""A connection that dies under the lifecycle, against the in-memory cluster: reads are retried once,
sbatch never blindly, and a launch that fails or is stopped frees its job over a new connection."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from lifecycle_helpers import JOIN, Clock, sent

from jupyter_hpcllm.edge.fake import FakeTransport, Outcome
from jupyter_hpcllm.edge.transport import run_idempotent
from jupyter_hpcllm.errors import ConnectionLost, LaunchCancelled, ServerNotReady, SubmitError
from jupyter_hpcllm.lifecycle import Cluster, Stage


def test_a_read_is_run_once_more_on_a_new_connection(fake: FakeTransport):
    fake.drop("squeue")
    result = run_idempotent(fake, 'squeue -h -u "$USER" -o \'%i|%j|%T|%N|%L|%r|%S|%k|%b|%M\'')
    assert result.exit_status == 0 and len(sent(fake, "squeue")) == 2
    fake.drop("squeue", times=2)  # dead again on the new connection: the error reaches the caller
    with pytest.raises(ConnectionLost):
        run_idempotent(fake, 'squeue -h -u "$USER" -o \'%i|%j|%T|%N|%L|%r|%S|%k|%b|%M\'')


def test_sbatch_whose_answer_was_lost_is_asked_again_not_submitted_again(cluster: Cluster, fake: FakeTransport):
    fake.drop("sbatch", when="after")  # the job exists, its id never came back
    server = cluster.launch("Qwen3-8B").result(timeout=JOIN)
    assert list(fake.jobs) == ["1000"] and server.job_id == "1000"
    submits = sent(fake, "cd && mkdir")
    assert len(submits) == 2 and submits[0] == submits[1]  # the same command, the same token: one job
    token = fake.jobs["1000"].sbatch["comment"].rpartition(";submission=")[2]
    assert f".submit-{token} " in submits[0] and len(token) == 12
    server.close()


def test_sbatch_that_never_ran_is_submitted_by_the_second_try(cluster: Cluster, fake: FakeTransport):
    fake.drop("sbatch", when="before")
    server = cluster.launch("Qwen3-8B").result(timeout=JOIN)
    assert list(fake.jobs) == ["1000"] and len(sent(fake, "cd && mkdir")) == 2
    server.close()


def test_two_launches_are_two_submissions(cluster: Cluster, fake: FakeTransport):
    first = cluster.launch("Qwen3-8B", reuse=False).result(timeout=JOIN)
    fake.drop("sbatch", when="after")
    second = cluster.launch("Qwen3-8B", reuse=False).result(timeout=JOIN)
    assert (first.job_id, second.job_id) == ("1000", "1001")  # same script, other token: a job of its own
    first.close(), second.close()


def test_an_answer_lost_twice_says_how_to_find_the_job(cluster: Cluster, fake: FakeTransport):
    fake.drop("sbatch", when="after", times=2)
    handle = cluster.launch("Qwen3-8B")
    with pytest.raises(SubmitError) as raised:
        handle.result(timeout=JOIN)
    token = fake.jobs["1000"].sbatch["comment"].rpartition(";submission=")[2]
    assert "may or may not exist" in str(raised.value) and f"submission={token}" in str(raised.value)
    assert "`hpcllm list`" in str(raised.value) and list(fake.jobs) == ["1000"]


def test_a_launch_failing_on_a_dead_connection_cancels_over_a_fresh_one(cluster: Cluster, fake: FakeTransport):
    fake.outcome = Outcome(starts=False)
    pending = threading.Event()
    handle = cluster.launch("Qwen3-8B", on_progress=lambda p: pending.set() if p.stage is Stage.PENDING else None)
    assert pending.wait(JOIN)
    fake.drop("@@hpcllm", times=2)  # the probe and its one retry: the launch fails
    with pytest.raises(ConnectionLost) as raised:
        handle.result(timeout=JOIN)
    assert fake.fresh_connections == 1 and fake.jobs["1000"].state == "CANCELLED" and handle.freed
    assert "may still hold" not in str(raised.value)


def test_when_even_a_fresh_connection_fails_the_error_names_the_job_and_the_command(cluster: Cluster,
                                                                                   fake: FakeTransport):
    fake.outcome = Outcome(starts=False)
    pending = threading.Event()
    handle = cluster.launch("Qwen3-8B", on_progress=lambda p: pending.set() if p.stage is Stage.PENDING else None)
    assert pending.wait(JOIN)
    fake.drop("@@hpcllm|scancel", times=4)  # probe + retry, scancel + retry on the fresh connection
    with pytest.raises(ConnectionLost) as raised:
        handle.result(timeout=JOIN)
    assert handle.freed is False and fake.jobs["1000"].state == "PENDING"
    assert "Job 1000 may still hold its GPUs" in str(raised.value) and "`scancel 1000`" in str(raised.value)
    assert "`hpcllm down 1000`" in str(raised.value)


def test_stop_cancels_over_a_fresh_connection_while_the_launch_is_stuck(profile: Any, fake: FakeTransport,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import jupyter_hpcllm.lifecycle.handle as handle_module

    monkeypatch.setattr(handle_module, "_STUCK", 0.2)
    fake.outcome = Outcome(starts=False)
    release, stuck = threading.Event(), threading.Event()
    run = fake.run

    def hanging_probe(command: str, **kwargs: Any) -> Any:
        if "@@hpcllm" in command and fake.jobs and not release.is_set():
            stuck.set()
            release.wait(JOIN)  # a command on a connection that died silently
            raise ConnectionLost("the connection broke (a test)")
        return run(command, **kwargs)

    monkeypatch.setattr(fake, "run", hanging_probe)
    clock = Clock()
    cluster = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep)
    handle = cluster.launch("Qwen3-8B")
    assert stuck.wait(JOIN)
    stopper = threading.Thread(target=handle.stop)
    stopper.start()
    try:
        # the job is cancelled while the launch's own thread is still stuck in its probe
        for _ in range(100):
            if fake.jobs["1000"].state == "CANCELLED":
                break
            threading.Event().wait(0.05)
        assert fake.jobs["1000"].state == "CANCELLED" and fake.fresh_connections >= 1 and not handle.done()
        stopper.join(JOIN)
        assert not stopper.is_alive() and not handle.done()  # stop() returned: the GPUs are free
    finally:
        release.set()
    assert isinstance(handle.exception(timeout=JOIN), LaunchCancelled) and handle.freed is True


def test_a_timeout_whose_cancel_failed_names_the_job(cluster: Cluster, fake: FakeTransport, clock: Clock):
    fake.outcome = Outcome(starts=False)
    fake.drop("scancel", times=4)  # scancel and its retry, on this connection and on a fresh one
    with pytest.raises(ServerNotReady) as raised:
        cluster.up("Qwen3-8B", timeout=60)
    assert "stop it with `hpcllm down 1000`, or `scancel 1000` on the login node" in str(raised.value)


def test_half_a_script_is_never_submitted(cluster: Cluster, fake: FakeTransport, monkeypatch: pytest.MonkeyPatch):
    run = fake.run
    cut: list[str] = []

    def cut_once(command: str, **kwargs: Any) -> Any:
        if "sbatch" in command and not cut:  # the connection died while the script was being sent
            cut.append(command)
            run(command, **{**kwargs, "stdin": kwargs["stdin"][:100], "check": False})
            raise ConnectionLost("the connection broke while sending the script (a test)")
        return run(command, **kwargs)

    monkeypatch.setattr(fake, "run", cut_once)
    server = cluster.launch("Qwen3-8B").result(timeout=JOIN)
    # the half script was refused on the login node; the retry sent it whole and made the one job
    assert list(fake.jobs) == ["1000"] and fake.jobs["1000"].script.endswith("\n") and len(cut) == 1
    assert len(fake.jobs["1000"].script) > 100
    server.close()


def test_a_retry_that_cannot_reconnect_still_says_the_job_may_exist(cluster: Cluster, fake: FakeTransport,
                                                                    monkeypatch: pytest.MonkeyPatch):
    from jupyter_hpcllm.errors import ConnectError

    fake.drop("sbatch", when="after")  # the job exists, its id never came back
    run = fake.run

    def unreachable_retry(command: str, **kwargs: Any) -> Any:
        if "sbatch" in command and fake.jobs:
            raise ConnectError("Cannot reach the login node (a test: the VPN is still down).")
        return run(command, **kwargs)

    monkeypatch.setattr(fake, "run", unreachable_retry)
    with pytest.raises(SubmitError) as raised:
        cluster.launch("Qwen3-8B").result(timeout=JOIN)
    token = fake.jobs["1000"].sbatch["comment"].rpartition(";submission=")[2]
    assert "may or may not exist" in str(raised.value) and f"submission={token}" in str(raised.value)
