"""The login on an SSH transport whose host key was checked, as OpenSSH logs in.

``Login(...).run()`` tries, in OpenSSH's order, the keys of ``sshkeys.Keys`` (agent, identity files,
certificates), then keyboard-interactive and password. A login that needs a second factor after the
key (sshd's ``AuthenticationMethods publickey,keyboard-interactive``) works. Questions reach the
person through ``prompt``, each at most once, asked on the calling thread (a notebook's input works
there); without ``prompt`` they are an error, never a hang. Every refusal is an error that says why.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..errors import AuthenticationError, ConnectError, HpcllmError
from .sshconfig import SSHTarget
from .sshkeys import Keys
from .transport import REACH_HINT, Prompt

if TYPE_CHECKING:
    import paramiko

__all__ = ["ANSWER_WAIT", "Login"]

# After the person answers, the server may wait for more (a push to approve on a phone): this long at least.
ANSWER_WAIT = 90.0


class Login:
    """Logs in on a transport whose host key was checked; each question asked at most once."""

    def __init__(self, transport: paramiko.Transport, target: SSHTarget, timeout: float,
                 prompt: Prompt | None) -> None:
        self.transport, self.target, self.timeout, self.prompt = transport, target, timeout, prompt
        self.notes: list[str] = []  # why a key could not be offered, for the error message
        self.offered = 0  # keys offered
        self.key_accepted = False  # a key was accepted and the server wants more (partial success)
        self.shown: set[str] = set()  # keyboard-interactive names and instructions already shown
        self.keys = Keys(target, timeout, self._passphrase if prompt is not None else None, self.notes)

    def run(self) -> None:
        user = self.target.user
        transport = self.transport
        try:
            _, allowed = self._attempt(lambda: transport.auth_none(user), [], "login")
            keys: Iterator[paramiko.PKey] | None = None
            rounds = 0  # of questions: a second round only after the first was accepted
            while not transport.is_authenticated():
                if "publickey" in allowed:
                    keys = keys or iter(self.keys)
                    key = next(keys, None)
                    if key is not None:
                        self.offered += 1
                        try_key = functools.partial(transport.auth_publickey, user, key)
                        accepted, allowed = self._attempt(try_key, allowed, "key")
                        self.key_accepted = self.key_accepted or accepted
                        continue
                    allowed = [m for m in allowed if m != "publickey"]
                method = next((m for m in ("keyboard-interactive", "password") if m in allowed), None)
                if method is None or (method == "password" and self.prompt is None) or rounds >= 4:
                    raise self._refused(allowed)
                # keyboard-interactive is tried without a prompt too: it may ask nothing (a push to approve).
                rounds += 1
                answer = self._interactive if method == "keyboard-interactive" else self._password
                accepted, allowed = self._attempt(answer, allowed, "answer")
                if not accepted:
                    raise AuthenticationError(
                        f"{self.target.display} refused the password or code you entered.",
                        f"Connect again to retry; check that `ssh {self.target.alias}` works from a terminal.",
                    )
        finally:
            self.keys.close()

    def _attempt(self, method: Callable[[], list[str]], allowed: list[str], what: str) -> tuple[bool, list[str]]:
        """Run one auth request: (accepted, the methods the server allows next)."""
        import paramiko

        try:
            more = method()
        except paramiko.BadAuthenticationType as error:
            return False, list(error.allowed_types)
        except paramiko.SSHException as error:  # AuthenticationException included
            if not self.transport.is_active():
                raise self._closed(what) from None
            if isinstance(error, paramiko.AuthenticationException):
                return False, allowed
            raise ConnectError(f"SSH to {self.target.display} failed while logging in: {error}.", REACH_HINT) from None
        except (EOFError, OSError) as error:  # paramiko hands on what ended its connection (EOF, a socket error)
            if not self.transport.is_active():
                raise self._closed(what) from None
            raise ConnectError(f"SSH to {self.target.display} failed while logging in: "
                               f"{error or type(error).__name__}.", REACH_HINT) from None
        return True, [] if self.transport.is_authenticated() else list(more)

    # Questions for the person.

    def _ask(self, text: str, echo: bool) -> str:
        if self.prompt is None:
            raise self._needs_prompt()
        try:
            return self.prompt(text, echo)
        except HpcllmError:
            raise
        except Exception as error:
            raise AuthenticationError(
                f"Could not ask for the login to {self.target.display}: {error or type(error).__name__}.",
                "Connect from a terminal (`hpcllm`) or a notebook cell, which can ask.",
            ) from None

    def _passphrase(self, text: str) -> str:
        return self._ask(text, False)

    def _password(self) -> list[str]:
        host = self.target.host_key_alias or self.target.hostname
        password = self._ask(f"{self.target.user}@{host}'s password: ", False)
        return self.transport.auth_password(self.target.user, password, fallback=False)

    def _interactive(self) -> list[str]:
        """keyboard-interactive, its questions asked on this thread. (paramiko would call the handler
        on its own thread, and time the person out after auth_timeout.)"""
        from paramiko.auth_handler import AuthHandler

        transport = self.transport
        questions: queue.Queue[tuple[str, str, list[tuple[str, bool]]]] = queue.Queue()
        answers: queue.Queue[list[str] | None] = queue.Queue()

        def relay(title: str, instructions: str, fields: list[tuple[str, bool]]) -> list[str]:
            """On paramiko's thread: hand the questions over, wait for the answers."""
            if not fields:
                return []
            questions.put((title, instructions, fields))
            while transport.is_active():
                try:
                    reply = answers.get(timeout=0.1)
                except queue.Empty:
                    continue
                return reply or []  # None: the login gave up and is closing the transport
            return []

        done = threading.Event()
        handler = transport.auth_handler = AuthHandler(transport)  # as Transport.auth_interactive does
        handler.auth_interactive(self.target.user, relay, done, "")
        deadline = time.monotonic() + self.timeout
        while not done.wait(0.05) and transport.is_active():
            try:
                title, instructions, fields = questions.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AuthenticationError(
                        f"{self.target.display} did not answer the login within {self.timeout:g} s.",
                        REACH_HINT) from None
                continue
            try:
                reply = self._answers(title, instructions, fields)
            except BaseException:
                answers.put(None)
                raise
            answers.put(reply)
            deadline = time.monotonic() + max(self.timeout, ANSWER_WAIT)
        return list(handler.wait_for_response(done))

    def _answers(self, title: str, instructions: str, fields: list[tuple[str, bool]]) -> list[str]:
        host = self.target.host_key_alias or self.target.hostname
        header = "\n".join(t.strip() for t in (title, instructions) if t.strip() and t.strip() not in self.shown)
        self.shown.update(t.strip() for t in (title, instructions))
        replies = []
        for question, echo in fields:
            text = f"({self.target.user}@{host}) {question}"
            replies.append(self._ask(f"{header}\n{text}" if header else text, echo))
            header = ""
        return replies

    # Errors.

    def _refused(self, allowed: list[str]) -> AuthenticationError:
        target = self.target
        if "password" in allowed and self.prompt is None:
            return self._needs_prompt()
        if not self.offered and allowed and not {"publickey", "keyboard-interactive", "password"} & set(allowed):
            return AuthenticationError(
                f"{target.display} accepts only {', '.join(allowed)} logins, which paramiko cannot do.",
                "Set ssh_backend = \"openssh\" in the profile (it uses your system's ssh, Kerberos included).",
            )
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        offered = f"{self.offered} offered" if self.offered else "we found none to offer"
        return AuthenticationError(
            f"SSH to {target.display} refused our keys ({offered}{notes}).",
            f"Check that `ssh {target.alias}` works from a terminal; load your key with `ssh-add`, or set "
            "identity_file in the profile (`hpcllm config show` prints what is used).",
        )

    def _needs_prompt(self) -> AuthenticationError:
        target = self.target
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        first = (f"{target.display} accepted our key but also asks for" if self.key_accepted
                 else f"SSH to {target.display} refused our keys{notes}: the login node asks for")
        return AuthenticationError(
            f"{first} a password or one-time code, and nothing here can ask you.",
            "A terminal (`hpcllm`) or a notebook cell can answer it when it connects; or set "
            "ssh_backend = \"openssh\" in the profile, to log in once through an OpenSSH ControlMaster.",
        )

    def _closed(self, what: str) -> HpcllmError:
        target = self.target
        if what == "key" and self.offered > 1:
            return AuthenticationError(
                f"SSH to {target.display} refused our keys and closed the connection after {self.offered} of them "
                "(too many keys offered: sshd's MaxAuthTries).",
                "Name the right key with identity_file in the profile (or IdentityFile and IdentitiesOnly yes in "
                f"your ssh config); `ssh -v {target.alias}` shows which key works.",
            )
        late = " (it does not wait long for an answer)" if what == "answer" else ""
        return ConnectError(f"{target.display} closed the connection during the login{late}.",
                            f"Connect again; check that `ssh {target.alias}` works from a terminal.")
