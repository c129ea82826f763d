"""SFTP reads when the connection dies under them: once more on a new connection, then a clear error."""

from __future__ import annotations

from typing import Any

import paramiko
import pytest

from jupyter_hpcllm.edge.files import SFTPFiles
from jupyter_hpcllm.errors import ConnectionLost, TransportError


class Attr:
    def __init__(self, name: str) -> None:
        self.filename, self.st_mode, self.st_size, self.st_mtime = name, 0o100644, 3, 1.0


class Sessions:
    """Stands for SSHTransport.sftp(): each call may be a new session; the first `broken` ones fail."""

    def __init__(self, broken: int, error: BaseException) -> None:
        self.broken, self.error, self.opened = broken, error, 0

    def sftp(self) -> Any:
        self.opened += 1
        sessions = self

        class Session:
            def listdir_attr(self, path: str) -> list[Attr]:
                if sessions.opened <= sessions.broken:
                    raise sessions.error
                if path == "missing":
                    raise FileNotFoundError(2, "No such file")
                return [Attr("config.json")]

        return Session()


@pytest.mark.parametrize("error", [paramiko.SSHException("Server connection dropped"), EOFError(),
                                   ConnectionLost("the connection broke")])
def test_a_listing_that_breaks_is_made_once_more(error: BaseException):
    sessions = Sessions(broken=1, error=error)
    assert [f.name for f in SFTPFiles(sessions).list("~/models")] == ["config.json"]  # type: ignore[arg-type]
    assert sessions.opened == 2


def test_a_listing_that_breaks_twice_is_one_clear_error():
    sessions = Sessions(broken=2, error=paramiko.SSHException("Server connection dropped"))
    with pytest.raises(ConnectionLost, match="Cannot list ~/models on the cluster: the connection broke"):
        SFTPFiles(sessions).list("~/models")  # type: ignore[arg-type]
    assert sessions.opened == 2


def test_missing_files_and_other_failures_are_not_retried():
    sessions = Sessions(broken=0, error=EOFError())
    with pytest.raises(FileNotFoundError):
        SFTPFiles(sessions).list("missing")  # type: ignore[arg-type]
    sessions = Sessions(broken=5, error=PermissionError(13, "Permission denied"))
    with pytest.raises(TransportError, match="Permission denied"):
        SFTPFiles(sessions).list("~/x")  # type: ignore[arg-type]
    assert sessions.opened == 1
