"""The ControlMaster's multiplexing protocol (OpenSSH's PROTOCOL.mux, version 4), spoken without ``ssh``.

A control connection is a unix socket to the master's ControlPath. Over it we check that a master lives
(MUX_C_ALIVE_CHECK: its process id), stop one (MUX_C_TERMINATE, as ``ssh -O exit``), and have it relay a
socket of ours to host:port (MUX_C_NEW_STDIO_FWD, the socket passed by SCM_RIGHTS, as ``ssh -W`` does):
the master copies the bytes itself, so no ``ssh`` process runs per connection and none is copied in
Python. Every control connection is checked first: the master at the other end must run as our own user
(``peer_uid``), or it could read every socket handed to it. Only the calls touch AF_UNIX and SCM_RIGHTS,
so importing this works everywhere.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys

from ...errors import ConnectError

__all__ = [
    "ChannelSocket", "ForeignMaster", "MuxRefused", "master_still_runs", "mux_alive", "mux_connect",
    "mux_stdio_forward", "mux_terminate", "peer_uid",
]

_MUX_VERSION = 4
_MUX_HELLO = 0x00000001
_MUX_C_ALIVE_CHECK = 0x10000004
_MUX_C_TERMINATE = 0x10000005
_MUX_C_NEW_STDIO_FWD = 0x10000008
_MUX_S_OK = 0x80000001
_MUX_S_PERMISSION_DENIED = 0x80000002
_MUX_S_FAILURE = 0x80000003
_MUX_S_ALIVE = 0x80000005
_MUX_S_SESSION_OPENED = 0x80000006


class MuxRefused(Exception):
    """The master (or the server behind it) refused a request; the message is its reason."""


class ForeignMaster(ConnectError):
    """The process behind a control socket runs as another user: never used (it would see our traffic)."""


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a connected unix socket; None where we cannot tell."""
    if sys.platform.startswith("linux"):
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", data)[1])  # struct ucred: pid, uid, gid
    if sys.platform.startswith("openbsd"):
        data = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 0x1022), 12)
        return int(struct.unpack("3I", data)[0])  # struct sockpeercred: uid, gid, pid
    if sys.platform == "darwin" or sys.platform.startswith(("freebsd", "dragonfly")):
        # getpeereid(3) is LOCAL_PEERCRED at level SOL_LOCAL (0): struct xucred, cr_version then cr_uid.
        data = sock.getsockopt(0, getattr(socket, "LOCAL_PEERCRED", 1), 76)
        return int(struct.unpack("=2I", data[:8])[1])
    return None


def _check_peer(sock: socket.socket, path: str) -> None:
    """ForeignMaster unless the process behind ``path`` runs as us (where the system cannot say who it is:
    unless the socket file is ours)."""
    uid = peer_uid(sock)
    if uid is None:
        uid = os.stat(path).st_uid
    if uid != os.geteuid():
        raise ForeignMaster(
            f"The ssh control socket {path} is served by another user (uid {uid}), not by you: jupyter-hpcllm "
            "does not use it, as that user would see your connections.",
            f"Remove {path} if you can, or point ControlPath elsewhere; if you did not expect it there, tell "
            "your admins.",
        )


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(text: str) -> bytes:
    data = text.encode()
    return _u32(len(data)) + data


