"""Reading files on the cluster: SFTP over the SSH connection, or the local file system.

Used for model facts (config.json, chat templates, weight sizes). SFTP needs no shell, so nothing here
builds shell text; a path may start with ``~/`` (the home directory).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import TransportError

if TYPE_CHECKING:
    from .ssh import SSHTransport

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
    def __init__(self, transport: SSHTransport) -> None:
        self._transport = transport

    @staticmethod
    def _path(path: str) -> str:
        # SFTP paths are relative to the login directory: "~/x" is "x".
        return path[2:] if path.startswith("~/") else ("." if path == "~" else path)

    def list(self, path: str) -> list[FileInfo]:
        try:
            entries = self._transport.sftp().listdir_attr(self._path(path))
        except OSError as error:
            if isinstance(error, FileNotFoundError) or getattr(error, "errno", None) == 2:
                raise FileNotFoundError(path) from None
            raise TransportError(f"Cannot list {path} on the cluster: {error}.") from None
        return [_info(e.filename, e.st_mode, e.st_size, e.st_mtime) for e in entries]

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        try:
            with self._transport.sftp().open(self._path(path), "rb") as handle:
                return bytes(handle.read(limit))
        except OSError as error:
            if isinstance(error, FileNotFoundError) or getattr(error, "errno", None) == 2:
                raise FileNotFoundError(path) from None
            raise TransportError(f"Cannot read {path} on the cluster: {error}.") from None


class LocalFiles:
    def list(self, path: str) -> list[FileInfo]:
        full = os.path.expanduser(path)
        result = []
        with os.scandir(full) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                result.append(_info(entry.name, info.st_mode, info.st_size, info.st_mtime))
        return result

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        with open(os.path.expanduser(path), "rb") as handle:
            return handle.read(limit)
