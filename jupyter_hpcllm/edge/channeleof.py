"""Half-closing a paramiko channel without losing the whole connection.

paramiko's ``Channel.shutdown_write`` marks the EOF as sent under the channel's lock but writes it after
letting go. When the command has just ended, the transport's thread may answer the server's CLOSE in that
moment, so the server sees our CLOSE and then an EOF for a channel it has freed. OpenSSH's sshd treats
that as a protocol error and drops the connection ("ieof packet referred to nonexistent channel"), and
every other command and forward on it breaks. Seen with six commands at once on one connection, about
one run in twenty. Here the EOF is written while the lock is held, so either it goes out before the
CLOSE, or the channel is already closed and nothing is sent.
"""

from __future__ import annotations

import time
from typing import Any

# How long to wait for a key exchange in progress (which holds every other message back) to finish.
_KEY_EXCHANGE_WAIT = 30.0


def send_eof(channel: Any, wait: float = _KEY_EXCHANGE_WAIT) -> None:
    """Tell the server no more data comes on ``channel``, unless the channel is already closed."""
    transport = channel.get_transport()
    deadline = time.monotonic() + wait
    while True:
        # Lock order: the channel's, then the transport's clear-to-send (paramiko never takes them the
        # other way round). The lock is never held while waiting on a key exchange, whose messages the
        # transport's thread may need the channel's lock to get past.
        transport.clear_to_send.wait(0.1)
        with channel.lock:
            if channel.closed or channel.eof_sent or not transport.is_active():
                return
            with transport.clear_to_send_lock:
                if transport.clear_to_send.is_set():
                    message = channel._send_eof()
                    if message is not None:
                        transport._send_message(message)
                    return
        if time.monotonic() > deadline:
            channel.shutdown_write()  # paramiko's own way, with its race, rather than never
            return
