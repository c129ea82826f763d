"""The one way out to a shell on the cluster: the ``Transport`` interface and its local implementation.

Every remote command goes through ``Transport.run``, which has a timeout and raises
``RemoteCommandError`` (command, exit code, stdout, stderr) on a non-zero exit. A transport also reads
files (``files()``: model facts need no shell) and reaches ``host:port`` as seen from the cluster
(``forward()``: a local address for the engine). Implementations: ``SSHTransport`` (``edge.ssh``,
paramiko, imported only when used), ``LocalTransport`` (Jupyter already runs on the cluster) and
``FakeTransport`` (``edge.fake``: an in-memory cluster for tests and offline trials). A transport is
passed in; nothing here is global.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config.profiles import Profile
from ..errors import CommandTimeout, ConnectError, ConnectionLost, RemoteCommandError

if TYPE_CHECKING:
    from .files import Files

__all__ = [
    "REACH_HINT",
    "CommandResult",
    "DirectAddress",
    "Forward",
    "LocalTransport",
    "Prompt",
    "Stream",
    "Transport",
    "connect",
    "run_idempotent",
]

# What every "cannot reach the cluster" error of every transport suggests.
REACH_HINT = (
    "Check the host name and your network or VPN, and that `ssh` to it works from a terminal; "
    "`hpcllm config show` prints the settings in use."
)

# Asks the person at the keyboard: (prompt text, echo the answer?) -> the answer. A face supplies one
# (terminal: getpass; notebook: the kernel's password input); without one, a prompt is an error, never a hang.
Prompt = Callable[[str, bool], str]


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str


class Stream(Protocol):
    """What the port forward needs of a connection: a paramiko Channel or a socket."""

    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> Any: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Forward(Protocol):
    """A local address that reaches the engine: a port forward, or the engine's own address."""

    @property
    def address(self) -> str: ...
    @property
    def last_refusal(self) -> str | None:
        """Why the last connection could not be relayed (None: none was refused), for error messages."""
        ...
    def raise_if_failed(self) -> None: ...
    def retarget(self, host: str, port: int) -> None:
        """Reach host:port from now on, at the same local address (a successor job: `renew`)."""
        ...
    def close(self) -> None: ...


class Transport(Protocol):
    description: str

    def run(
        self, command: str, *, stdin: str | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult: ...

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Stream: ...

    def files(self) -> Files: ...

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward: ...

    def connect(self) -> Transport:
        """Open the connection now (else it opens on first use), asking here and now whatever the login
        node asks (a password, a one-time code); errors say what to do."""
        ...

    def fresh(self) -> Transport:
        """A new connection to the same place that shares nothing with this one: for a cancel that must
        not wait on a connection that may be dead. The caller closes it."""
        ...

    def close(self) -> None: ...


def run_idempotent(transport: Transport, command: str, *, timeout: float | None = None,
                check: bool = True) -> CommandResult:
    """Run a command that is safe to run twice (it only reads, like squeue, a probe or cat; or running it
    again changes nothing, like scancel): if the connection dies under it, it is run once more on a new
    connection (a transport replaces a dead connection on its next call). Never for sbatch."""
    try:
        return transport.run(command, timeout=timeout, check=check)
    except ConnectionLost:
        return transport.run(command, timeout=timeout, check=check)


def check_result(result: CommandResult, check: bool) -> CommandResult:
    if check and result.exit_status != 0:
        raise RemoteCommandError(result.command, result.exit_status, result.stdout, result.stderr)
    return result


@dataclass
class DirectAddress:
    """No forward needed (this machine reaches the node): the engine's own address (so a retarget to a
    successor job changes it: a client made before keeps the old one)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def last_refusal(self) -> str | None:
        return None  # nothing in between to refuse

    def raise_if_failed(self) -> None:
        pass

    def retarget(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def close(self) -> None:
        pass


class LocalTransport:
    """For a Jupyter that already runs on the cluster: commands run here, under bash."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.description = "this machine"

    def run(
        self, command: str, *, stdin: str | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        timeout = timeout or self.profile.command_timeout
        try:
            done = subprocess.run(
                ["bash", "-c", command],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=os.path.expanduser("~"),
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(command, timeout) from None
        return check_result(CommandResult(command, done.returncode, done.stdout, done.stderr), check)

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Stream:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise ConnectError(f"Cannot connect to {host}:{port}: {error}.") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def files(self) -> Files:
        from .files import LocalFiles

        return LocalFiles()

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward:
        if not local_port:
            return DirectAddress(host, port)  # on the cluster already: talk to the node directly
        from .forward import PortForward

        return PortForward(lambda: self.open_channel(host, port), f"{host}:{port}", local_port=local_port,
                           opener=self.open_channel)

    def connect(self) -> LocalTransport:
        return self  # nothing to open

    def fresh(self) -> LocalTransport:
        return self  # no connection to lose

    def close(self) -> None:
        pass


def connect(profile: Profile, *, prompt: Prompt | None = None) -> Transport:
    """The transport a profile asks for (SSH unless its host is "local"; paramiko unless its ssh_backend
    is "openssh"). Cheap: SSH connects on first use. ``prompt`` answers keyboard-interactive questions."""
    if profile.is_local:
        return LocalTransport(profile)
    if profile.ssh_backend == "openssh":
        from .openssh import OpenSSHTransport

        return OpenSSHTransport(profile, prompt=prompt)
    from .ssh import SSHTransport

    return SSHTransport(profile, prompt=prompt)
