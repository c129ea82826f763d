"""A local port forwarded through the ControlMaster, one connection at a time handed over to it.

Unlike ``edge.forward.PortForward``, which copies every byte between the local socket and a channel,
``MuxForward`` gives each accepted socket itself to the master (``OpenSSHTransport._hand_over``:
MUX_C_NEW_STDIO_FWD), which relays it as fast as ``ssh -L``; a thread per connection only waits for the
end of its control connection. Unlike a forward of the master's own (``ssh -O forward``), it asks the
master in use at each connection, so it outlives a master that died and was replaced.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from ...errors import HpcllmError
from ..listener import LocalListener

__all__ = ["HandOver", "MuxForward"]

# Has the master relay a socket to host:port: (socket, host, port, timeout) -> the control connection that
# keeps the channel open (OpenSSHTransport._hand_over).
HandOver = Callable[[socket.socket, str, int, float], socket.socket]


class MuxForward(LocalListener):
    """Listen on ``local_host:local_port`` (0: any free port); every accepted connection is handed to the
    master (``hand_over``), which relays it itself. A thread per connection only waits for the end of its
    control connection."""

    def __init__(self, hand_over: HandOver, host: str, port: int, *, local_host: str = "127.0.0.1",
                 local_port: int = 0, timeout: float = 10.0) -> None:
        self._hand_over = hand_over
        self._host, self._port, self._timeout = host, port, timeout
        self._controls: set[socket.socket] = set()
        super().__init__(f"{host}:{port}", local_host=local_host, local_port=local_port)

    def retarget(self, host: str, port: int) -> None:
        """Hand new connections over for host:port from now on (same local address)."""
        with self._lock:
            self._host, self._port = host, port
            self.target = f"{host}:{port}"

    def _serve(self, client: socket.socket) -> None:
        control: socket.socket | None = None
        try:
            try:
                with self._lock:
                    host, port = self._host, self._port
                control = self._hand_over(client, host, port, self._timeout)
                self.last_refusal = None  # reachable again: an old refusal would mislead an error message
            except HpcllmError as error:
                # Nothing listens there (yet, or any more): the client sees a closed connection, as it
                # would see a refused one. Normal while the engine loads, so not a failure of the forward.
                self.last_refusal = f"Cannot open a channel to {self.target}: {error}."
                return
            finally:
                client.close()  # the master relays its own copy; ours would keep the connection open
            with self._lock:
                if self._closed.is_set():
                    return
                self._controls.add(control)
            # The master closes the control connection when the channel ends (or when it exits).
            with contextlib.suppress(OSError):
                while control.recv(4096):
                    pass
        finally:
            if control is not None:
                with self._lock:
                    self._controls.discard(control)
                control.close()

    def _interrupt(self) -> None:
        # The master closes each relayed connection when its control connection ends.
        with self._lock:
            controls = list(self._controls)
        for control in controls:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it

    def __enter__(self) -> MuxForward:
        return self
