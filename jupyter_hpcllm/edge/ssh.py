"""SSH to the login node with paramiko: one connection per transport, reused for every command, file
read and tunnel, watched by keepalives that expect a reply, and made anew when it drops.

The connection is made as OpenSSH makes it from ``~/.ssh/config`` (``sshconfig``): through ProxyJump
chains or a ProxyCommand, with host keys checked against the user's and the system's known_hosts,
hashed entries and ``@cert-authority`` lines included (``hostkeys``: an unknown host is refused with
advice on how to trust it, never added), and a login that may ask the person for a code
(``sshsession``). paramiko is imported only here and there, so ``import jupyter_hpcllm`` stays cheap.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.profiles import Profile
from ..errors import CommandTimeout, ConnectError, ConnectionLost, TransportError
from .channeleof import send_eof
from .sshconfig import SSHTarget
from .sshsocket import first_socket, reap
from .transport import REACH_HINT, CommandResult, Forward, Prompt, Stream, check_result

if TYPE_CHECKING:
    import paramiko

    from .files import Files
    from .heartbeat import Heartbeat

__all__ = ["SSHTransport"]

_BACKOFF_MAX = 30.0  # seconds between attempts to replace a connection, at most
# A connection that dies closes its channels a moment before it is marked inactive: this long at most.
_DEATH_GRACE = 0.2
# paramiko's ChannelException codes (RFC 4254 §5.1) for a channel the server would not open.
_ADMINISTRATIVELY_PROHIBITED, _CONNECT_FAILED = 1, 2

# paramiko logs a refused forward channel or a login it gave up on as an ERROR; with no logging configured
# Python would print it on stderr. Our errors say what matters. (Once, not per transport.)
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass
class _Connection:
    """One live connection: the login node's session, the jump hosts' sessions it runs through (first
    hop first) and the heartbeat watching it. Closing it closes them all, last hop first."""

    session: paramiko.Transport
    hops: list[paramiko.Transport] = field(default_factory=list)
    heartbeat: Heartbeat | None = None
    proxy: Any = None  # the first hop's ProxyCommand (a paramiko.ProxyCommand), if it has one

    @property
    def active(self) -> bool:
        return self.session.is_active()

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for transport in (self.session, *reversed(self.hops)):
            transport.close()
        reap(self.proxy)


class SSHTransport:
    """One paramiko connection to the login node, reused for every command and tunnel."""

    def __init__(self, profile: Profile, *, prompt: Prompt | None = None) -> None:
        self.profile = profile
        self._prompt = prompt
        self.target = SSHTarget.resolve(profile)
        self.description = self.target.display
        self._live: _Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_of: paramiko.Transport | None = None  # the session the SFTP channel belongs to
        self._sftp_lock = threading.Lock()
        # Connecting takes up to connect_timeout per hop: the lock only guards these fields, never a connect.
        self._lock = threading.Lock()
        self._connecting: threading.Event | None = None
        self._connect_error: BaseException | None = None
        self._failures = 0  # failed attempts in a row, for the backoff
        self._retry_at = 0.0
        self._closed = False

    def connect(self) -> SSHTransport:
        """Open the connection now (it opens on first use otherwise); errors say what to do. Asked for
        explicitly, it tries at once, whatever the backoff of earlier failed attempts."""
        with self._lock:
            self._retry_at = 0.0
        self.session()
        return self

    @property
    def alive(self) -> bool:
        live = self._live
        return live is not None and live.active

    def session(self) -> paramiko.Transport:
        """The live paramiko transport to the login node: reused, or made anew when there is none or it
        dropped. One thread connects; the others wait for its result instead of opening their own. After a
        failed attempt the next waits 1, 2, 4 … 30 s (calls meanwhile get the same error at once), so a
        login node that is down is not hammered."""
        while True:
            with self._lock:
                if self._closed:
                    raise ConnectError(f"The connection to {self.description} was closed.", REACH_HINT)
                live = self._live
                if live is not None and live.active:
                    return live.session
                waiting = self._connecting
                if waiting is None:
                    if self._connect_error is not None and time.monotonic() < self._retry_at:
                        raise self._connect_error
                    self._connecting = threading.Event()
                    self._connect_error = None
                    break
            # Another thread is connecting: wait for its result (each of its steps has connect_timeout).
            waiting.wait(self.profile.connect_timeout)
            with self._lock:
                if self._live is not None and self._live.active:
                    return self._live.session
                error = self._connect_error
                still = self._connecting is waiting
            if error is not None:
                raise error
            if not still:
                continue  # it finished without a connection (closed, interrupted): try ourselves
        try:
            fresh = self._connect()
            try:
                from .heartbeat import Heartbeat

                # A silent connection is closed whole: the jump hosts' sessions under it too.
                fresh.heartbeat = Heartbeat(fresh.session, self.profile.keepalive, on_dead=fresh.close)
            except BaseException:
                fresh.close()  # a connection nobody watches is not kept (and not leaked)
                raise
        except BaseException as error:
            with self._lock:
                # Share what other threads can act on; an interrupt belongs to this thread alone.
                self._connect_error = error if isinstance(error, Exception) else None
                if isinstance(error, ConnectError):  # the network: back off; a refused key is refused at once
                    self._failures += 1
                    self._retry_at = time.monotonic() + min(_BACKOFF_MAX, 2.0 ** (self._failures - 1))
                done, self._connecting = self._connecting, None
            if done is not None:
                done.set()
            raise
        with self._lock:
            closed = self._closed
            stale, self._live = self._live, (None if closed else fresh)
            self._failures, self._connect_error = 0, None
            done, self._connecting = self._connecting, None
        if done is not None:
            done.set()
        if stale is not None:
            stale.close()
        if closed:
            fresh.close()
            raise ConnectError(f"The connection to {self.description} was closed.", REACH_HINT)
        return fresh.session

    def _connect(self) -> _Connection:
        """Every hop of the chain in turn (the first over TCP or its ProxyCommand, each next one through
        a channel of the one before), then the login node; whatever fails closes what was made."""
        from .hostkeys import KnownHosts
        from .sshconfig import jump_chain
        from .sshsession import start_session
        from .sshtuning import channel_options

        timeout = self.profile.connect_timeout
        chain = [*jump_chain(self.profile, self.target), self.target]
        made: list[paramiko.Transport] = []
        proxy: Any = None
        try:
            for index, hop in enumerate(chain):
                sock: Any
                if index == 0:
                    sock = first_socket(hop, timeout)
                    proxy = sock if hop.proxy_command else None
                else:
                    try:
                        sock = made[-1].open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0),
                                                     timeout=timeout, **channel_options())
                    except Exception as error:
                        raise ConnectError(f"The jump host {chain[index - 1].display} cannot reach {hop.display}: "
                                           f"{error or type(error).__name__}.", REACH_HINT) from None
                made.append(start_session(sock, hop, KnownHosts.for_target(hop), timeout=timeout,
                                          prompt=self._prompt))
        except BaseException:
            for transport in reversed(made):
                transport.close()
            reap(proxy)
            raise
        return _Connection(made[-1], made[:-1], proxy=proxy)

    def run(
        self, command: str, *, stdin: str | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        timeout = timeout or self.profile.command_timeout
        transport = self.session()
        deadline = time.monotonic() + timeout
        try:
            channel = transport.open_session(timeout=timeout)
        except Exception as error:
            if not transport.is_active():
                raise self._lost(command, str(error) or "the connection closed") from None
            why = getattr(error, "text", None) or error or type(error).__name__  # a ChannelException's reason
            raise TransportError(f"Cannot open a session on {self.description}: {why}.", REACH_HINT) from None
        with channel:
            try:
                channel.exec_command(command)
            except Exception as error:  # paramiko.SSHException: refused, or the connection died under it
                raise self._refused_or_lost(transport, command, error) from None
            try:
                if stdin is not None:
                    channel.sendall(stdin.encode())
                send_eof(channel)
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

    def _refused_or_lost(self, transport: paramiko.Transport, command: str, error: Exception) -> TransportError:
        """The server refused to run a command (the connection lives on), or the connection died."""
        transport.join(_DEATH_GRACE)  # returns at once if the connection's thread has ended
        if not transport.is_active():
            return self._lost(command, str(error) or type(error).__name__)
        words = command.split()
        return TransportError(
            f"The SSH server {self.description} refused to run `{' '.join(words[:1]) or command}`: it closed the "
            "session instead of running the command.",
            "It may allow you only some commands (a ForceCommand, an SFTP-only or restricted account): check "
            f"that `ssh {self.target.alias} true` runs a command from a terminal, or ask the cluster's admins.",
        )

    def _lost(self, command: str, why: str) -> ConnectionLost:
        words = command.split()
        return ConnectionLost(
            f"The SSH connection to {self.description} broke while running `{' '.join(words[:1]) or command}` "
            f"({why}); the next command connects anew.", REACH_HINT)

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Stream:
        import paramiko

        from .sshtuning import channel_options

        transport = self.session()
        try:
            channel: Stream = transport.open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout, **channel_options()
            )
        except paramiko.ChannelException as error:  # the server answered: it would not open this channel
            if error.code == _CONNECT_FAILED:  # nothing listens there (yet): as a refused TCP connect
                raise ConnectError(f"{self.description} could not connect to {host}:{port} ({error.text}).") from None
            hint = ("The SSH server forbids port forwarding for you (sshd's AllowTcpForwarding or "
                    "DisableForwarding): ask the cluster's admins, or run Jupyter on the cluster (host = \"local\")."
                    if error.code == _ADMINISTRATIVELY_PROHIBITED else REACH_HINT)
            raise TransportError(f"{self.description} would not open a channel to {host}:{port} ({error.text}).",
                                 hint) from None
        except Exception as error:  # paramiko.SSHException (a timeout), EOFError, OSError: the connection
            if not transport.is_active():
                raise self._lost(f"a channel to {host}:{port}", str(error) or type(error).__name__) from None
            raise TransportError(f"{self.description} did not open a channel to {host}:{port}: "
                                 f"{error or type(error).__name__}.", REACH_HINT) from None
        return channel

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, opened once (sessions count against sshd's MaxSessions)."""
        import paramiko

        session = self.session()
        with self._sftp_lock:
            channel = self._sftp.get_channel() if self._sftp is not None else None
            if self._sftp is None or self._sftp_of is not session or channel is None or channel.closed:
                try:
                    sftp = paramiko.SFTPClient.from_transport(session)
                except Exception as error:
                    raise TransportError(f"Cannot open SFTP on {self.description}: {error}.", REACH_HINT) from None
                if sftp is None:
                    raise TransportError(f"Cannot open SFTP on {self.description}.", REACH_HINT)
                self._sftp, self._sftp_of = sftp, session
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(self.profile.command_timeout)
            return self._sftp

    def files(self) -> Files:
        from .files import SFTPFiles

        return SFTPFiles(self)

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward:
        """A local port relayed to host:port through this connection (re-made if it dropped)."""
        from .forward import PortForward

        return PortForward(lambda: self.open_channel(host, port), f"{host}:{port}", local_port=local_port,
                           opener=self.open_channel)

    def fresh(self) -> SSHTransport:
        """A new connection of its own (this one may be dead): for a cancel that must get through."""
        return SSHTransport(self.profile, prompt=self._prompt)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live, self._live = self._live, None
        if live is not None:
            live.close()




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
        # The channel's fileno becomes readable on stdout data, stderr data, EOF and close.
        select.select([channel], [], [], min(remaining, 1.0))
    return b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")
