"""What every local port forward shares: a listening socket whose accepted connections are each served by
a thread of their own, failures recorded for the caller, and a close that ends every thread.

Like fabric's tunnels, a forward is a context manager that tears down cleanly and re-raises what failed
in its threads. ``edge.forward.PortForward`` (bytes copied to an SSH channel) and
``edge.openssh.forward.MuxForward`` (each socket handed to OpenSSH's master) differ only in how they
serve one connection (``_serve``) and how they cut the ones in flight short (``_interrupt``).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import ForwardError

__all__ = ["LocalListener"]

POLL = 0.2  # seconds a thread waits before it looks at the closed flag again (close() also wakes them)
_JOIN = 1.0  # seconds close() waits for the threads, all together


class LocalListener:
    """Listen on ``local_host:local_port`` (0: any free port); serve each connection in a thread."""

    def __init__(self, target: str, *, local_host: str = "127.0.0.1", local_port: int = 0) -> None:
        self.target = target
        try:
            # create_server sets SO_REUSEADDR only where it does not let another program steal the port.
            self._listener = socket.create_server((local_host, local_port), backlog=128)
        except OSError as error:
            raise ForwardError(
                f"Cannot listen on {local_host}:{local_port} for the forward to {target}: {error}.",
                "Choose another local port (or 0 for any free one).",
            ) from None
        self._listener.settimeout(POLL)
        self.local_host, self.local_port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self.errors: list[BaseException] = []  # unexpected failures in the forward's threads
        self.last_refusal: str | None = None  # why the last connection could not be relayed
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"hpcllm-forward-{target}",
                                               daemon=True)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return f"{self.local_host}:{self.local_port}"

    # -- what a kind of forward defines

    def _serve(self, client: socket.socket) -> None:
        """Relay one accepted connection until it ends (runs in its own thread)."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Cut the connections in flight short, so their threads end (called by close())."""

    # -- the shared machinery

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._closed.is_set():
                    self._record(ForwardError(f"The forward to {self.target} stopped accepting connections."))
                return
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start(f"hpcllm-relay-{self.target}", self._serve, client)

    def _start(self, name: str, work: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(work, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except (OSError, EOFError, ValueError):
            pass  # a peer closed or reset its end (ValueError: a socket closed under a select)
        except Exception as error:
            if not _ssh_connection_broke(error):
                self._record(error)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

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
        """Stop listening, end every relayed connection and join the threads (about a second at most,
        whatever is in flight). Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once where it can (Linux)
            self._listener.close()
            self._interrupt()
            deadline = time.monotonic() + _JOIN
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
            with self._lock:
                threads = list(self._threads)
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        if raise_errors:
            self.raise_if_failed()

    def __enter__(self) -> LocalListener:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Re-raise a thread's failure, unless the body already failed (that error matters more).
        self.close(raise_errors=kind is None)


def _ssh_connection_broke(error: Exception) -> bool:
    """paramiko's SSHException (e.g. "Key-exchange timed out" from a send when the connection died): one
    relayed connection ended with its SSH connection, like a peer reset, not a failure of the forward,
    which carries on over the next connection. paramiko is only looked at if something imported it."""
    paramiko = sys.modules.get("paramiko")
    ssh_error = getattr(paramiko, "SSHException", None)
    return isinstance(ssh_error, type) and isinstance(error, ssh_error)
