"""Waiting for a server, without a cluster: the pure `step` and `wait_for_server` with fake I/O and clock."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from jupyter_hpcllm.edge.fake import VLLM_MAX_MODEL_LEN_ERROR
from jupyter_hpcllm.edge.slurm import JobRow, JobState, Probe
from jupyter_hpcllm.errors import JobFailed, ServerNotReady
from jupyter_hpcllm.lifecycle.progress import Stage
from jupyter_hpcllm.lifecycle.waiting import (
    Endpoint,
    WaitState,
    api_answers,
    drop_stale,
    log_tail,
    step,
    tick,
    wait_for_server,
)

JOB = "42"
START = "2025-01-01T10:00:00"  # squeue's %S once the job runs


def row(state: str = "RUNNING", *, node: str = "gpu01", reason: str = "None", start: str = START) -> JobRow:
    pending = state.startswith("PENDING")
    return JobRow(JOB, "hpcllm-m-1234", JobState.parse(state), state, "" if pending else node, "3:59:00", reason,
                  start, "hpcllm;model=m;engine=vllm", "gpu:a100:1", "0:10")


def server(node: str = "gpu01", port: int = 20001, started: str = START + "+00:00") -> dict[str, object]:
    return {"job_id": JOB, "node": node, "port": port, "model": "m", "engine": "vllm", "started": started}


def probe(job_row: JobRow | None = None, *, queue: bool = True, srv: dict[str, object] | None = None,
          exit_code: int | None = None, log: str = "", slurm_log: str = "") -> Probe:
    return Probe(job_row if queue else None, queue, srv, exit_code, log, slurm_log)


def shards(done: int, total: int = 3) -> str:
    return f"\rLoading safetensors checkpoint shards: {100 * done // total}% Completed | {done}/{total} [00:01<00:00]"


# --- step: pure ---------------------------------------------------------------------------------------


def test_first_observation_without_the_queue_asks_for_the_queue():
    result = step(WaitState(JOB, started=0.0, next_queue=5.0), probe(queue=False), now=1.0)
    assert result.state.next_queue == 1.0 and result.events == () and result.failure is None


def test_pending_is_reported_once_per_reason_and_expected_start():
    state = WaitState(JOB, started=0.0)
    first = step(state, probe(row("PENDING", reason="Priority", start="2025-01-01T12:00:00")), now=1.0)
    assert [e.stage for e in first.events] == [Stage.PENDING]
    event = first.events[0]
    assert event.reason == "Priority" and event.expected_start == "2025-01-01T12:00:00"
    assert event.message == "Job 42 is pending (waiting for Priority, expected to start 2025-01-01 12:00:00)."
    assert event.elapsed == 1.0 and first.sleep == pytest.approx(0.2) and first.state.next_queue == 1.2
    again = step(first.state, probe(row("PENDING", reason="Priority", start="2025-01-01T12:00:00")), now=2.0)
    assert again.events == ()
    moved = step(again.state, probe(row("PENDING", reason="Resources", start="2025-01-01T12:00:00")), now=3.0)
    assert [e.reason for e in moved.events] == ["Resources"]
    unknown = step(moved.state, probe(row("PENDING", reason="None", start="")), now=4.0)
    assert unknown.events[0].message == "Job 42 is pending (about to be scheduled)."
    assert unknown.events[0].expected_start is None


def test_polling_slows_down_the_longer_a_phase_lasts():
    assert tick(0, 10) == 0.2 and tick(50, 10) == 5 and tick(500, 10) == 10 and tick(500, 1) == 1
    state = step(WaitState(JOB, 0.0), probe(row("PENDING")), now=0.0).state
    assert step(state, probe(row("PENDING")), now=50.0).sleep == 5.0
    assert step(state, probe(row("PENDING")), now=900.0).sleep == 10.0


def test_probes_between_queue_checks_do_not_put_off_the_next_one():
    first = step(WaitState(JOB, 0.0), probe(row("PENDING")), now=0.0)
    assert first.state.next_queue == pytest.approx(0.2)
    early = step(first.state, probe(queue=False), now=0.1)  # a sleep that returned early, or a no-op one
    assert early.state.next_queue == pytest.approx(0.2)


def test_pending_ignores_files_left_by_an_earlier_run():
    result = step(WaitState(JOB, 0.0), probe(row("PENDING"), srv=server(), exit_code=143, log=shards(3)), now=1.0)
    assert result.failure is None and result.connect is None and not result.check_ready
    assert [e.stage for e in result.events] == [Stage.PENDING]


def test_running_then_loading_with_shards():
    state = WaitState(JOB, 0.0)
    running = step(state, probe(row()), now=1.0)
    assert [(e.stage, e.node) for e in running.events] == [(Stage.RUNNING, "gpu01")]
    assert running.events[0].message == "Job 42 is running on gpu01."
    assert running.connect is None and not running.check_ready and running.state.next_queue == 4.0
    quiet = step(running.state, probe(row()), now=2.0)
    assert quiet.events == () and quiet.state.next_queue == 5.0  # running is reported once
    loading = step(quiet.state, probe(row(), queue=False, srv=server()), now=3.0)
    assert [(e.stage, e.shards) for e in loading.events] == [(Stage.LOADING, None)]
    assert loading.connect == Endpoint("gpu01", 20001, START + "+00:00", "m", "vllm") and loading.check_ready
    assert loading.state.next_queue == 5.0  # not queue-checked: unchanged
    one = step(loading.state, probe(queue=False, srv=server(), log="engine up\n" + shards(1)), now=4.0)
    assert [(e.stage, e.shards) for e in one.events] == [(Stage.LOADING, (1, 3))]
    assert one.events[0].message == "vllm is starting on gpu01: weights 1/3."
    assert one.connect is None and one.check_ready  # same engine run: no new forward
    same = step(one.state, probe(queue=False, srv=server(), log=shards(1)), now=5.0)
    assert same.events == () and same.check_ready


def test_a_server_file_that_is_not_ours_is_waited_past():
    bad = {**server(), "port": "eighty"}
    result = step(step(WaitState(JOB, 0.0), probe(row()), now=0.0).state, probe(row(), srv=bad), now=1.0)
    assert result.connect is None and not result.check_ready and result.failure is None


def test_stale_job_files_are_ignored():
    old = server(started="2024-12-31T09:00:00+00:00")  # before this job started: an earlier job with the same id
    result = step(WaitState(JOB, 0.0), probe(row(), srv=old, exit_code=1, log=VLLM_MAX_MODEL_LEN_ERROR), now=1.0)
    assert result.failure is None and result.connect is None
    assert [e.stage for e in result.events] == [Stage.RUNNING]
    fresh = server(started="2025-01-01T09:59:57+00:00")  # within the 5 s clock skew allowed
    assert drop_stale(probe(row(), srv=fresh, exit_code=1), row()).exit_code == 1
    assert drop_stale(probe(row(), srv=server(started="garbage-date")), row()).server is not None
    assert drop_stale(probe(row(start=""), srv=old), row(start="")).server is not None


def test_an_exit_code_without_the_queue_line_asks_the_queue_first():
    state = step(WaitState(JOB, 0.0), probe(row()), now=0.0).state
    result = step(state, probe(queue=False, srv=server(), exit_code=143), now=1.0)
    assert result.failure is None and result.sleep == 0 and result.state.next_queue == 1.0
    cancelled = step(result.state, probe(row("CANCELLED by 123"), srv=server(), exit_code=143), now=1.0)
    assert isinstance(cancelled.failure, JobFailed)
    assert "Job 42 was cancelled (CANCELLED by 123) before the server was ready" in str(cancelled.failure)
    still_running = step(result.state, probe(row(), srv=server(), exit_code=2, log="boom\n"), now=1.0)
    assert isinstance(still_running.failure, JobFailed)
    assert "exited with code 2 while starting" in str(still_running.failure)
    assert still_running.failure.log_tail == "boom"


@pytest.mark.parametrize(("observed", "expected"), [
    (probe(None), "Job 42 is no longer known to Slurm"),
    (probe(row("COMPLETED")), "Job 42 ended (COMPLETED) before the server was ready"),
    (probe(row("TIMEOUT"), srv=server(), exit_code=143), "reached its time limit"),
    (probe(row("FAILED"), srv=server(), exit_code=137), "stopped by a signal (exit code 137)"),
    (probe(row("FAILED"), srv=server(), exit_code=1, log="INFO loading\n" + VLLM_MAX_MODEL_LEN_ERROR),
     "exited with code 1 while starting: the model's full context does not fit in GPU memory; vllm says the "
     "largest that fits is 15344 tokens. Fix: retry with -- --max-model-len 15344"),
])
def test_why_a_job_failed(observed: Probe, expected: str):
    result = step(WaitState(JOB, 0.0), observed, now=1.0)
    assert isinstance(result.failure, JobFailed) and expected in str(result.failure)
    assert result.failure.job_id == JOB


def test_an_exit_code_while_slurm_completes_the_job_waits_for_its_final_state():
    state = WaitState(JOB, started=0.0, row=row(), phase="running")
    completing = step(state, probe(row("COMPLETING"), exit_code=143), now=10.0)
    assert completing.failure is None and completing.state.next_queue == 10.0 and completing.sleep > 0
    later = step(completing.state, probe(row("COMPLETING"), exit_code=143), now=15.0)
    assert later.failure is None
    cancelled = step(later.state, probe(row("CANCELLED by 1001"), exit_code=143), now=16.0)
    assert cancelled.failure is not None and "was cancelled (CANCELLED by 1001)" in str(cancelled.failure)
    # Bounded: a job that stays COMPLETING is explained from its exit code after COMPLETING_WAIT seconds.
    stuck = step(later.state, probe(row("COMPLETING"), exit_code=143), now=21.0)
    assert stuck.failure is not None and "stopped by a signal (exit code 143)" in str(stuck.failure)


def test_a_job_that_ends_while_pending():
    state = step(WaitState(JOB, 0.0), probe(row("PENDING")), now=0.0).state
    failure = step(state, probe(row("CANCELLED")), now=1.0).failure
    assert isinstance(failure, JobFailed) and failure.state == "CANCELLED"
    gone = step(state, probe(None), now=1.0).failure
    assert isinstance(gone, JobFailed) and gone.state == "gone from the queue"


def test_the_slurm_log_is_the_tail_when_the_engine_log_is_empty():
    failure = step(WaitState(JOB, 0.0), probe(row("FAILED"), slurm_log="hpcllm: no free port on gpu01\n"), 1.0).failure
    assert isinstance(failure, JobFailed) and failure.log_tail == "hpcllm: no free port on gpu01"


def test_log_tail_keeps_the_last_state_of_progress_lines():
    text = "a\r\nstart\n" + shards(1) + shards(2) + shards(3) + "\n\n" + "\n".join(f"line {i}" for i in range(30))
    tail = log_tail(text, lines=3)
    assert tail == "line 27\nline 28\nline 29"
    assert log_tail("x\n" + shards(1) + shards(3) + "\n").splitlines()[-1].endswith("| 3/3 [00:01<00:00]")


def test_a_requeue_forgets_the_engine_run_and_follows_the_new_one():
    state = step(WaitState(JOB, 0.0), probe(row(), srv=server()), now=0.0).state
    assert state.endpoint is not None
    requeued = step(state, probe(row("PENDING", reason="BeginTime"), srv=server(), exit_code=143), now=1.0)
    assert requeued.state.endpoint is None and [e.stage for e in requeued.events] == [Stage.PENDING]
    new = server(node="gpu02", port=20002, started="2025-01-01T10:05:00+00:00")
    again = step(requeued.state, probe(row(node="gpu02", start="2025-01-01T10:05:00"), srv=new), now=2.0)
    assert [(e.stage, e.node) for e in again.events] == [(Stage.RUNNING, "gpu02"), (Stage.LOADING, "gpu02")]
    assert again.connect is not None and (again.connect.node, again.connect.port) == ("gpu02", 20002)


def test_a_new_engine_run_seen_between_two_queue_checks_is_connected_to():
    state = step(WaitState(JOB, 0.0), probe(row(), srv=server()), now=0.0).state
    restarted = server(node="gpu02", port=20002, started="2025-01-01T10:05:00+00:00")
    result = step(state, probe(queue=False, srv=restarted, log=shards(1)), now=1.0)
    assert result.connect is not None and (result.connect.node, result.connect.port) == ("gpu02", 20002)
    assert [(e.stage, e.node, e.shards) for e in result.events] == [(Stage.LOADING, "gpu02", (1, 3))]


# --- wait_for_server: the loop with fake I/O ---------------------------------------------------------------


class Clock:
    """Time passes only when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Tunnel:
    endpoint: Endpoint
    address: str
    closed: bool = False

    def raise_if_failed(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class World:
    """Observations in order; a probe without the queue does not show the queue line."""

    def __init__(self, *probes: Probe, ready_after: int = 1) -> None:
        self.probes = list(probes)
        self.queue_flags: list[bool] = []
        self.tunnels: list[Tunnel] = []
        self.answered: list[tuple[str, str]] = []
        self.ready_after = ready_after

    def observe(self, job_id: str, queue: bool) -> Probe:
        assert job_id == JOB
        self.queue_flags.append(queue)
        seen = self.probes.pop(0) if len(self.probes) > 1 else self.probes[0]
        return seen if queue else replace(seen, row=None, queue_checked=False)

    def connect(self, endpoint: Endpoint) -> tuple[Tunnel, str]:
        tunnel = Tunnel(endpoint, f"127.0.0.1:{30000 + len(self.tunnels)}")
        self.tunnels.append(tunnel)
        return tunnel, f"key-{endpoint.node}-{endpoint.port}"

    def answers(self, address: str, key: str) -> bool:
        self.answered.append((address, key))
        return len(self.answered) >= self.ready_after


def wait(world: World, clock: Clock, *, timeout: float | None = None, submitted: bool = True,
         seen: list[Any] | None = None, **kwargs: Any) -> Any:
    return wait_for_server(JOB, observe=world.observe, connect=world.connect, answers=world.answers,
                           report=(seen if seen is not None else []).append, timeout=timeout, submitted=submitted,
                           clock=clock, sleep=clock.sleep, **kwargs)


def test_every_stage_until_ready():
    clock, seen = Clock(), []
    world = World(probe(row("PENDING", reason="Priority")), probe(row("PENDING", reason="Priority")),
                  probe(row()), probe(row(), srv=server(), log="start\n"),
                  probe(row(), srv=server(), log=shards(1)), probe(row(), srv=server(), log=shards(3)),
                  probe(row(), srv=server(), log=shards(3) + "\nApplication startup complete.\n"), ready_after=3)
    ready = wait(world, clock, seen=seen)
    assert [(p.stage, p.shards) for p in seen] == [
        (Stage.PENDING, None), (Stage.RUNNING, None), (Stage.LOADING, None), (Stage.LOADING, (1, 3)),
        (Stage.LOADING, (3, 3)), (Stage.READY, None)]
    assert seen[-1].message == "Ready: m on gpu01 (http://127.0.0.1:30000/v1)."
    assert seen[-1].elapsed == clock.now
    assert ready.endpoint == Endpoint("gpu01", 20001, START + "+00:00", "m", "vllm")
    assert ready.api_key == "key-gpu01-20001" and ready.forward is world.tunnels[0] and not ready.forward.closed
    assert len(world.tunnels) == 1  # connected once for one engine run
    assert world.answered == [("127.0.0.1:30000", "key-gpu01-20001")] * 3
    assert world.queue_flags[:3] == [True, True, True]  # the queue is watched while pending
    assert False in world.queue_flags  # ...but not on every probe while loading


def test_a_sleep_shorter_than_asked_still_gets_to_the_queue():
    readings = iter(range(10**6))
    world = World(probe(row("PENDING")), probe(row()), probe(row(), srv=server()))
    ready = wait_for_server(JOB, observe=world.observe, connect=world.connect, answers=world.answers,
                            report=lambda p: None, timeout=60, submitted=True,
                            clock=lambda: next(readings) / 100, sleep=lambda s: None)  # time moves, sleep doesn't
    assert ready.endpoint.node == "gpu01" and world.queue_flags.count(True) >= 2


def test_progress_time_counts_from_the_given_start():
    clock, seen = Clock(), []
    clock.now = 100.0
    wait(World(probe(row(), srv=server())), clock, seen=seen, started=90.0)
    assert (seen[0].stage, seen[0].elapsed) == (Stage.RUNNING, 10.0)


@pytest.mark.parametrize(("submitted", "hint"), [
    (True, "It was cancelled; retry with a longer timeout."),
    (False, "It keeps running: attach to it again later, or stop it with `hpcllm down 42`."),
])
def test_timeout(submitted: bool, hint: str):
    clock = Clock()
    world = World(probe(row(), srv=server()), ready_after=10**9)
    with pytest.raises(ServerNotReady) as raised:
        wait(world, clock, timeout=30, submitted=submitted)
    assert raised.value.message == "Job 42 was not ready after 30 s." and raised.value.hint == hint
    assert raised.value.job_id == JOB and 30 < clock.now < 32
    assert world.tunnels[0].closed


def test_an_exit_code_is_checked_against_the_queue_before_failing():
    world = World(probe(row(), srv=server()),
                  probe(row(), srv=server(), exit_code=1, log=VLLM_MAX_MODEL_LEN_ERROR),
                  probe(row("FAILED"), srv=server(), exit_code=1, log=VLLM_MAX_MODEL_LEN_ERROR), ready_after=10**9)
    with pytest.raises(JobFailed) as raised:
        wait(world, Clock())
    assert world.queue_flags == [True, False, True]
    assert raised.value.state == "FAILED"
    assert "exited with code 1 while starting: the model's full context does not fit" in raised.value.message
    assert raised.value.hint == "Fix: retry with -- --max-model-len 15344 (or more GPUs: --gpus)."
    assert "estimated maximum model length is 15344" in raised.value.log_tail
    assert world.tunnels[0].closed  # the forward opened while loading is closed when the wait fails


def test_a_job_that_ends_while_pending_fails_the_wait():
    world = World(probe(row("PENDING")), probe(row("PENDING")), probe(None))
    with pytest.raises(JobFailed, match="no longer known to Slurm"):
        wait(world, Clock())
    assert world.tunnels == [] and world.answered == []


def test_a_cancelled_job_says_so():
    seen: list[Any] = []
    world = World(probe(row("PENDING")), probe(row("CANCELLED by 123")))
    with pytest.raises(JobFailed) as raised:
        wait(world, Clock(), seen=seen)
    assert "was cancelled (CANCELLED by 123)" in str(raised.value) and "scancel" in raised.value.hint
    assert [p.stage for p in seen] == [Stage.PENDING]


def test_a_requeue_onto_another_node_is_followed():
    clock, seen = Clock(), []
    new = server(node="gpu02", port=20002, started="2025-01-01T10:05:00+00:00")
    world = World(probe(row(), srv=server()),
                  probe(row("PENDING", reason="BeginTime"), srv=server(), exit_code=143),  # seen without the queue
                  probe(row("PENDING", reason="BeginTime"), srv=server(), exit_code=143),
                  probe(row(node="gpu02", start="2025-01-01T10:05:00"), srv=new), ready_after=2)
    ready = wait(world, clock, seen=seen)
    assert world.queue_flags == [True, False, True, True]
    assert [t.endpoint.node for t in world.tunnels] == ["gpu01", "gpu02"]
    assert world.tunnels[0].closed and not world.tunnels[1].closed
    assert (ready.endpoint.node, ready.endpoint.port, ready.api_key) == ("gpu02", 20002, "key-gpu02-20002")
    assert ready.forward is world.tunnels[1]
    assert world.answered == [("127.0.0.1:30000", "key-gpu01-20001"), ("127.0.0.1:30001", "key-gpu02-20002")]
    assert [(p.stage, p.node) for p in seen] == [
        (Stage.RUNNING, "gpu01"), (Stage.LOADING, "gpu01"), (Stage.PENDING, None), (Stage.RUNNING, "gpu02"),
        (Stage.LOADING, "gpu02"), (Stage.READY, "gpu02")]


def test_the_forward_is_closed_whatever_ends_the_wait():
    world = World(probe(row(), srv=server()), ready_after=10**9)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_for_server(JOB, observe=world.observe, connect=world.connect, answers=world.answers,
                        report=lambda p: None, timeout=None, submitted=True, clock=Clock(), sleep=interrupted)
    assert len(world.tunnels) == 1 and world.tunnels[0].closed


def test_a_connect_that_fails_leaves_no_forward_open():
    world = World(probe(row(), srv=server()))

    def refused(endpoint: Endpoint) -> tuple[Tunnel, str]:
        raise OSError("refused")

    with pytest.raises(OSError, match="refused"):
        wait_for_server(JOB, observe=world.observe, connect=refused, answers=world.answers,
                        report=lambda p: None, timeout=None, submitted=True, clock=Clock(), sleep=Clock().sleep)
    assert world.answered == []


def test_api_answers_is_false_when_nothing_listens():
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert api_answers(f"127.0.0.1:{port}", "key") is False


def test_a_failure_is_not_explained_by_an_earlier_runs_files():
    """The job ended; the exit code and log on disk are from the run before its requeue: not quoted."""
    old = server(started="2025-01-01T09:00:00+00:00")  # written an hour before this run started
    result = step(WaitState(JOB, 0.0), probe(row("FAILED"), srv=old, exit_code=1, log=VLLM_MAX_MODEL_LEN_ERROR),
                  now=1.0)
    assert isinstance(result.failure, JobFailed)
    assert "max-model-len" not in str(result.failure) and "exited with code" not in str(result.failure)
    assert "Job 42 ended (FAILED)" in str(result.failure)
