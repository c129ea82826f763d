"""A local port forwarded to the engine on the compute node, through the login node's SSH connection.

Like fabric's tunnels, a ``PortForward`` is a context manager that tears down cleanly and re-raises
what failed in its threads. Each accepted connection opens its own ``direct-tcpip`` channel (opened
through a factory, so a dropped SSH connection is re-made on the next request).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from ..errors import ForwardError
from .transport import Stream

__all__ = ["PortForward"]

_CHUNK = 65536


class PortForward:
    """Listen on ``local_host:local_port`` (0: any free port) and relay every connection to the target."""

    def __init__(
        self,
        open_channel: Callable[[], Stream],
        target: str,
        *,
        local_host: str = "127.0.0.1",
        local_port: int = 0,
    ) -> None:
        self._open_channel = open_channel
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((local_host, local_port))
        except OSError as error:
            self._listener.close()
            raise ForwardError(
                f"Cannot listen on {local_host}:{local_port} for the forward to {target}: {error}.",
                "Choose another local port (or 0 for any free one).",
            ) from None
        self._listener.listen(64)
        self.local_host, self.local_port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pairs: set[socket.socket] = set()
        self.errors: list[BaseException] = []  # unexpected failures in the relay threads
        self.last_refusal: str | None = None  # why the last connection could not be relayed
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"hpcllm-forward-{target}",
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
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True,
                                      name=f"hpcllm-relay-{self.target}")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
                self._pairs.add(client)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        channel: Stream | None = None
        try:
            try:
                channel = self._open_channel()
            except Exception as error:
                # Nothing listens there (yet, or any more): the HTTP client sees a closed connection, as
                # it would see a refused one. Normal while the engine loads, so not a thread failure.
                self.last_refusal = f"Cannot open a channel to {self.target}: {error}."
                return
            self._pump(client, channel)
        except (OSError, EOFError):
            pass  # a peer closed or reset its end: normal for HTTP connections
        except Exception as error:
            self._record(error)
        finally:
            with self._lock:
                self._pairs.discard(client)
            _close_quietly(client)
            if channel is not None:
                _close_quietly(channel)

    def _pump(self, client: socket.socket, channel: Stream) -> None:
        """Relay both directions, one blocking thread each: no select() and no wake-up pipe per chunk,
        which halves the cost of a stream of small chunks (a token each) against a select loop."""
        upstream = threading.Thread(target=self._copy, args=(client, channel), daemon=True,
                                    name=f"hpcllm-relay-up-{self.target}")
        upstream.start()
        self._copy(channel, client)
        # The server side ended: end the request side too, so the other thread returns.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        upstream.join(timeout=5)

    def _copy(self, source: socket.socket | Stream, sink: socket.socket | Stream) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except (OSError, EOFError):
            pass  # a peer closed or reset its end: normal for HTTP connections
        except Exception as error:
            self._record(error)
        finally:
            # Tell the other side no more data comes (half-close), which ends its copy loop in turn.
            with contextlib.suppress(Exception):
                if isinstance(sink, socket.socket):
                    sink.shutdown(socket.SHUT_WR)
                else:
                    getattr(sink, "shutdown_write", sink.close)()

    def _record(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def raise_if_failed(self) -> None:
        with self._lock:
            if self.errors:
                first = self.errors[0]
                raise first if isinstance(first, ForwardError) else ForwardError(
                    f"The forward to {self.target} failed: {first!r}."
                ) from first

    def close(self, *, raise_errors: bool = False) -> None:
        """Stop listening, close every relayed connection and join the threads. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            # shutdown() wakes the thread blocked in accept(); close() alone may not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            with self._lock:
                pairs = list(self._pairs)
                threads = list(self._threads)
            for client in pairs:
                # shutdown() (not close()) so the relay thread's select() wakes and it closes its ends.
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
            self._accept_thread.join(timeout=5)
            for thread in threads:
                thread.join(timeout=5)
        if raise_errors:
            self.raise_if_failed()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Re-raise a thread's failure, unless the body already failed (that error matters more).
        self.close(raise_errors=kind is None)


def _close_quietly(stream: socket.socket | Stream) -> None:
    with contextlib.suppress(Exception):
        stream.close()
