"""A shared cluster is a commons, in memory: one job per plan however many launch it at once, a successor
that takes over the address and key before the walltime ends, leases, idle and walltime accounts."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from lifecycle_helpers import JOIN, Clock

from jupyter_hpcllm.edge.fake import FakeTransport, Outcome
from jupyter_hpcllm.errors import JobFailed, SubmitError
from jupyter_hpcllm.lifecycle import Cluster, Progress, Stage
from jupyter_hpcllm.lifecycle.server import describe_idle
from jupyter_hpcllm.lifecycle.walltime import slurm_seconds, walltime_warning


def test_four_launches_of_one_plan_at_once_make_one_job(profile: Any, fake: FakeTransport):
    # Four notebooks, each with its own connection, start the same model at the same moment.
    clusters = [Cluster(profile, transport=fake) for _ in range(4)]
    start = threading.Barrier(4)
    servers: list[Any] = [None] * 4

    def launch(index: int) -> None:
        start.wait()
        servers[index] = clusters[index].up("Qwen3-8B", timeout=JOIN)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN * 2)
    assert list(fake.jobs) == ["1000"]
    assert {server.job_id for server in servers} == {"1000"}
    for server in servers:
        server.close()


def test_renew_moves_the_address_and_key_to_a_successor(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    client = server.client(max_retries=0)
    url, key = server.base_url, server.api_key
    seen: list[Progress] = []
    assert cluster.renew(server, on_progress=seen.append, grace=0) is server
    assert server.job_id == "1001" and server.base_url == url and server.api_key == key
    assert fake.jobs["1001"].key_from == "1000" and fake.jobs["1000"].state.startswith("CANCELLED")
    assert "HPCLLM_KEY_FROM=1000" in next(c for c in fake.commands if "--export" in c)
    assert fake.jobs["1001"].script == fake.jobs["1000"].script  # the same plan
    assert seen[0].stage is Stage.SUBMITTED and "successor of job 1000" in seen[0].message
    assert seen[-1].stage is Stage.READY and "Job 1001 now serves" in seen[-1].message
    answer = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "still?"}])
    assert answer.choices[0].message.content == "Echo: still?"  # the client made before the renew
    server.down()


def test_a_successor_that_fails_is_cancelled_and_the_old_job_keeps_serving(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    fake.outcome = Outcome(exit_code=1, log="torch.OutOfMemoryError: CUDA out of memory.")
    with pytest.raises(JobFailed):
        cluster.renew(server, grace=0)
    assert server.job_id == "1000" and fake.jobs["1000"].state == "RUNNING"
    answer = server.client(max_retries=0).chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Echo: hi"
    server.down()


def test_extend_says_when_slurm_refuses(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    with pytest.raises(SubmitError, match="Access/permission denied") as refused:
        cluster.extend(server.job_id, 60)
    assert "only administrators" in refused.value.hint and f"hpcllm renew {server.job_id}" in refused.value.hint
    fake.extend_allowed = True
    assert cluster.extend(server.job_id, 60) == fake.jobs["1000"].sbatch["time"]
    assert "scontrol update JobId=1000 TimeLimit=+60" in fake.commands
    server.down()


def test_a_server_keeps_a_lease_while_it_lives(profile: Any, clock: Clock):
    fake = FakeTransport()
    fake.lease_renew_every = 0.05
    cluster = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep)
    server = cluster.up("Qwen3-8B")
    run = fake.jobs["1000"].run
    assert run is not None
    deadline = time.monotonic() + JOIN
    while len(run.leases) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    (client, expiry), = run.leases.items()
    while run.leases.get(client) == expiry and time.monotonic() < deadline:
        time.sleep(0.05)
    # Renewed, for three periods of what the relay asked (at least half a second each), not the first 180 s.
    assert expiry - time.time() > 100 and 1.0 < run.leases[client] - time.time() <= 1.5
    assert "kept by 1 client" in (cluster.status("1000").idle or "")
    server.close()
    assert run.leases == {}  # given back: the job may end itself once idle
    cluster.close()


def test_describe_idle():
    now = 10_000.0
    account = {"idle_timeout": 3600, "last_activity": now - 12 * 60, "leases": 0, "lease_expires": None}
    assert describe_idle(account, now) == "idle 12 min, ends itself in 48 min"
    assert describe_idle({**account, "last_activity": now - 5}, now) == "in use, ends itself in 1 h 00 min"
    held = {**account, "leases": 2, "lease_expires": now + 100}
    assert describe_idle(held, now).startswith("idle 12 min, kept by 2 clients")
    assert describe_idle({**account, "idle_timeout": 0}, now) == "idle 12 min; never ends itself (idle timeout off)"
    assert describe_idle({"leases": "x"}, now) is None and describe_idle(account, None) is None


@pytest.mark.parametrize(("text", "seconds"), [("4:00:00", 14400), ("90", 5400), ("45:30", 2730),
                                               ("1-12:00:00", 129600), ("2-3", 183600), ("1-0:30", 88200),
                                               ("UNLIMITED", None), ("", None), ("1:2:3:4", None)])
def test_slurm_seconds(text: str, seconds: float | None):
    assert slurm_seconds(text) == seconds


def test_walltime_warning():
    assert walltime_warning("7", 11 * 60, 10) is None
    assert walltime_warning("7", 9 * 60, 0) is None  # off
    text = walltime_warning("7", 9 * 60, 10)
    assert text is not None and "in 9 min" in text and "hpcllm renew 7" in text


def test_a_job_that_ended_itself_says_so(cluster: Cluster, fake: FakeTransport, monkeypatch: pytest.MonkeyPatch):
    from jupyter_hpcllm.lifecycle.waiting import WaitState, step

    probe = cluster._probe("1")
    ended = step(WaitState("1", 0.0), probe.__class__(**{**probe.__dict__, "idle_exit": {"idle_seconds": 3600},
                                                        "queue_checked": True, "row": None}), 1.0)
    assert ended.failure is not None and "ended itself: nothing used it for 60 min" in str(ended.failure)


def test_up_renew_renews_before_the_walltime_ends(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    assert server.seconds_left is not None and 14000 < server.seconds_left <= 14400  # squeue's time left
    server._ends_at = time.time() + 4 * 60
    server.renew_automatically(lead_minutes=5, check_every=0.02)
    deadline = time.monotonic() + JOIN
    while server.job_id == "1000" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.job_id == "1001" and server.seconds_left is not None and server.seconds_left > 14000
    server.down()


def test_two_renewers_of_one_job_share_one_successor(profile: Any, fake: FakeTransport, clock: Clock):
    # Two notebooks hold the same job (the second reused it); both renew it.
    first = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep).up("Qwen3-8B")
    second = Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep).up("Qwen3-8B")
    assert first.job_id == second.job_id == "1000"
    first.cluster.renew(first, grace=0)
    second.cluster.renew(second, grace=0)
    assert first.job_id == second.job_id == "1001" and list(fake.jobs) == ["1000", "1001"]
    assert fake.renewals == {"1000": "1001"}
    second.close()
    first.down()


def test_a_failed_renewal_gives_its_claim_up(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    fake.sbatch_error = "QOSMaxSubmitJobPerUserLimit"
    with pytest.raises(SubmitError, match="QOSMaxSubmitJobPerUserLimit"):
        cluster.renew(server, grace=0)
    assert fake.renewals == {}  # a later renewal may try again
    fake.sbatch_error = None
    cluster.renew(server, grace=0)
    assert server.job_id == "1001"
    server.down()


def _until(condition: Any, timeout: float = JOIN) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_a_background_renewal_is_followed_and_finishes(cluster: Cluster, fake: FakeTransport, monkeypatch: Any):
    from jupyter_hpcllm.lifecycle import Renewal

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.0)
    server = cluster.up("Qwen3-8B")
    renewal = Renewal(cluster, "1000").start()
    _until(renewal.done)
    assert renewal.exception() is None and renewal.job_id == "1001" and not renewal.cancelled()
    progress = renewal.progress
    assert progress is not None and progress.stage is Stage.READY and "took over from job 1000" in progress.message
    assert "127.0.0.1" not in progress.message  # not this process's own forward
    assert fake.jobs["1000"].state.startswith("CANCELLED") and fake.jobs["1001"].state == "RUNNING"
    server.close()


def test_a_renewal_stopped_while_its_successor_waits_cancels_the_successor(cluster: Cluster, fake: FakeTransport):
    """Stop gives the renewal up at once (no waiting for the successor to start): the successor is cancelled,
    the record dropped, the old job keeps serving, and a holder following it stays where it is."""
    from jupyter_hpcllm.lifecycle import Renewal

    server = cluster.up("Qwen3-8B")
    fake.outcome = Outcome(starts=False)  # the successor stays in the queue
    renewal = Renewal(cluster, "1000").start()
    _until(lambda: renewal.progress is not None and renewal.job_id == "1001")
    renewal.stop()
    _until(renewal.done)
    assert renewal.cancelled() and fake.jobs["1001"].state.startswith("CANCELLED")
    assert fake.jobs["1000"].state == "RUNNING" and "1000" not in fake.renewals and server.job_id == "1000"
    assert cluster.successor("1000") is None
    server.down()


def test_a_renewal_stopped_before_it_submitted_leaves_no_successor(cluster: Cluster, fake: FakeTransport):
    from jupyter_hpcllm.lifecycle import Renewal

    server = cluster.up("Qwen3-8B")
    gate = threading.Event()
    original = cluster.attach

    def slow_attach(*args: Any, **kwargs: Any) -> Any:
        gate.wait(JOIN)
        return original(*args, **kwargs)

    cluster.attach = slow_attach  # type: ignore[method-assign]
    renewal = Renewal(cluster, "1000").start()
    renewal.stop()
    gate.set()
    _until(renewal.done)
    assert renewal.cancelled() and list(fake.jobs) == ["1000"] and fake.jobs["1000"].state == "RUNNING"
    server.down()


def test_follow_never_moves_to_a_successor_with_another_key(cluster: Cluster, fake: FakeTransport):
    server = cluster.up("Qwen3-8B")
    other = cluster.up("gpt-oss-20b")  # a running job with its own key
    with pytest.raises(SubmitError, match="did not take over the API key"):
        cluster.follow(server, other.job_id, timeout=JOIN)
    assert server.job_id == "1000"
    server.down()
    other.down()


def _blocking_at(renewal: Any, moment: Any) -> tuple[threading.Event, threading.Event]:
    """Hold the renewal's thread at the first progress `moment(progress)` accepts: (reached, go on)."""
    reached, go_on = threading.Event(), threading.Event()
    report = renewal._report

    def held(progress: Progress) -> None:
        report(progress)
        if not reached.is_set() and moment(progress):
            reached.set()
            go_on.wait(JOIN)

    renewal._report = held
    return reached, go_on


