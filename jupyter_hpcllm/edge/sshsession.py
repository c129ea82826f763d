"""One SSH session over a given socket, made as OpenSSH makes it: key exchange, host key check,
then login.

``start_session`` asks first for the host key algorithms known_hosts can check, checks the key
(``KnownHosts.check``), and logs in (``sshlogin``: the agent's keys, the identity files with their
certificates, then keyboard-interactive and password, a question reaching the person through
``prompt``). Every wait is bounded; a failure closes the transport and its socket and ends its thread.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConnectError
from .hostkeys import KnownHosts
from .sshconfig import SSHTarget
from .sshlogin import Login
from .sshtuning import transport_options, tune_transport
from .transport import REACH_HINT, Prompt

if TYPE_CHECKING:
    import paramiko

__all__ = ["start_session"]


def start_session(
    sock: socket.socket | paramiko.Channel | paramiko.ProxyCommand,
    target: SSHTarget,
    known_hosts: KnownHosts,
    *,
    timeout: float,
    prompt: Prompt | None,
) -> paramiko.Transport:
    """An authenticated paramiko Transport over ``sock`` to ``target``. Raises ConnectError,
    HostKeyError or AuthenticationError; on any failure the transport, its thread and ``sock`` are closed."""
    try:
        transport = _transport_class()(sock, known_hosts.preferred_key_types(target.known_hosts_name) or (),
                                       **transport_options())
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
        tune_transport(transport)
        _handshake(transport, target, timeout)
        known_hosts.check(target.known_hosts_name, transport.get_remote_server_key(), target=target)
        Login(transport, target, timeout, prompt).run()
    except BaseException:
        _shutdown(transport, sock, timeout)
        raise
    return transport


@functools.cache
def _transport_class() -> Callable[..., paramiko.Transport]:
    import paramiko

    class Transport(paramiko.Transport):
        """paramiko's Transport asking first for the given host key algorithms. (paramiko puts all
        certificate algorithms last, so a server would never present its host certificate.)"""

        def __init__(self, sock: Any, first: tuple[str, ...], **options: Any) -> None:
            super().__init__(sock, **options)
            self._first_host_keys = first

        @property
        def preferred_keys(self) -> tuple[str, ...]:
            offered = tuple(super().preferred_keys)  # honours disabled_algorithms and tune_transport
            first = [k for k in self._first_host_keys if k in offered]
            return (*first, *(k for k in offered if k not in first))

    return Transport


def _handshake(transport: paramiko.Transport, target: SSHTarget, timeout: float) -> None:
    import paramiko

    try:
        transport.start_client(timeout=timeout)
    except paramiko.SSHException as error:
        raise ConnectError(f"SSH to {target.display} failed: {error}.", REACH_HINT) from None
    except (OSError, EOFError) as error:
        raise ConnectError(f"Cannot reach {target.display}: {error}.", REACH_HINT) from None
    if not transport.initial_kex_done:  # start_client returns at its timeout without saying so
        raise ConnectError(f"{target.display} did not finish the SSH handshake within {timeout:g} s.", REACH_HINT)


def _shutdown(transport: paramiko.Transport, sock: Any, timeout: float) -> None:
    """Close everything start_session made: the transport, the socket, and wait for the thread."""
    transport.close()
    sock.close()  # Transport.close skips it when the handshake already failed
    if transport.is_alive() and transport is not threading.current_thread():
        transport.join(timeout)
