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
import threading
from collections.abc import Callable
from types import TracebackType

from ...errors import ForwardError, HpcllmError

__all__ = ["HandOver", "MuxForward"]

# Has the master relay a socket to host:port: (socket, host, port, timeout) -> the control connection that
# keeps the channel open (OpenSSHTransport._hand_over).
HandOver = Callable[[socket.socket, str, int, float], socket.socket]


class MuxForward:
    """Listen on ``local_host:local_port`` (0: any free port); every accepted connection is handed to the
    master (``hand_over``), which relays it itself. A thread per connection only waits for the end of its
    control connection. Like PortForward: a context manager, idempotent ``close()``."""

    def __init__(self, hand_over: HandOver, host: str, port: int, *, local_host: str = "127.0.0.1",
                 local_port: int = 0, timeout: float = 10.0) -> None:
        self._hand_over = hand_over
        self._host, self._port, self._timeout = host, port, timeout
        self.target = f"{host}:{port}"
        try:
            self._listener = socket.create_server((local_host, local_port), backlog=128)
        except OSError as error:
            raise ForwardError(
                f"Cannot listen on {local_host}:{local_port} for the forward to {self.target}: {error}.",
                "Choose another local port (or 0 for any free one).",
            ) from None
        self.local_host, self.local_port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._controls: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # unexpected failures in the forward's threads
        self.last_refusal: str | None = None  # why the last connection could not be relayed
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"hpcllm-forward-{self.target}",
                                               daemon=True)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return f"{self.local_host}:{self.local_port}"

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if not self._closed.is_set():
                    self._record(ForwardError(f"The forward to {self.target} stopped accepting connections."))
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name=f"hpcllm-relay-{self.target}")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        control: socket.socket | None = None
        try:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                control = self._hand_over(client, self._host, self._port, self._timeout)
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
        except Exception as error:
            self._record(error)
        finally:
            if control is not None:
                with self._lock:
                    self._controls.discard(control)
                control.close()

    def _record(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def raise_if_failed(self) -> None:
        with self._lock:
            first = self.errors[0] if self.errors else None
        if first is not None:
            raise first if isinstance(first, ForwardError) else ForwardError(
                f"The forward to {self.target} failed: {first!r}.") from first

    def close(self, *, raise_errors: bool = False) -> None:
        """Stop listening and end every relayed connection (the master closes them when their control
        connection ends). Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone may not
            self._listener.close()
            with self._lock:
                controls, threads = list(self._controls), list(self._threads)
            for control in controls:
                with contextlib.suppress(OSError):
                    control.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            self._accept_thread.join(timeout=5)
            for thread in threads:
                thread.join(timeout=5)
        if raise_errors:
            self.raise_if_failed()

    def __enter__(self) -> MuxForward:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(raise_errors=kind is None)