def _answers(progress: Progress) -> bool:
    return "answers; it takes over" in progress.message


def test_a_renewal_stopped_after_its_successor_answered_but_before_it_took_over_moves_nobody(
        cluster: Cluster, fake: FakeTransport, monkeypatch: Any):
    from jupyter_hpcllm.lifecycle import Renewal

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.server.FOLLOW_EVERY", 0.02)
    server = cluster.up("Qwen3-8B")
    holder = cluster.attach("1000")
    holder.follow_renewals()
    renewal = Renewal(cluster, "1000")
    reached, go_on = _blocking_at(renewal, _answers)  # the successor answers, not committed yet
    renewal.start()
    assert reached.wait(JOIN)
    assert renewal.progress is not None and renewal.progress.stage is Stage.LOADING  # not "took over" yet
    time.sleep(0.2)
    assert holder.job_id == "1000"  # holders move only once it is committed
    renewal.stop()
    go_on.set()
    _until(renewal.done)
    assert renewal.cancelled() and fake.jobs["1001"].state.startswith("CANCELLED")
    assert fake.jobs["1000"].state == "RUNNING" and holder.job_id == "1000" and cluster.successor("1000") is None
    holder.close()
    server.down()


def test_a_renewal_stopped_after_it_took_over_finishes(cluster: Cluster, fake: FakeTransport, monkeypatch: Any):
    from jupyter_hpcllm.lifecycle import Renewal

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.server.FOLLOW_EVERY", 0.02)
    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.0)
    server = cluster.up("Qwen3-8B")
    holder = cluster.attach("1000")
    holder.follow_renewals()
    renewal = Renewal(cluster, "1000")
    reached, go_on = _blocking_at(renewal, lambda progress: progress.stage is Stage.READY)
    renewal.start()
    assert reached.wait(JOIN)
    renewal.stop()  # too late: the holders are moving
    go_on.set()
    _until(renewal.done)
    assert renewal.exception() is None and not renewal.cancelled()
    _until(lambda: holder.job_id == "1001")
    assert fake.jobs["1001"].state == "RUNNING" and fake.jobs["1000"].state.startswith("CANCELLED")
    holder.down()
    server.close()


