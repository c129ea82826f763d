"""The heartbeat that closes a silent SSH connection, against fake transports (no cluster): what keeps a
connection alive (replies, or anything at all arriving), what kills it (silence for two intervals, a
send that fails), a send that blocks, and a paramiko without the private internals it prefers. One
test (marked `cluster`) runs the portable heartbeat on a real connection and stops its sshd."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from paramiko import Message, SSHException
from paramiko.common import MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS
from processes import sshd_pids

from jupyter_hpcllm.edge import heartbeat as heartbeat_module
from jupyter_hpcllm.edge.heartbeat import Heartbeat

INTERVAL = 0.3


class PortableTransport:
    """A transport offering only what paramiko documents: is_active, close, global_request (which
    returns once the server answered, or once the transport closed). ``answers``: how many probes the
    server answers before it goes silent (None: all). ``packetizer.arrivals``: sshtuning's count of
    what arrived."""

    def __init__(self, answers: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.active = True
        self.answers = answers
        self.clock = clock
        self.probes = 0
        self.silent_since: float | None = clock() if answers == 0 else None
        self.closed = threading.Event()
        self.packetizer = SimpleNamespace(arrivals=0)
        self.send_error: Exception | None = None
        self.send_blocks = False

    def is_active(self) -> bool:
        return self.active

    def close(self) -> None:
        self.active = False
        self.closed.set()

    def _sent(self) -> bool:
        """Count a probe (blocking or failing as told); whether the server answers it."""
        self.probes += 1
        if self.send_blocks:  # as paramiko's writer on a full socket: stuck until the packetizer closes
            self.closed.wait()
        if self.send_error is not None:
            raise self.send_error
        if self.answers is not None and self.probes > self.answers:
            return False
        if self.answers is not None and self.probes == self.answers:
            self.silent_since = self.clock()  # (just before the reply goes: the worst moment to go silent)
        return self.active

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> Message | None:
        assert (kind, wait) == ("keepalive@openssh.com", True)
        if not self._sent():
            self.closed.wait()  # no answer: paramiko waits until the transport dies
        time.sleep(0.005)
        return None  # sshd's REQUEST_FAILURE, or a dead transport: is_active() tells them apart


class PrivateTransport(PortableTransport):
    """Also paramiko's private internals, as paramiko 5 has them: a per-transport handler table through
    which every reply to a global request passes, and ``_send_user_message``."""

    def __init__(self, answers: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(answers, clock)
        self.handled: list[int] = []
        self._handler_table = {MSG_REQUEST_SUCCESS: lambda m: self.handled.append(MSG_REQUEST_SUCCESS),
                               MSG_REQUEST_FAILURE: lambda m: self.handled.append(MSG_REQUEST_FAILURE)}

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> Message | None:
        raise AssertionError("the private way sends with _send_user_message")

    def _send_user_message(self, message: Message) -> None:
        if self._sent():  # the reply comes on the transport's own thread, a moment later
            threading.Timer(0.005, self._handler_table[MSG_REQUEST_FAILURE], args=(Message(),)).start()


def watch(transport: PortableTransport, interval: float = INTERVAL, **options) -> tuple[Heartbeat, list[float]]:
    deaths: list[float] = []
    beat = Heartbeat(transport, interval, lambda: deaths.append(time.monotonic()), **options)  # type: ignore[arg-type]
    return beat, deaths


def wait_closed(transport: PortableTransport, within: float) -> float:
    started = time.monotonic()
    assert transport.closed.wait(within), f"not closed within {within:.2f} s"
    return time.monotonic() - started


@pytest.fixture(params=[PrivateTransport, PortableTransport], ids=["private", "portable"])
def kind(request):
    return request.param


def test_replies_keep_a_connection_alive(kind):
    transport = kind()
    beat, deaths = watch(transport)
    try:
        time.sleep(5 * INTERVAL)
        assert transport.active and not beat.dead and not deaths
        assert beat.replies >= 3 and transport.probes >= 4
        if kind is PrivateTransport:  # paramiko's own handling of the reply still runs
            assert transport.handled.count(MSG_REQUEST_FAILURE) == beat.replies
    finally:
        beat.stop()


class SlowClock:
    """A clock that runs 5 % slow against the sleeps: what a timer waking early looks like (Windows'
    is 15.6 ms coarse). Deadlines must still be kept on the heartbeat's own clock."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self.origin) * 0.95


def test_silence_right_after_a_reply_closes_the_connection_within_two_intervals(kind):
    clock = SlowClock()
    transport = kind(answers=2, clock=clock)
    interval = 0.5
    beat, deaths = watch(transport, interval, clock=clock)
    try:
        wait_closed(transport, 6 * interval)
        assert transport.silent_since is not None
        detected = clock() - transport.silent_since
        assert detected <= 2 * interval + 0.1 * interval, f"closed {detected / interval:.2f} intervals after"
        assert detected >= interval  # not before a probe had its whole interval to be answered
        time.sleep(0.05)
        assert beat.dead and len(deaths) == 1 and not beat._thread.is_alive()
    finally:
        beat.stop()


