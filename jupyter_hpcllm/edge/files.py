"""Reading files on the cluster: SFTP over the SSH connection, or the local file system.

Used for model facts (config.json, chat templates, weight sizes). SFTP needs no shell, so nothing here
builds shell text; a path may start with ``~/`` (the home directory).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..errors import ConnectionLost, TransportError
from .transport import REACH_HINT

if TYPE_CHECKING:
    import paramiko

    from .ssh import SSHTransport

_T = TypeVar("_T")

__all__ = ["FileInfo", "Files", "LocalFiles", "SFTPFiles"]


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    mtime: float
    is_dir: bool
    is_link: bool


class Files(Protocol):
    def list(self, path: str) -> list[FileInfo]:
        """Entries of a directory (links not followed); FileNotFoundError if it does not exist."""

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        """At most `limit` bytes of a file; FileNotFoundError if it does not exist."""


def _info(name: str, mode: int | None, size: int | None, mtime: float | None) -> FileInfo:
    mode = mode or 0
    return FileInfo(name, int(size or 0), float(mtime or 0), stat.S_ISDIR(mode), stat.S_ISLNK(mode))


class SFTPFiles:
    """Files over the connection's SFTP session. A read or listing that breaks because the connection
    died is made once more on a new connection (reads are safe to repeat), as commands are."""

    def __init__(self, transport: SSHTransport) -> None:
        self._transport = transport

    @staticmethod
    def _path(path: str) -> str:
        # SFTP paths are relative to the login directory: "~/x" is "x".
        return path[2:] if path.startswith("~/") else ("." if path == "~" else path)

    def list(self, path: str) -> list[FileInfo]:
        entries = self._retrying(f"list {path}", lambda sftp: sftp.listdir_attr(self._path(path)))
        return [_info(e.filename, e.st_mode, e.st_size, e.st_mtime) for e in entries]

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(self._path(path), "rb") as handle:
                return bytes(handle.read(limit))

        return self._retrying(f"read {path}", read)

    def _retrying(self, what: str, operation: Callable[[paramiko.SFTPClient], _T]) -> _T:
        import paramiko

        broken: BaseException | None = None
        for _ in range(2):  # a second time only when the connection broke under the first
            try:
                return operation(self._transport.sftp())
            except FileNotFoundError:
                raise FileNotFoundError(what.split(" ", 1)[1]) from None
            except (ConnectionLost, paramiko.SSHException, EOFError) as error:
                broken = error  # the connection (or its SFTP channel) died under the request
            except OSError as error:
                if getattr(error, "errno", None) == 2:
                    raise FileNotFoundError(what.split(" ", 1)[1]) from None
                raise TransportError(f"Cannot {what} on the cluster: {error}.") from None
        raise ConnectionLost(f"Cannot {what} on the cluster: the connection broke ({broken}).", REACH_HINT)


class LocalFiles:
    """Files of this machine (Jupyter on the cluster): the same errors as SFTPFiles'."""

    def list(self, path: str) -> list[FileInfo]:
        full = os.path.expanduser(path)
        result = []
        try:
            with os.scandir(full) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    result.append(_info(entry.name, info.st_mode, info.st_size, info.st_mtime))
        except FileNotFoundError:
            raise FileNotFoundError(path) from None
        except OSError as error:  # not a directory, a name too long, no permission
            raise TransportError(f"Cannot list {path}: {error.strerror or error}.") from None
        return result

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        try:
            with open(os.path.expanduser(path), "rb") as handle:
                return handle.read(limit)
        except FileNotFoundError:
            raise FileNotFoundError(path) from None
        except OSError as error:
            raise TransportError(f"Cannot read {path}: {error.strerror or error}.") from None
