"""One SSH session over a given socket, made as OpenSSH makes it: key exchange, host key check,
then login.

``start_session`` asks first for the host key algorithms known_hosts can check, checks the key
(``KnownHosts.check``), and logs in with, in OpenSSH's order: the agent's keys (only those of the
identity files with IdentitiesOnly), the identity files (each with its certificates first), then
keyboard-interactive and password. A login that needs a second factor after the key (sshd's
``AuthenticationMethods publickey,keyboard-interactive``) works. Questions reach the person through
``prompt`` once per connection, asked on the calling thread (a notebook's input works there); without
``prompt`` they are an error, never a hang. Every wait is bounded; a failure closes the transport
and its socket and ends its thread.
"""

from __future__ import annotations

import base64
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import AuthenticationError, ConnectError, HpcllmError
from .hostkeys import CERT_SUFFIX, Certificate, KnownHosts
from .sshconfig import SSHTarget
from .sshtuning import transport_options, tune_transport
from .transport import REACH_HINT, Prompt

if TYPE_CHECKING:
    import paramiko

__all__ = ["start_session"]

# After the person answers, the server may wait for more (a push to approve on a phone): this long at least.
ANSWER_WAIT = 90.0



def start_session(
    sock: socket.socket | paramiko.Channel | paramiko.ProxyCommand,
    target: SSHTarget,
    known_hosts: KnownHosts,
    *,
    timeout: float,
    prompt: Prompt | None,
) -> paramiko.Transport:
    """An authenticated paramiko Transport over ``sock`` to ``target``. Raises ConnectError,
    HostKeyError or AuthenticationError; on any failure the transport, its thread and ``sock`` are closed."""
    try:
        transport = _transport_class()(sock, known_hosts.preferred_key_types(target.known_hosts_name) or (),
                                       **transport_options())
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
        tune_transport(transport)
        _handshake(transport, target, timeout)
        known_hosts.check(target.known_hosts_name, transport.get_remote_server_key(), target=target)
        _Login(transport, target, timeout, prompt).run()
    except BaseException:
        _shutdown(transport, sock, timeout)
        raise
    return transport


@functools.cache
def _transport_class() -> Callable[..., paramiko.Transport]:
    import paramiko

    class Transport(paramiko.Transport):
        """paramiko's Transport asking first for the given host key algorithms. (paramiko puts all
        certificate algorithms last, so a server would never present its host certificate.)"""

        def __init__(self, sock: Any, first: tuple[str, ...], **options: Any) -> None:
            super().__init__(sock, **options)
            self._first_host_keys = first

        @property
        def preferred_keys(self) -> tuple[str, ...]:
            offered = tuple(super().preferred_keys)  # honours disabled_algorithms and tune_transport
            first = [k for k in self._first_host_keys if k in offered]
            return (*first, *(k for k in offered if k not in first))

    return Transport


def _handshake(transport: paramiko.Transport, target: SSHTarget, timeout: float) -> None:
    import paramiko

    try:
        transport.start_client(timeout=timeout)
    except paramiko.SSHException as error:
        raise ConnectError(f"SSH to {target.display} failed: {error}.", REACH_HINT) from None
    except (OSError, EOFError) as error:
        raise ConnectError(f"Cannot reach {target.display}: {error}.", REACH_HINT) from None
    if not transport.initial_kex_done:  # start_client returns at its timeout without saying so
        raise ConnectError(f"{target.display} did not finish the SSH handshake within {timeout:g} s.", REACH_HINT)


def _shutdown(transport: paramiko.Transport, sock: Any, timeout: float) -> None:
    """Close everything start_session made: the transport, the socket, and wait for the thread."""
    transport.close()
    sock.close()  # Transport.close skips it when the handshake already failed
    if transport.is_alive() and transport is not threading.current_thread():
        transport.join(timeout)


