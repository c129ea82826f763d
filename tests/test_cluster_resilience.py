"""A connection left open for days, against the real sshd of the test cluster: the sshd process serving
our connection is killed (a reset) or stopped (a silent drop: no reset is ever sent), and the transport
must notice, fail what was in flight cleanly and carry on with a new connection."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from processes import sshd_pids

from jupyter_hpcllm.edge.ssh import SSHTransport
from jupyter_hpcllm.edge.transport import connect
from jupyter_hpcllm.errors import ConnectError, ConnectionLost, HostKeyError
from jupyter_hpcllm.lifecycle import Cluster, Stage

pytestmark = pytest.mark.cluster

KEEPALIVE = 1.0


def local_port(transport: SSHTransport) -> int:
    """The local TCP port of the transport's connection to sshd."""
    session = transport.session()
    return int(session.sock.getsockname()[1])


def test_a_silent_drop_is_detected_within_two_keepalives(profile, stopped):
    transport = SSHTransport(replace(profile, keepalive=KEEPALIVE))
    try:
        assert transport.run("echo before").stdout == "before\n"
        port = local_port(transport)
        in_flight: list[BaseException] = []

        def long_command() -> None:
            try:
                transport.run("sleep 50", timeout=60)
            except BaseException as error:
                in_flight.append(error)

        runner = threading.Thread(target=long_command)
        runner.start()
        time.sleep(0.3)
        pids = sshd_pids(port)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # no FIN, no RST: the connection just goes silent
        stopped.extend(pids)
        dropped = time.monotonic()
        while transport.alive and time.monotonic() - dropped < 10:
            time.sleep(0.05)
        detected = time.monotonic() - dropped
        assert not transport.alive
        assert detected <= 2 * KEEPALIVE + 0.5, f"the drop took {detected:.1f} s to notice"
        runner.join(5)
        assert not runner.is_alive() and len(in_flight) == 1 and isinstance(in_flight[0], ConnectionLost)
        # the next command goes over a new connection, from another sshd process
        assert transport.run("echo after").stdout == "after\n"
        assert local_port(transport) != port
    finally:
        transport.close()


def test_a_killed_sshd_fails_the_command_in_flight_and_the_next_one_reconnects(transport):
    assert transport.run("true").exit_status == 0
    port = local_port(transport)
    failures: list[BaseException] = []

    def long_command() -> None:
        try:
            transport.run("sleep 50", timeout=60)
        except BaseException as error:
            failures.append(error)

    runner = threading.Thread(target=long_command)
    runner.start()
    time.sleep(0.3)
    for pid in sshd_pids(port):
        os.kill(pid, signal.SIGKILL)
    runner.join(10)
    assert not runner.is_alive() and isinstance(failures[0], ConnectionLost)
    assert "the next command connects anew" in str(failures[0])
    assert transport.run("echo again").stdout == "again\n"


def test_a_stream_through_the_forward_survives_a_killed_sshd(profile_with, no_leftover_jobs):
    import openai

    with Cluster(profile_with(delay=0)) as cluster:
        server = cluster.up("Qwen3-8B", gpus=1, timeout=120)
        try:
            client = server.client(max_retries=0, timeout=30)
            address = server.base_url
            stream = client.chat.completions.create(
                model=server.model, stream=True, messages=[{"role": "user", "content": "/bench 200000"}])
            chunks = iter(stream)
            for _ in range(20):
                next(chunks)
            killed = time.monotonic()
            for pid in sshd_pids(local_port(cluster.transport)):  # type: ignore[arg-type]
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(Exception) as broken:
                for _ in chunks:
                    pass
            assert time.monotonic() - killed < 10, "the stream in flight hung instead of failing"
            assert not isinstance(broken.value, (AssertionError, StopIteration))
            # the next request succeeds with no user action, at the same local address
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert [m.id for m in client.models.list()] == [server.model]
                    break
                except openai.APIError:
                    assert time.monotonic() < deadline, "the forward did not recover within 10 s"
                    time.sleep(0.2)
            assert server.base_url == address
        finally:
            cluster.cancel(server.job_id)
            server.close()