def test_stopping_a_renewal_that_follows_another_leaves_the_others_successor(cluster: Cluster, fake: FakeTransport,
                                                                          monkeypatch: Any):
    """Two tabs renew the same job: the second follows the first; stopping the second cancels nothing."""
    from jupyter_hpcllm.lifecycle import Renewal

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.0)
    server = cluster.up("Qwen3-8B")
    first = Renewal(cluster, "1000")
    reached, go_on = _blocking_at(first, lambda progress: progress.stage is Stage.SUBMITTED)
    first.start()
    assert reached.wait(JOIN)
    second = Renewal(cluster, "1000").start()
    _until(lambda: second.progress is not None)
    assert second.job_id == "1001"  # it follows the first one's successor
    second.stop()
    _until(second.done)
    assert second.cancelled() and fake.renewals["1000"] == "1001" and fake.jobs["1001"].state != "CANCELLED"
    assert list(fake.jobs) == ["1000", "1001"]  # the second never submitted
    go_on.set()
    _until(first.done)
    assert first.exception() is None and fake.jobs["1001"].state == "RUNNING"
    server.close()


def test_a_holder_that_renews_itself_follows_a_renewal_made_elsewhere(cluster: Cluster, fake: FakeTransport,
                                                                     monkeypatch: Any):
    monkeypatch.setattr("jupyter_hpcllm.lifecycle.server.FOLLOW_EVERY", 0.02)
    server = cluster.up("Qwen3-8B")
    holder = cluster.attach("1000")
    holder.renew_automatically(check_every=0.02)  # its own lead time is hours away
    cluster.renew(server, grace=0.2)  # `hpcllm renew 1000` elsewhere
    _until(lambda: holder.job_id == "1001")
    holder.down()
    server.close()


