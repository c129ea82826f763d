"""Keepalives that expect a reply, so a connection that died without a reset is noticed.

paramiko's own keepalive (``set_keepalive``) asks for no reply, so it detects nothing: after a laptop
sleeps or a NAT box forgets the flow, every command would wait out its timeout until TCP gives up
(~15 minutes on Linux). A ``Heartbeat`` sends ``keepalive@openssh.com`` with want_reply every
``interval`` seconds, as OpenSSH's ServerAliveInterval does (sshd answers it with a failure reply, which
is all we need), and closes the transport when nothing at all arrived for a whole interval after one
went out. Anything counts, not only the reply: OpenSSH (packet.c) resets its count on every packet, and
so must we, or a busy download on a slow link, the reply queued behind megabytes, would be killed.
What arrived is counted by sshtuning's packetizers (``packetizer.arrivals``); without it, replies count.

The bound: the watcher wakes at deadlines ``interval`` apart (exact ones, on its clock; not coarser
ticks). At each, if nothing arrived since the last probe went out, the connection is dead; otherwise a
new probe goes out. A connection that goes silent at time T sees a probe at the first deadline after T
(at most T + interval) and is closed at the next (at most T + 2 × interval).

Closing it ends every channel on it (commands and forwarded requests fail at once instead of hanging)
and the next call connects anew. A probe that cannot be sent on a transport still active means the same.

Probes go out on a short-lived thread of their own: a send can block (the socket's buffer full when the
network went during an upload, a rekey the peer never finishes) and the watcher must still close the
transport, which is also what ends that send (paramiko's writer gives up once its packetizer closes).

Two ways to send a probe, chosen once per transport: paramiko's private ``_send_user_message``, the
replies counted in its per-transport ``_handler_table`` (as paramiko 3.4 to 5 have them); or, if those
are missing or shaped otherwise, the public ``global_request(wait=True)``, which returns when the
server answered (None for sshd's failure reply) or the transport died (``is_active()`` tells which).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

__all__ = ["Heartbeat"]

_REQUEST = "keepalive@openssh.com"


class Heartbeat:
    """Watch one paramiko transport; ``on_dead()`` runs (once) after it closed a silent one.

    ``clock`` is what the deadlines are kept on (waits are real ones, so it must keep real time)."""

    def __init__(self, transport: paramiko.Transport, interval: float,
                 on_dead: Callable[[], None] = lambda: None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self.interval = interval
        self._on_dead = on_dead
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._waiting = False  # a probe went out and nothing arrived since
        self._arrived = 0  # the packetizer's count when it went out
        self._sender: threading.Thread | None = None
        self.replies = 0
        self.dead = False
        packetizer = getattr(transport, "packetizer", None)
        self._arrivals: Callable[[], Any] = lambda: getattr(packetizer, "arrivals", 0)
        private = _private_send(self)
        self.portable = private is None  # the public global_request sends the probes
        self._send = private or self._portable_send
        self._thread = threading.Thread(target=self._run, name="hpcllm-ssh-heartbeat", daemon=True)
        self._thread.start()

    def _answered(self) -> None:
        with self._lock:
            self._waiting = False
            self.replies += 1

    def _portable_send(self) -> bool:
        # Returns None for the REQUEST_FAILURE sshd answers, and also when the transport died.
        self._transport.global_request(_REQUEST, wait=True)
        return bool(self._transport.is_active())

    def _run(self) -> None:
        next_at = self._clock() + self.interval
        while not self._stop.wait(max(0.0, next_at - self._clock())):
            if not self._transport.is_active():
                return  # closed by its owner, or by paramiko: nothing left to watch
            now = self._clock()
            if now < next_at:
                continue  # woke early (a coarse timer): the deadline is on our clock
            arrived = self._arrivals()
            with self._lock:
                silent = self._waiting and arrived == self._arrived
                self._waiting, self._arrived = True, arrived
            if silent:
                self._die()
                return
            next_at = now + self.interval
            self._probe()

    def _probe(self) -> None:
        sender = self._sender
        if sender is not None and sender.is_alive():
            return  # the last probe is still on its way (a full socket buffer, a rekey): no pile of them
        self._sender = threading.Thread(target=self._send_probe, name="hpcllm-ssh-heartbeat-probe", daemon=True)
        self._sender.start()

    def _send_probe(self) -> None:
        try:
            answered = self._send()
        except Exception:
            # e.g. SSHException("Key-exchange timed out") when the peer vanished during a rekey. If the
            # transport still looks active, nothing else would ever close it: every later command would
            # wait on a dead connection instead of reconnecting.
            if self._transport.is_active():
                self._die()
            return
        if answered:
            self._answered()

    def _die(self) -> None:
        with self._lock:
            if self.dead or self._stop.is_set():
                return  # dead already, or stopped by its owner, who closes the transport itself
            self.dead = True
            self._stop.set()
        with contextlib.suppress(Exception):  # best effort: it is dead either way
            self._transport.close()  # ends every channel, and a send blocked in paramiko's writer
        self._on_dead()

    def stop(self) -> None:
        """End the watcher (within a second). A probe blocked in its send ends when the transport closes."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1)


def _private_send(beat: Heartbeat) -> Callable[[], bool] | None:
    """A probe sent with paramiko's private ``_send_user_message`` (queued behind a rekey, no wait for the
    reply), every reply to a global request counted through its ``_handler_table``; None if this
    transport's internals are not what this expects (the portable way is used then)."""
    try:
        from paramiko import Message
        from paramiko.common import MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS, cMSG_GLOBAL_REQUEST

        transport: Any = beat._transport
        handlers = transport._handler_table
        send = transport._send_user_message
        kinds = (MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE)
        if not (isinstance(handlers, dict) and callable(send) and all(callable(handlers.get(k)) for k in kinds)):
            return None
        message = Message()  # built once: paramiko only reads it (asbytes) when sending
        message.add_byte(cMSG_GLOBAL_REQUEST)
        message.add_string(_REQUEST)
        message.add_boolean(True)  # want_reply: what paramiko's set_keepalive does not ask for
    except Exception:
        return None

    def counted(handle: Callable[[paramiko.Message], None]) -> Callable[[paramiko.Message], None]:
        # Every reply passes here (ours, and paramiko's own requests', also a sign of life): count it,
        # then let paramiko handle it as before. The table is per transport: replacing entries is local.
        def replied(reply: paramiko.Message) -> None:
            beat._answered()
            handle(reply)

        return replied

    for kind in kinds:
        handlers[kind] = counted(handlers[kind])

    def ask() -> bool:
        send(message)
        return False  # the reply, if any, comes through the handlers

    return ask