def test_anything_that_arrives_counts_as_life(kind):
    """A reply queued behind megabytes of a download on a slow link: the data arriving is life."""
    transport = kind(answers=0)
    streaming = threading.Event()
    streaming.set()

    def download() -> None:
        while streaming.is_set() and transport.active:
            transport.packetizer.arrivals += 1
            time.sleep(INTERVAL / 5)

    threading.Thread(target=download, daemon=True).start()
    beat, deaths = watch(transport)
    try:
        time.sleep(5 * INTERVAL)
        assert transport.active and not deaths and transport.probes >= 1
        streaming.clear()  # now nothing arrives any more
        wait_closed(transport, 2 * INTERVAL + 0.2)
        assert beat.dead and len(deaths) == 1
    finally:
        streaming.clear()
        beat.stop()


def test_a_send_that_fails_on_an_active_transport_closes_it(kind):
    transport = kind()
    transport.send_error = SSHException("Key-exchange timed out waiting for key negotiation")
    beat, deaths = watch(transport)
    try:
        wait_closed(transport, INTERVAL + 0.3)  # at the first probe, not after more silence
        time.sleep(0.05)
        assert beat.dead and len(deaths) == 1
    finally:
        beat.stop()


def test_a_send_that_blocks_does_not_stop_the_detection(kind):
    """A full socket buffer (an upload in flight when the network went): the send waits in paramiko's
    writer until the packetizer closes, which closing the transport does."""
    transport = kind()
    transport.send_blocks = True
    before = set(threading.enumerate())  # other tests' connections may have heartbeats of their own
    beat, deaths = watch(transport)
    try:
        wait_closed(transport, 2 * INTERVAL + 0.3)
        time.sleep(0.05)
        assert beat.dead and len(deaths) == 1
        assert transport.probes == 1  # no pile of blocked senders behind the first
        ours = [t for t in set(threading.enumerate()) - before if t.name.startswith("hpcllm-ssh-heartbeat")]
        assert not [t for t in ours if t.is_alive()]
    finally:
        beat.stop()


@pytest.mark.parametrize("damage", ["no handler table", "handler table not a dict", "no reply handler",
                                    "no _send_user_message"])
def test_a_paramiko_without_the_expected_internals_gets_the_portable_heartbeat(damage):
    transport = PortableTransport(answers=3)
    if damage == "handler table not a dict":
        transport._handler_table = [1, 2]  # type: ignore[attr-defined]
    elif damage == "no reply handler":
        transport._handler_table = {MSG_REQUEST_SUCCESS: print}  # type: ignore[attr-defined]
    elif damage == "no _send_user_message":
        transport._handler_table = {MSG_REQUEST_SUCCESS: print, MSG_REQUEST_FAILURE: print}  # type: ignore[attr-defined]
    beat, deaths = watch(transport)  # never raises because of paramiko's internals
    try:
        assert beat.portable
        time.sleep(2.5 * INTERVAL)
        assert transport.active and beat.replies >= 1  # sshd's failure replies count as answers
        wait_closed(transport, 3 * INTERVAL)
        time.sleep(0.05)
        assert beat.dead and len(deaths) == 1
    finally:
        beat.stop()


def test_the_portable_heartbeat_does_not_count_a_dead_transport_as_an_answer():
    transport = PortableTransport()
    beat, deaths = watch(transport)
    try:
        transport.active = False  # global_request then returns None too, but nobody answered
        time.sleep(2 * INTERVAL)
        assert beat.replies == 0 and not deaths and not beat._thread.is_alive()
    finally:
        beat.stop()


def test_stop_ends_the_thread_within_a_second_and_closes_nothing(kind):
    transport = kind()
    transport.send_blocks = True
    beat, deaths = watch(transport, 30.0)
    stopped_at = time.monotonic()
    beat.stop()
    assert not beat._thread.is_alive() and time.monotonic() - stopped_at < 1.0
    assert transport.active and not deaths and not beat.dead
    short, _ = watch(transport, 0.5)
    while transport.probes == 0:  # a probe is now blocked in its send: stop() still returns at once
        time.sleep(0.01)
    stopped_at = time.monotonic()
    short.stop()
    assert not short._thread.is_alive() and time.monotonic() - stopped_at < 1.0
    transport.close()


@pytest.mark.cluster
def test_the_portable_heartbeat_on_a_real_connection(profile, stopped, monkeypatch):
    """sshd's answers to the public global_request keep a real connection alive; a stopped sshd (a
    silent drop) is closed within two intervals."""
    import paramiko

    from jupyter_hpcllm.edge import sshtuning

    monkeypatch.setattr(heartbeat_module, "_private_send", lambda beat: None)
    sock = socket.create_connection((profile.host, profile.port), timeout=10)
    transport = paramiko.Transport(sock, **sshtuning.transport_options())
    sshtuning.tune_transport(transport)
    transport.connect(username=profile.user, pkey=paramiko.Ed25519Key.from_private_key_file(profile.identity_file))
    beat = Heartbeat(transport, INTERVAL)
    try:
        assert beat.portable
        time.sleep(4 * INTERVAL)
        assert transport.is_active() and beat.replies >= 2
        pids = sshd_pids(sock.getsockname()[1])
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        stopped.extend(pids)
        dropped = time.monotonic()
        while transport.is_active() and time.monotonic() - dropped < 5:
            time.sleep(0.01)
        assert not transport.is_active() and beat.dead
        assert time.monotonic() - dropped <= 2 * INTERVAL + 0.15
    finally:
        beat.stop()
        transport.close()
