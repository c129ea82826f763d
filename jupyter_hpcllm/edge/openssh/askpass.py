"""Who answers ssh's questions while a master starts (a passphrase, a one-time code, a key touch).

With a prompt from the face, ``AskpassBridge`` makes ssh run a small SSH_ASKPASS program that passes
each question over a unix socket to the thread that starts the master, which answers with the prompt (a
notebook's input works only in the cell's own thread). Without one, ssh asks at the terminal if there is
one we own (``has_terminal``). Either way ``StderrCollector`` keeps what ssh writes on stderr: the
instructions that come with a question, and the text of the error if it fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

from ...errors import AuthenticationError
from ..transport import Prompt
from .mux import peer_uid
from .options import ensure_private_dir

__all__ = ["AskpassBridge", "StderrCollector", "has_terminal"]


def has_terminal() -> bool:
    """Whether ssh can ask the person at the keyboard: stdin is a terminal and we are in its foreground."""
    try:
        return bool(sys.stdin) and os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except (OSError, AttributeError, ValueError):
        return False


class StderrCollector:
    """ssh's stderr, kept (for the error) and, while ssh asks at the terminal, copied to ours (MFA
    instructions come on stderr, the question on /dev/tty)."""

    def __init__(self, source: IO[bytes], *, echo: bool) -> None:
        self._source = source
        self._echo = echo
        self._chunks: list[bytes] = []
        self._shown = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="hpcllm-ssh-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self._source.fileno(), 4096):
                with self._lock:
                    self._chunks.append(chunk)
                if self._echo:
                    with contextlib.suppress(Exception):
                        sys.stderr.write(chunk.decode(errors="replace"))
                        sys.stderr.flush()

    def new_text(self) -> str:
        """What ssh wrote since the last call (the instructions that come with a question)."""
        time.sleep(0.05)  # ssh writes them just before it runs the askpass program
        with self._lock:
            chunks, self._shown = self._chunks[self._shown:], len(self._chunks)
        return b"".join(chunks).decode(errors="replace")

    def text(self) -> str:
        # ssh -f points the background master's stderr at /dev/null, so the pipe ends with the foreground
        # process; an older ssh may keep it: do not wait for that.
        self._thread.join(2.0)
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")


# The SSH_ASKPASS program: passes ssh's question to the socket of the process that started ssh, prints the
# answer. Isolated Python (-I -S), standard library only.
_ASKPASS_CODE = """
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HPCLLM_ASKPASS_SOCKET"])
question = {"text": sys.argv[1] if len(sys.argv) > 1 else "", "kind": os.environ.get("SSH_ASKPASS_PROMPT", "")}
s.sendall(json.dumps(question).encode() + b"\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
answer = json.loads(data or b"null")
if answer is None:
    sys.exit(1)
sys.stdout.write(answer + "\\n")
"""


class AskpassBridge:
    """SSH_ASKPASS for one master start: ssh runs a small program that asks us over a unix socket; ``serve``
    answers with the face's prompt, in the calling thread. The answer (a one-time code) reaches no other
    user: the socket and the program are in a new directory (0700) in our private one, and a connection
    from a process of another user is closed unanswered."""

    def __init__(self, directory: str) -> None:
        ensure_private_dir(directory)
        self.directory = tempfile.mkdtemp(prefix="ask-", dir=directory)  # 0700, made anew: nobody else's
        self.socket_path = os.path.join(self.directory, "s")
        self.script = os.path.join(self.directory, "askpass")
        python = shlex.quote(sys.executable or "python3")
        descriptor = os.open(self.script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        with os.fdopen(descriptor, "w") as script:
            script.write(f"#!/bin/sh\nexec {python} -I -S -c {shlex.quote(_ASKPASS_CODE)} \"$@\"\n")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(4)
        self._listener.settimeout(0.2)
        self.env = {"SSH_ASKPASS": self.script, "SSH_ASKPASS_REQUIRE": "force",
                    "HPCLLM_ASKPASS_SOCKET": self.socket_path}

    def serve(self, process: subprocess.Popen[bytes], prompt: Prompt, errors: StderrCollector, deadline: float) -> None:
        """Answer ssh's questions until it exits (authenticated, or failed) or the deadline passes."""
        import json

        while process.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(process.args, 0)
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                if peer_uid(connection) not in (None, os.geteuid()):
                    continue  # not the program ssh ran (that runs as us): never shown the answer
                connection.settimeout(10.0)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    question = json.loads(data or b"{}")
                except ValueError:
                    question = {}
                text = str(question.get("text", ""))
                kind = str(question.get("kind", ""))
                said = errors.new_text().strip()
                if kind == "none":  # a notice (touch your security key): nothing to answer
                    with contextlib.suppress(Exception):
                        sys.stderr.write(text.rstrip() + "\n")
                    connection.sendall(b"null")
                    continue
                try:
                    answer = prompt(f"{said}\n{text}" if said else text, kind == "confirm")
                except Exception as error:
                    connection.sendall(b"null")
                    raise AuthenticationError(
                        f"ssh asked {text.strip()!r}, and the answer could not be read: {error}.",
                        "Connect from a terminal, or open a shared connection there first (see the "
                        "profile's ssh_backend in the README).",
                    ) from error
                connection.sendall(json.dumps(answer).encode())

    def close(self) -> None:
        self._listener.close()
        for path in (self.socket_path, self.script):
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