class _Login:
    """Logs in on a transport whose host key was checked; each question asked at most once."""

    def __init__(self, transport: paramiko.Transport, target: SSHTarget, timeout: float,
                 prompt: Prompt | None) -> None:
        self.transport, self.target, self.timeout, self.prompt = transport, target, timeout, prompt
        self.notes: list[str] = []  # why a key could not be offered, for the error message
        self.offered = 0  # keys offered
        self.key_accepted = False  # a key was accepted and the server wants more (partial success)
        self.shown: set[str] = set()  # keyboard-interactive names and instructions already shown
        self.agent_keys: tuple[paramiko.PKey, ...] = ()
        self.closers: list[Callable[[], object]] = []

    def run(self) -> None:
        user = self.target.user
        transport = self.transport
        try:
            _, allowed = self._attempt(lambda: transport.auth_none(user), [], "login")
            keys = None
            rounds = 0  # of questions: a second round only after the first was accepted
            while not transport.is_authenticated():
                if "publickey" in allowed:
                    keys = keys or self._keys()
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
            for close in self.closers:
                close()

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
        return True, [] if self.transport.is_authenticated() else list(more)

    # Keys, in OpenSSH's order.

    def _keys(self) -> Iterator[paramiko.PKey]:
        """The agent's keys (with IdentitiesOnly, only the identity files'), then the identity files not
        in the agent; each key with its certificates first. Files are read (and passphrases asked) lazily."""
        self._open_agent()
        explicit = bool(self.target.identity_files)  # missing default files are no news
        files = [f for f in self.target.key_files if explicit or os.path.exists(f)]
        publics = {blob: f for f in files if (blob := _public_blob(f)) is not None}
        certificates = [c for c in (_read_certificate(p, self.notes) for p in self.target.certificate_files) if c]
        in_agent: set[str | None] = set()
        for key in self.agent_keys:
            file = publics.get(_plain_blob(key))
            if file is None and self.target.identities_only:
                continue
            in_agent.add(file)
            yield from _with_certificates(key, certificates + _own_certificates(file))
        for file in files:
            if file not in in_agent:
                loaded = self._load(file)
                if loaded is not None:
                    yield from _with_certificates(loaded, certificates + _own_certificates(file))

    def _open_agent(self) -> None:
        import paramiko
        from paramiko.agent import AgentSSH

        setting = self.target.identity_agent
        path = setting or os.environ.get("SSH_AUTH_SOCK")
        if setting == "none" or (path is None and os.name != "nt"):
            return
        try:
            agent: AgentSSH
            if os.name == "nt" or path is None:  # Windows: paramiko finds Pageant or OpenSSH's agent pipe
                agent = windows = paramiko.Agent()
                self.closers.append(windows.close)
            else:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.closers.append(conn.close)
                conn.settimeout(self.timeout)
                conn.connect(path)
                agent = AgentSSH()
                agent._connect(conn)  # type: ignore[attr-defined]  # paramiko's Agent reads only $SSH_AUTH_SOCK
            self.agent_keys = agent.get_keys()
        except (OSError, paramiko.SSHException) as error:
            self.notes.append(f"the ssh-agent at {path} did not answer ({error})")

    def _load(self, file: str) -> paramiko.PKey | None:
        """The private key in ``file``, its passphrase asked once; None (and a note) if unusable."""
        import paramiko

        try:
            return _without_certificate(paramiko.PKey.from_path(file))
        except FileNotFoundError:
            self.notes.append(f"{file} does not exist")
            return None
        except (TypeError, paramiko.PasswordRequiredException):
            pass  # encrypted
        except Exception as error:
            self.notes.append(f"{file} cannot be used by paramiko ({error}; a FIDO key needs "
                              "ssh_backend = \"openssh\")")
            return None
        if self.prompt is None:
            self.notes.append(f"{file} is encrypted and nothing here can ask for its passphrase (load it with "
                              "`ssh-add`)")
            return None
        passphrase = self._ask(f"Passphrase for {file}: ", False)
        try:
            # paramiko 5.1 hands the password to cryptography as is, which wants bytes.
            return _without_certificate(paramiko.PKey.from_path(file, cast(Any, passphrase.encode())))
        except Exception:
            self.notes.append(f"the passphrase for {file} is wrong")
            return None

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


def _plain_blob(key: paramiko.PKey) -> bytes:
    """The public key blob of a key, of the certified key for a certificate the agent holds."""
    blob = key.asbytes()
    try:
        return Certificate.parse(blob).public_key
    except ValueError:
        return blob


def _public_blob(file: str) -> bytes | None:
    """A private key file's public key without decrypting it: from FILE.pub, or the cleartext header
    of OpenSSH's key format. None if neither says."""
    import paramiko

    try:
        fields = Path(file + ".pub").read_text().split()
        return base64.b64decode(fields[1])
    except (OSError, IndexError, ValueError):
        pass
    try:
        text = Path(file).read_text()
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----")[1].split("-----END")[0]
        data = base64.b64decode("".join(body.split()))
        magic = b"openssh-key-v1\0"
        if not data.startswith(magic):
            return None
        message = paramiko.Message(data[len(magic):])
        message.get_string(), message.get_string(), message.get_string(), message.get_int()  # cipher, kdf
        return message.get_string()
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return None


def _read_certificate(file: str, notes: list[str]) -> str | None:
    try:
        return Path(file).read_text().strip()
    except OSError as error:
        notes.append(f"cannot read the certificate {file} ({error.strerror})")
        return None


def _own_certificates(file: str | None) -> list[str]:
    """FILE-cert.pub, which OpenSSH offers with FILE."""
    if file is None:
        return []
    try:
        return [Path(file + "-cert.pub").read_text().strip()]
    except OSError:
        return []


def _without_certificate(key: paramiko.PKey) -> paramiko.PKey:
    key.public_blob = None  # PKey.from_path loads FILE-cert.pub; _with_certificates offers it
    return key


def _with_certificates(key: paramiko.PKey, certificates: list[str]) -> Iterator[paramiko.PKey]:
    """``key`` with each certificate of it in turn, then plain (the same object, changed between tries)."""
    plain = _plain_blob(key)
    if plain != key.asbytes():  # the agent holds a certificate: offer it as it is
        yield key
        return
    for text in dict.fromkeys(certificates):
        try:
            blob = base64.b64decode(text.split()[1])
            if not text.split()[0].endswith(CERT_SUFFIX) or Certificate.parse(blob).public_key != plain:
                continue
            key.load_certificate(text)
        except (IndexError, ValueError):
            continue
        yield key
    key.public_blob = None
    yield key