def test_an_interrupt_right_after_sbatch_on_a_dead_connection_leaves_no_job(profile_with, stopped,
                                                                             no_leftover_jobs):
    with Cluster(replace(profile_with(delay=60), keepalive=15.0)) as cluster:
        submitted = threading.Event()
        handle = cluster.launch("Qwen3-8B", gpus=1,
                                on_progress=lambda p: submitted.set() if p.stage is Stage.SUBMITTED else None)
        assert submitted.wait(60)
        pids = sshd_pids(local_port(cluster.transport))  # type: ignore[arg-type]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        stopped.extend(pids)
        handle.stop()  # what Ctrl-C in `up` does
        assert handle.freed is True
        # freed over a new connection, not by waiting for the dead one's keepalives (2 × 15 s) to end it
        assert not handle.join(0)
        job = handle.job_id
        other = connect(cluster.profile)
        try:
            out = other.run(f"squeue -h -j {job} -o %T").stdout.strip()
        finally:
            other.close()
        assert out in ("", "COMPLETING", "CANCELLED"), out


@pytest.mark.parametrize("failure", ["refused", "host key", "auth"])
def test_failed_connections_leave_no_thread_and_no_socket(profile, tmp_path: Path, failure: str):
    if failure == "refused":
        broken = replace(profile, port=1)  # nothing listens there
        error: type[Exception] = ConnectError
    elif failure == "host key":
        (tmp_path / "known_hosts").write_text("")
        broken, error = replace(profile, known_hosts=str(tmp_path / "known_hosts")), HostKeyError
    else:
        other = tmp_path / "not_authorized"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        from jupyter_hpcllm.errors import AuthenticationError

        broken, error = replace(profile, identity_file=str(other)), AuthenticationError

    def counts() -> tuple[int, int]:
        gc.collect()  # what earlier tests left to the garbage collector goes now, not during the count
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    SSHTransport(broken).close()  # imports done, caches warm
    with pytest.raises(error):
        SSHTransport(broken).connect()
    time.sleep(0.2)
    before = counts()
    for _ in range(10):
        transport = SSHTransport(broken)
        with pytest.raises(error):
            transport.connect()
    time.sleep(0.5)  # paramiko's threads end on their own clock
    after = counts()
    # Ten refused connections: a leak would add ten threads or sockets. (Fewer is fine: something of an
    # earlier test may close meanwhile; one or two more may be another thread's socket of the moment.)
    assert after[0] <= before[0] and after[1] <= before[1] + 2, f"threads and fds before {before}, after {after}"


def test_a_submission_runs_sbatch_at_most_once_per_token(profile_with, no_leftover_jobs):
    import secrets

    from jupyter_hpcllm.edge.slurm import parse_queue, parse_sbatch, queue_command, submit_command

    with Cluster(profile_with(delay=60)) as cluster:
        plan = cluster.plan("Qwen3-8B", gpus=1)
        token = secrets.token_hex(6)
        command = submit_command(token, f"{plan.spec.comment};submission={token}", len(plan.script.encode()))
        first = parse_sbatch(cluster.transport.run(command, stdin=plan.script).stdout)
        try:
            # what a retry after a lost answer runs: the same command answers with the same job
            again = parse_sbatch(cluster.transport.run(command, stdin=plan.script).stdout)
            assert again == first
            rows = parse_queue(cluster.transport.run(queue_command(plan.job_name)).stdout)
            assert [r.job_id for r in rows if r.comment_field("submission") == token] == [first]
            # half a script (the connection died while sending it): nothing submitted, the claim given up
            other = secrets.token_hex(6)
            half = submit_command(other, f"{plan.spec.comment};submission={other}", len(plan.script.encode()))
            broken = cluster.transport.run(half, stdin=plan.script[: len(plan.script) // 2], check=False)
            assert broken.exit_status == 76 and "arrived incomplete" in broken.stderr
            assert cluster.transport.run(f"ls -a .hpcllm/jobs | grep -c {other} || true").stdout.strip() == "0"
            whole = parse_sbatch(cluster.transport.run(half, stdin=plan.script).stdout)  # the retry submits
            cluster.cancel(whole)
        finally:
            cluster.cancel(first)
