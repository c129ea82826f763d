"""The keys a login offers, in OpenSSH's order: the agent's (only those of the identity files with
IdentitiesOnly), then the identity files not in the agent, each key with its certificates first.

Files are read, and passphrases asked, only when their turn comes. A key that cannot be used (a
missing file, a wrong passphrase, an agent that does not answer) is skipped with a note that the
login's error message repeats.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .sshcert import CERT_SUFFIX, Certificate
from .sshconfig import SSHTarget

if TYPE_CHECKING:
    import paramiko

__all__ = ["Keys"]


class Keys:
    """The keys to offer to ``target``, iterated once. ``ask`` asks the person for a passphrase (None:
    nobody can answer); ``notes`` collects why a key was skipped. ``close`` closes the agent."""

    def __init__(self, target: SSHTarget, timeout: float, ask: Callable[[str], str] | None,
                 notes: list[str]) -> None:
        self.target, self.timeout, self.ask, self.notes = target, timeout, ask, notes
        self.agent_keys: tuple[paramiko.PKey, ...] = ()
        self.closers: list[Callable[[], object]] = []

    def __iter__(self) -> Iterator[paramiko.PKey]:
        """The agent's keys (with IdentitiesOnly, only the identity files'), then the identity files not
        in the agent; each key with its certificates first."""
        self._open_agent()
        target = self.target
        explicit = bool(target.identity_files)  # missing default files are no news
        files = [f for f in target.key_files if explicit or os.path.exists(f)]
        publics = {blob: f for f in files if (blob := _public_blob(f)) is not None}
        certificates = [c for c in (_read_certificate(p, self.notes) for p in target.certificate_files) if c]
        in_agent: set[str | None] = set()
        for key in self.agent_keys:
            file = publics.get(_plain_blob(key))
            if file is None and target.identities_only:
                continue
            in_agent.add(file)
            yield from _with_certificates(key, certificates + _own_certificates(file))
        for file in files:
            if file not in in_agent:
                loaded = self._load(file)
                if loaded is not None:
                    yield from _with_certificates(loaded, certificates + _own_certificates(file))

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def _open_agent(self) -> None:
        import paramiko

        setting = self.target.identity_agent
        path = setting or os.environ.get("SSH_AUTH_SOCK")
        if setting == "none" or (path is None and os.name != "nt"):
            return
        try:
            if os.name == "nt" or path is None:  # Windows: paramiko finds Pageant or OpenSSH's agent pipe
                agent = paramiko.Agent()
                self.closers.append(agent.close)
                self.agent_keys = tuple(agent.get_keys())
            else:
                self.agent_keys = tuple(self._unix_agent(path))
        except (OSError, paramiko.SSHException) as error:
            self.notes.append(f"the ssh-agent at {path} did not answer ({error})")
        except Exception as error:  # paramiko's private agent API changed or failed in a way it never did
            self.notes.append(f"the ssh-agent at {path} was skipped: paramiko could not use it "
                              f"({type(error).__name__}: {error})")

    def _unix_agent(self, path: str) -> tuple[paramiko.PKey, ...]:
        """The keys of the agent at ``path``. (paramiko's Agent reads only $SSH_AUTH_SOCK; its AgentSSH
        takes any socket through a private method, checked here since paramiko may change it.)"""
        from paramiko.agent import AgentSSH

        agent = AgentSSH()
        connect = getattr(agent, "_connect", None)
        if not callable(connect):
            raise AttributeError("paramiko.agent.AgentSSH has no _connect")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.closers.append(conn.close)
        conn.settimeout(self.timeout)
        conn.connect(path)
        connect(conn)
        return tuple(agent.get_keys())

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
        if self.ask is None:
            self.notes.append(f"{file} is encrypted and nothing here can ask for its passphrase (load it with "
                              "`ssh-add`)")
            return None
        passphrase = self.ask(f"Passphrase for {file}: ")
        try:
            # paramiko 5.1 hands the password to cryptography as is, which wants bytes.
            return _without_certificate(paramiko.PKey.from_path(file, cast(Any, passphrase.encode())))
        except Exception:
            self.notes.append(f"the passphrase for {file} is wrong")
            return None


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
