"""Files on the cluster for the OpenSSH backend: ``find`` and ``head`` run through the master.

The system ssh has no SFTP client we could drive in-process, so each call is one shell command over
``OpenSSHTransport.run_bytes`` (GNU findutils and coreutils on the cluster). Paths are quoted for the
shell, except a leading ``~/`` that the shell must expand; a missing path is the exit status
``_MISSING``, read as FileNotFoundError. Every command only reads, so one that the master's death broke
(ConnectionLost) runs once more, on a new master.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from ...errors import ConnectionLost, TransportError
from ..files import FileInfo

if TYPE_CHECKING:
    from .transport import OpenSSHTransport

__all__ = ["ShellFiles"]

_MISSING = 44  # the exit status our file commands use for "no such file or directory"


def _shell_path(path: str) -> str:
    """A path as shell text: quoted, but a leading ``~/`` left bare so that the shell expands it."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:]) if path[2:] else "~/"
    if path.startswith("-"):
        path = "./" + path  # never an option of find or head
    return shlex.quote(path)


class ShellFiles:
    """Files on the cluster through commands of the transport (one command per call)."""

    def __init__(self, transport: OpenSSHTransport) -> None:
        self._transport = transport

    def _run(self, command: str, what: str, path: str) -> bytes:
        """The output of a command that only reads (once more on a new connection if the master died
        under it); FileNotFoundError for a missing path, TransportError for any other failure."""
        try:
            status, out, err = self._transport.run_bytes(command)
        except ConnectionLost:
            status, out, err = self._transport.run_bytes(command)
        if status == _MISSING:
            raise FileNotFoundError(path)
        if status != 0:
            detail = err.decode(errors="replace").strip() or f"exit status {status}"
            raise TransportError(f"Cannot {what} {path} on the cluster: {detail.splitlines()[-1]}.")
        return out

    def list(self, path: str) -> list[FileInfo]:
        where = _shell_path(path)
        command = (f"if [ -d {where} ]; then exec find -H {where} -mindepth 1 -maxdepth 1 "
                   f"-printf '%y %s %T@ %P\\0'; elif [ -e {where} ] || [ -L {where} ]; then "
                   f"echo 'Not a directory' >&2; exit 1; else exit {_MISSING}; fi")
        out = self._run(command, "list", path)
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            kind, size, mtime, name = record.split(b" ", 3)
            entries.append(FileInfo(name.decode(errors="replace"), int(size), float(mtime),
                                    kind == b"d", kind == b"l"))
        return entries

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        where = _shell_path(path)
        command = f"if [ -e {where} ]; then exec head -c {int(limit)} -- {where}; else exit {_MISSING}; fi"
        return self._run(command, "read", path)
