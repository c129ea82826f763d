"""The socket to the first hop of an SSH connection: TCP (with TCP_NODELAY), or a ProxyCommand run
through the shell as OpenSSH runs it, whose process is always waited for."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import socket
from typing import TYPE_CHECKING, Any

from ..errors import ConnectError
from .sshconfig import SSHTarget
from .transport import REACH_HINT

if TYPE_CHECKING:
    import paramiko

__all__ = ["first_socket", "reap"]


def first_socket(hop: SSHTarget, timeout: float) -> Any:
    """The socket to the first hop: its ProxyCommand's pipes, or TCP."""
    if hop.proxy_command:
        # OpenSSH runs a ProxyCommand through the shell (pipes, variables); paramiko would split it itself.
        command = hop.proxy_command if os.name == "nt" else f"/bin/sh -c {shlex.quote('exec ' + hop.proxy_command)}"
        try:
            return _proxy_command_class()(command)
        except Exception as error:
            raise ConnectError(f"The ProxyCommand for {hop.alias} did not start: {error}.", REACH_HINT) from None
    try:
        sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
    except OSError as error:
        raise ConnectError(f"Cannot reach {hop.display}: {error}.", REACH_HINT) from None
    # paramiko leaves Nagle on: each exec then waits ~44 ms for a delayed ACK instead of ~2 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reap(proxy: Any) -> None:
    """Close a ProxyCommand made here (None: there is none) and wait for its process."""
    if proxy is not None:
        proxy.close()  # a _ProxyCommand: idempotent, and waits for the process


@functools.cache
def _proxy_command_class() -> type[paramiko.ProxyCommand]:
    import paramiko

    class _ProxyCommand(paramiko.ProxyCommand):
        """paramiko's ProxyCommand, closed more than once without an error (paramiko's transport thread
        and our teardown both close it), waited for (no zombie) and its pipes closed (no fd left)."""

        def close(self) -> None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    super().close()
                with contextlib.suppress(Exception):
                    self.process.wait(timeout=2)
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    return _ProxyCommand
