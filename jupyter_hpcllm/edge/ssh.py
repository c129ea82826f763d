"""SSH to the login node with paramiko: one connection per transport, reused for every command, file
read and tunnel, and made anew when it drops.

Host keys are checked against known_hosts (RejectPolicy: an unknown host is refused with advice on how
to trust it). paramiko is imported only here, so ``import jupyter_hpcllm`` stays cheap.
"""

from __future__ import annotations

import getpass
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..config.profiles import Profile
from ..errors import AuthenticationError, CommandTimeout, ConnectError, ConnectionLost, HostKeyError, TransportError
from .transport import CommandResult, Forward, Prompt, Stream, check_result

if TYPE_CHECKING:
    import paramiko

    from .files import Files
    from .heartbeat import Heartbeat

__all__ = ["SSHTransport"]


@dataclass(frozen=True)
class _SSHTarget:
    """The SSH settings of a profile after merging ~/.ssh/config (profile keys win)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    proxy_jump: str | None
    proxy_command: str | None
    known_hosts: tuple[str, ...]

    @classmethod
    def resolve(cls, profile: Profile, host: str | None = None) -> _SSHTarget:
        import paramiko

        alias = host or profile.host
        config = paramiko.SSHConfig()
        config_file = Path(profile.ssh_config).expanduser()
        if config_file.exists():
            config = paramiko.SSHConfig.from_path(str(config_file))
        entry = config.lookup(alias)
        # Profile settings apply only to the profile's own host, not to a jump host.
        own = host is None
        known = profile.known_hosts if own and profile.known_hosts else entry.get("userknownhostsfile", "")
        identity = [profile.identity_file] if own and profile.identity_file else entry.get("identityfile", [])
        return cls(
            alias=alias,
            hostname=entry.get("hostname", alias),
            port=(profile.port if own and profile.port else int(entry.get("port", 22))),
            user=(profile.user if own and profile.user else entry.get("user") or getpass.getuser()),
            identity_files=tuple(str(Path(p).expanduser()) for p in identity if p),
            proxy_jump=(profile.proxy_jump if own and profile.proxy_jump else entry.get("proxyjump")),
            proxy_command=entry.get("proxycommand"),
            known_hosts=tuple(str(Path(p).expanduser()) for p in known.split() if p and p != "/dev/null"),
        )

    @property
    def display(self) -> str:
        port = "" if self.port == 22 else f" port {self.port}"
        return f"{self.user}@{self.hostname}{port}"


class SSHTransport:
    """One paramiko connection to the login node, reused for every command and tunnel."""

    def __init__(self, profile: Profile, *, prompt: Prompt | None = None) -> None:
        self._prompt = prompt
        # paramiko logs a refused forward channel as an ERROR; with no logging configured Python would
        # print it on stderr (e.g. while the engine is still loading). Our errors say what matters.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self.profile = profile
        self.target = _SSHTarget.resolve(profile)
        self.description = self.target.display
        self._jump: SSHTransport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_of: paramiko.SSHClient | None = None  # the connection the SFTP session belongs to
        self._sftp_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        # Connecting takes up to connect_timeout: the lock only guards these fields, never a connect.
        self._lock = threading.Lock()
        self._connecting: threading.Event | None = None
        self._connect_error: BaseException | None = None
        self._closed = False
        self._heartbeat: Heartbeat | None = None

    def connect(self) -> SSHTransport:
        """Open the connection now (it opens on first use otherwise); errors say what to do."""
        self._connection()
        return self

    def _connection(self) -> paramiko.SSHClient:
        """The live connection: reused, or made anew when there is none or it dropped. One thread
        connects; the others wait for its result instead of opening connections of their own."""
        while True:
            with self._lock:
                if self._closed:
                    raise ConnectError(f"The connection to {self.description} was closed.", _REACH_HINT)
                client = self._client
                if client is not None and _active(client):
                    return client
                waiting = self._connecting
                if waiting is None:
                    self._connecting = threading.Event()
                    self._connect_error = None
                    break
            # Another thread is connecting: wait for its result (each of its steps has connect_timeout).
            waiting.wait(self.profile.connect_timeout)
            with self._lock:
                if self._client is not None and _active(self._client):
                    return self._client
                error = self._connect_error
                still = self._connecting is waiting
            if error is not None:
                raise error
            if not still:
                continue  # it finished without a connection (closed, interrupted): try ourselves
        try:
            fresh = self._connect()
        except BaseException as error:
            with self._lock:
                # Share what other threads can act on; an interrupt belongs to this thread alone.
                self._connect_error = error if isinstance(error, Exception) else None
                done, self._connecting = self._connecting, None
            if done is not None:
                done.set()
            raise
        from .heartbeat import Heartbeat

        live = fresh.get_transport()
        beat = Heartbeat(live, self.profile.keepalive) if live is not None and not self._closed else None
        with self._lock:
            closed = self._closed
            stale, self._client = self._client, (None if closed else fresh)
            stale_beat, self._heartbeat = self._heartbeat, (None if closed else beat)
            done, self._connecting = self._connecting, None
        for old in (stale_beat, beat if closed else None):
            if old is not None:
                old.stop()
        if done is not None:
            done.set()
        if stale is not None:
            stale.close()
        if closed:
            fresh.close()
            raise ConnectError(f"The connection to {self.description} was closed.", _REACH_HINT)
        return fresh

    def _connect(self) -> paramiko.SSHClient:
        import paramiko

        target = self.target
        timeout = self.profile.connect_timeout
        sock: Any
        if target.proxy_jump:
            jump_host = target.proxy_jump.split(",")[0]
            if self._jump is not None:
                self._jump.close()
            self._jump = SSHTransport(_jump_profile(self.profile, jump_host))
            try:
                sock = self._jump.open_channel(target.hostname, target.port, timeout=timeout)
            except Exception as error:
                raise ConnectError(f"The jump host {jump_host} cannot reach {target.display}: {error}.",
                                   _REACH_HINT) from None
        elif target.proxy_command:
            sock = paramiko.ProxyCommand(target.proxy_command)
        else:
            try:
                sock = _tcp_connect(target.hostname, target.port, timeout)
            except OSError as error:
                raise ConnectError(f"Cannot reach {target.display}: {error}.", _REACH_HINT) from None
        client = paramiko.SSHClient()
        if target.known_hosts:
            for path in target.known_hosts:
                if Path(path).exists():
                    client.load_host_keys(path)
        else:
            client.load_system_host_keys()
        # Never trust an unknown host silently (unlike AutoAddPolicy): the error says how to trust it.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                key_filename=cast(Any, list(target.identity_files) or None),  # paramiko takes a list
                look_for_keys=not target.identity_files,
                allow_agent=True,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except paramiko.BadHostKeyException as error:
            raise HostKeyError(
                f"The host key of {target.hostname} does not match known_hosts: it changed, or someone is "
                "intercepting the connection.",
                f"Ask your cluster's admins whether the key changed (fingerprint now "
                f"{_fingerprint(error.key)}); if it did, remove the old line with "
                f"`ssh-keygen -R {_known_hosts_name(target)}` and connect again.",
            ) from None
        except paramiko.AuthenticationException:
            raise AuthenticationError(
                f"SSH to {target.display} refused our keys.",
                "Check that `ssh "
                f"{target.alias}` works from a terminal; load your key with `ssh-add`, or set identity_file "
                "in the profile (`hpcllm config show` prints what is used).",
            ) from None
        except paramiko.SSHException as error:
            if "not found in known_hosts" in str(error):
                raise HostKeyError(
                    f"The host {_known_hosts_name(target)} is not in your known_hosts, so jupyter-hpcllm "
                    "will not connect to it.",
                    "Check its fingerprint with your cluster's documentation, then trust it with "
                    f"`ssh-keyscan -p {target.port} {target.hostname} >> ~/.ssh/known_hosts` (or connect "
                    f"once with `ssh {target.alias}` and answer yes).",
                ) from None
            raise ConnectError(f"SSH to {target.display} failed: {error}.", _REACH_HINT) from None
        except OSError as error:
            raise ConnectError(f"Cannot reach {target.display}: {error}.", _REACH_HINT) from None
        return client

    def session(self) -> paramiko.Transport:
        """The live paramiko transport (connecting if needed): for diagnostics and tests."""
        transport = self._connection().get_transport()
        assert transport is not None
        return transport

    @property
    def alive(self) -> bool:
        client = self._client
        return client is not None and _active(client)

    def run(
        self, command: str, *, stdin: str | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        timeout = timeout or self.profile.command_timeout
        transport = self._connection().get_transport()
        deadline = time.monotonic() + timeout
        if transport is None or not transport.is_active():
            raise self._lost(command, "the connection closed")
        try:
            channel = transport.open_session(timeout=timeout)
        except Exception as error:
            if not transport.is_active():
                raise self._lost(command, str(error)) from None
            raise TransportError(f"Cannot open a session on {self.description}: {error}.", _REACH_HINT) from None
        with channel:
            try:
                channel.exec_command(command)
                if stdin is not None:
                    channel.sendall(stdin.encode())
                channel.shutdown_write()
                stdout, stderr = _drain(channel, deadline, command, timeout)
            except CommandTimeout:
                raise
            except Exception as error:  # the connection dropped under the command (paramiko, socket)
                raise self._lost(command, str(error) or type(error).__name__) from None
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                if channel.closed or not transport.is_active():
                    raise self._lost(command, "no exit status came back")
                raise CommandTimeout(command, timeout)
            if channel.exit_status == -1 and not transport.is_active():  # closed under it, no real status
                raise self._lost(command, "no exit status came back")
            status = channel.recv_exit_status()
        return check_result(CommandResult(command, status, stdout, stderr), check)

    def _lost(self, command: str, why: str) -> ConnectionLost:
        words = command.split()
        return ConnectionLost(
            f"The SSH connection to {self.description} broke while running `{' '.join(words[:1]) or command}` "
            f"({why}); the next command connects anew.", _REACH_HINT)

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Stream:
        transport = self._connection().get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"The SSH connection to {self.description} was lost.", _REACH_HINT)
        from .sshtuning import channel_options

        channel: Stream = transport.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout, **channel_options()
        )
        return channel

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, opened once (sessions count against sshd's MaxSessions)."""
        client = self._connection()
        with self._sftp_lock:
            channel = self._sftp.get_channel() if self._sftp is not None else None
            if self._sftp is None or self._sftp_of is not client or channel is None or channel.closed:
                try:
                    self._sftp, self._sftp_of = client.open_sftp(), client
                    channel = self._sftp.get_channel()
                except Exception as error:
                    raise TransportError(f"Cannot open SFTP on {self.description}: {error}.", _REACH_HINT) from None
                if channel is not None:
                    channel.settimeout(self.profile.command_timeout)
            return self._sftp

    def files(self) -> Files:
        from .files import SFTPFiles

        return SFTPFiles(self)

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward:
        """A local port relayed to host:port through this connection (re-made if it dropped)."""
        from .forward import PortForward

        return PortForward(lambda: self.open_channel(host, port), f"{host}:{port}", local_port=local_port)

    def fresh(self) -> SSHTransport:
        """A new connection of its own (this one may be dead): for a cancel that must get through."""
        return SSHTransport(self.profile, prompt=self._prompt)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.stop()
        if client is not None:
            client.close()
        if self._jump:
            self._jump.close()


_REACH_HINT = (
    "Check the host name and your network or VPN, and that `ssh` to it works from a terminal; "
    "`hpcllm config show` prints the settings in use."
)


def _drain(channel: paramiko.Channel, deadline: float, command: str, timeout: float) -> tuple[str, str]:
    """Read stdout and stderr together (one full pipe must not block the other) until both close."""
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        while channel.recv_ready():
            out.append(channel.recv(65536))
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
        if (channel.eof_received or channel.closed) and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandTimeout(command, timeout)
        # The channel's fileno becomes readable on stdout data, stderr data and EOF.
        select.select([channel], [], [], min(remaining, 1.0))
    return b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


def _tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    # paramiko leaves Nagle on: each exec then waits ~44 ms for a delayed ACK instead of ~2 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _jump_profile(profile: Profile, jump: str) -> Profile:
    from dataclasses import replace

    user, _, hostport = jump.rpartition("@")
    host, _, port = hostport.partition(":")
    return replace(
        profile,
        name=f"{profile.name}-jump",
        host=host,
        user=user or None,
        port=int(port) if port else None,
        identity_file=None,
        proxy_jump=None,
    )


def _known_hosts_name(target: _SSHTarget) -> str:
    return target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return bool(transport and transport.is_active())
