"""Keepalives that expect a reply, so a connection that died without a reset is noticed.

paramiko's own keepalive (``set_keepalive``) asks for no reply, so it detects nothing: after a laptop
sleeps or a NAT box forgets the flow, every command would wait out its timeout until TCP gives up
(~15 minutes on Linux). A ``Heartbeat`` sends ``keepalive@openssh.com`` with want_reply every
``interval`` seconds, as OpenSSH's ServerAliveInterval does (sshd answers it with a failure reply, which
is all we need), and closes the transport when a request stays unanswered for ``interval`` seconds:
a connection is declared dead at most two intervals after it died. Closing it ends every channel on it
(commands and forwarded requests fail at once instead of hanging) and the next call connects anew.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko

__all__ = ["Heartbeat"]


class Heartbeat:
    """Watch one paramiko transport; ``on_dead()`` runs (once) after it closed a silent one."""

    def __init__(self, transport: paramiko.Transport, interval: float,
                 on_dead: Callable[[], None] = lambda: None, *, clock: Callable[[], float] = time.monotonic) -> None:
        from paramiko.common import MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS

        self._transport = transport
        self.interval = interval
        self._on_dead = on_dead
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._asked_at: float | None = None  # when the unanswered request went out
        self.replies = 0
        self.dead = False
        # Every reply to a global request passes through these handlers (ours, and paramiko's own
        # requests, which are also a sign of life): count it, then let paramiko handle it as before.
        # paramiko keeps the handler table per transport instance: replacing entries here is local to it.
        handlers: dict[int, Callable[[paramiko.Message], None]] = transport._handler_table  # type: ignore[attr-defined]
        for kind in (MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE):
            handlers[kind] = self._replied(handlers[kind])
        self._thread = threading.Thread(target=self._run, name="hpcllm-ssh-heartbeat", daemon=True)
        self._thread.start()

    def _replied(self, handle: Callable[[paramiko.Message], None]) -> Callable[[paramiko.Message], None]:
        def replied(message: paramiko.Message) -> None:
            with self._lock:
                self._asked_at = None
                self.replies += 1
            handle(message)

        return replied

    def _ask(self) -> None:
        from paramiko import Message
        from paramiko.common import cMSG_GLOBAL_REQUEST

        message = Message()
        message.add_byte(cMSG_GLOBAL_REQUEST)
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)  # want_reply: what paramiko's set_keepalive does not ask for
        with self._lock:
            if self._asked_at is None:
                self._asked_at = self._clock()
        self._transport._send_user_message(message)  # type: ignore[attr-defined]  # queues behind a rekey

    def _run(self) -> None:
        # Checks four times per interval, so a missing reply is seen soon after `interval` has passed.
        tick = self.interval / 4
        next_ask = self._clock() + self.interval
        while not self._stop.wait(tick):
            if not self._transport.is_active():
                return
            with self._lock:
                silent = self._asked_at is not None and self._clock() - self._asked_at >= self.interval
            if silent:
                self.dead = True
                self._transport.close()
                self._on_dead()
                return
            if self._clock() >= next_ask:
                next_ask = self._clock() + self.interval
                try:
                    self._ask()
                except Exception:  # the transport closed meanwhile: nothing left to watch
                    return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1)