def test_a_follower_keeps_following_past_its_own_estimate_of_the_end_and_after_a_lost_connection(
        cluster: Cluster, fake: FakeTransport, monkeypatch: Any):
    from jupyter_hpcllm.errors import ConnectionLost

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.server.FOLLOW_EVERY", 0.02)
    server = cluster.up("Qwen3-8B")
    holder = cluster.attach("1000")
    holder._ends_at = time.time() - 1  # its estimate says the time is up (an extend, a clock step): Slurm not
    lost: list[str] = []
    follow = cluster.follow

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not lost:
            lost.append("once")
            raise ConnectionLost("the login node went away for a moment")
        return follow(*args, **kwargs)

    cluster.follow = flaky  # type: ignore[method-assign]
    holder.follow_renewals()
    time.sleep(0.2)
    assert "hpcllm-follow-1000" in {thread.name for thread in threading.enumerate()}
    cluster.renew(server, grace=0.5)
    _until(lambda: holder.job_id == "1001")  # the successor it failed to reach once is still followed
    assert lost
    holder.down()
    server.close()


def test_a_second_renewer_never_moves_to_a_successor_the_first_gives_up(cluster: Cluster, fake: FakeTransport):
    """The claimed branch follows only a committed renewal: the first renewer, stopped after its successor
    answered, cancels it; the second (`%hpcllm renew` in another notebook) stays on the old job."""
    from jupyter_hpcllm.errors import HpcllmError
    from jupyter_hpcllm.lifecycle import Renewal

    server = cluster.up("Qwen3-8B")
    other = cluster.attach("1000")
    first = Renewal(cluster, "1000")
    reached, go_on = _blocking_at(first, _answers)
    first.start()
    assert reached.wait(JOIN)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            cluster.renew(other, grace=0)
        except HpcllmError as error:
            errors.append(error)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert other.job_id == "1000"  # it waits for the commit
    first.stop()
    go_on.set()
    thread.join(JOIN)
    _until(first.done)
    assert first.cancelled() and errors and other.job_id == "1000"
    assert fake.jobs["1001"].state.startswith("CANCELLED") and fake.jobs["1000"].state == "RUNNING"
    other.close()
    server.down()


def test_a_lost_answer_to_the_claim_is_the_renewers_own_claim(cluster: Cluster, fake: FakeTransport, monkeypatch: Any):
    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.0)
    server = cluster.up("Qwen3-8B")
    fake.drop("if mkdir", when="after")  # the mkdir runs, its answer is lost; asked again, it is ours
    cluster.renew(server)
    assert server.job_id == "1001" and fake.jobs["1000"].state.startswith("CANCELLED")
    server.down()


def test_a_lost_answer_to_the_commit_is_read_back_not_rolled_back(cluster: Cluster, fake: FakeTransport,
                                                                 monkeypatch: Any):
    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.0)
    server = cluster.up("Qwen3-8B")
    fake.drop("ready.new", when="after", times=2)  # written, both answers lost: the mark is read back
    cluster.renew(server)
    assert server.job_id == "1001" and fake.jobs["1001"].state == "RUNNING"
    assert fake.jobs["1000"].state.startswith("CANCELLED")
    server.down()