def _mux_send(sock: socket.socket, kind: int, *fields: bytes) -> None:
    body = _u32(kind) + b"".join(fields)
    sock.sendall(_u32(len(body)) + body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the ssh master closed its control connection")
        data += chunk
    return data


def _mux_recv(sock: socket.socket) -> tuple[int, bytes]:
    (size,) = struct.unpack(">I", _recv_exactly(sock, 4))
    if not 4 <= size <= 1 << 20:
        raise ConnectionResetError(f"the ssh master sent a message of {size} bytes")
    body = _recv_exactly(sock, size)
    return struct.unpack(">I", body[:4])[0], body[4:]


def _reason(body: bytes) -> str:
    """The reason of a MUX_S_FAILURE or MUX_S_PERMISSION_DENIED (after the request id)."""
    try:
        (size,) = struct.unpack(">I", body[4:8])
        return body[8:8 + size].decode(errors="replace")
    except struct.error:
        return "no reason given"


def mux_connect(path: str, *, timeout: float, quiet: bool = False) -> socket.socket | None:
    """A control connection to the master at ``path`` after the hello exchange; None if none answers (with
    ``quiet``). ForeignMaster, before a byte is sent, if the master runs as another user."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        _check_peer(sock, path)
        _mux_send(sock, _MUX_HELLO, _u32(_MUX_VERSION))
        kind, body = _mux_recv(sock)
        if kind != _MUX_HELLO or len(body) < 4 or struct.unpack(">I", body[:4])[0] != _MUX_VERSION:
            raise ConnectionResetError(f"the ssh master at {path} speaks another multiplexing protocol")
    except BaseException as error:
        sock.close()
        if quiet and isinstance(error, OSError):
            return None
        raise
    return sock


def mux_alive(sock: socket.socket) -> int:
    """The master's process id (MUX_C_ALIVE_CHECK)."""
    _mux_send(sock, _MUX_C_ALIVE_CHECK, _u32(1))
    kind, body = _mux_recv(sock)
    if kind != _MUX_S_ALIVE or len(body) < 8:
        raise ConnectionResetError("the ssh master did not answer its alive check")
    pid: int = struct.unpack(">I", body[4:8])[0]
    return pid


def mux_terminate(sock: socket.socket) -> None:
    """Ask the master to exit (MUX_C_TERMINATE) and read its MUX_S_OK; one that closes at once is fine."""
    _mux_send(sock, _MUX_C_TERMINATE, _u32(2))
    with contextlib.suppress(ConnectionResetError):
        _mux_recv(sock)  # MUX_S_OK


def master_still_runs(keeper: socket.socket, wait: float = 0.0) -> bool:
    """Whether the master behind an idle control connection (non-blocking: a socket with a timeout would
    wait for data first) still runs. It never writes to an idle one, so readable means EOF: it exited.
    With ``wait``: up to that long for it to exit (it may end a session a moment before our keeper)."""
    try:
        if wait:
            select.select([keeper], [], [], wait)
        return keeper.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except (OSError, ValueError):  # ValueError: closed meanwhile (by another thread)
        return False


def mux_stdio_forward(control: socket.socket, sock: socket.socket, host: str, port: int) -> None:
    """Ask the master for a channel to host:port that it relays to ``sock`` (MUX_C_NEW_STDIO_FWD); returns
    once the server opened it, raises MuxRefused when it did not."""
    _mux_send(control, _MUX_C_NEW_STDIO_FWD, _u32(2), _string(""), _string(host), _u32(port))
    # The channel's input and output, one message each (as ssh -W passes its stdin and stdout).
    for _ in range(2):
        socket.send_fds(control, [b"\0"], [sock.fileno()])
    kind, body = _mux_recv(control)
    if kind == _MUX_S_SESSION_OPENED:
        control.settimeout(None)
        return
    if kind in (_MUX_S_FAILURE, _MUX_S_PERMISSION_DENIED):
        reason = _reason(body)
        if reason == "Session open refused by peer":
            reason = "the login node refused the connection"
        raise MuxRefused(reason)
    raise ConnectionResetError(f"the ssh master answered a channel request with message {kind:#x}")


class ChannelSocket(socket.socket):
    """Our end of a channel the master relays; closing it also ends its control connection."""

    def __init__(self, sock: socket.socket, control: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._control: socket.socket | None = control

    def close(self) -> None:
        try:
            super().close()
        finally:
            control, self._control = self._control, None
            if control is not None:
                control.close()

    def __repr__(self) -> str:
        return f"<hpcllm ssh channel fd={self.fileno()}>"
