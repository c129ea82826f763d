"""Host keys checked as OpenSSH checks them, never trusted silently (no auto-add).

``KnownHosts`` reads known_hosts files (the user's, then the global ones; missing files are skipped):
plain and hashed (``|1|``) host names, ``*``/``?`` wildcards and ``!`` negation, ``@revoked`` keys and
``@cert-authority`` CAs. ``check`` accepts a host key that known_hosts lists, or a host certificate
signed by a CA trusted for the host (signature, principal and validity checked here, since paramiko
does not); a certificate that fails falls back to its plain key, as in OpenSSH. Every refusal is a
``HostKeyError`` that says why and what to do.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HostKeyError

if TYPE_CHECKING:
    import paramiko

    from .sshconfig import SSHTarget

__all__ = ["CERT_SUFFIX", "Certificate", "KnownHosts", "fingerprint"]

CERT_SUFFIX = "-cert-v01@openssh.com"
# The host key algorithms paramiko speaks, in its order of preference.
_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
               "rsa-sha2-512", "rsa-sha2-256")
# How many public-key fields follow the type (and, in a certificate, the nonce) for each key type.
_KEY_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "ssh-dss": 4, "sk-ssh-ed25519@openssh.com": 2}
_USER_CERT, _HOST_CERT = 1, 2


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_type(algorithm: str) -> str:
    """The key type of a host key algorithm (``rsa-sha2-512`` → ``ssh-rsa``)."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


class _Reader:
    """Reads the SSH wire format: uint32, uint64 and length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise ValueError("truncated")
        self.at += size
        return self.data[self.at - size:self.at]

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _blob_type(blob: bytes) -> str:
    return _Reader(blob).string().decode(errors="replace")


@dataclass(frozen=True)
class Certificate:
    """An OpenSSH certificate (PROTOCOL.certkeys), parsed."""

    key_type: str  # e.g. ssh-ed25519-cert-v01@openssh.com
    public_key: bytes  # the certified key, as a plain public key blob
    cert_type: int  # 1: user, 2: host
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    ca_key: bytes
    signed: bytes  # everything the CA signed
    signature: bytes

    @classmethod
    def parse(cls, blob: bytes) -> Certificate:
        """Raises ValueError if the blob is not a certificate of a key type known here."""
        reader = _Reader(blob)
        key_type = reader.string().decode(errors="replace")
        plain = key_type.removesuffix(CERT_SUFFIX)
        fields = 2 if plain.startswith(("ecdsa-sha2-", "sk-ecdsa-")) else _KEY_FIELDS.get(plain)
        if not key_type.endswith(CERT_SUFFIX) or fields is None:
            raise ValueError(f"not a certificate of a known key type: {key_type}")
        reader.string()  # nonce
        start = reader.at
        for _ in range(fields + (plain == "sk-ecdsa-sha2-nistp256@openssh.com")):
            reader.string()
        public_key = _string(plain.encode()) + blob[start:reader.at]
        reader.uint64()  # serial
        cert_type = reader.uint32()
        key_id = reader.string().decode(errors="replace")
        packed = _Reader(reader.string())
        principals = []
        while packed.at < len(packed.data):
            principals.append(packed.string().decode(errors="replace"))
        valid_after, valid_before = reader.uint64(), reader.uint64()
        critical_options = reader.string()
        reader.string()  # extensions
        reader.string()  # reserved
        ca_key = reader.string()
        signed = blob[:reader.at]
        signature = reader.string()
        return cls(key_type, public_key, cert_type, key_id, tuple(principals), valid_after, valid_before,
                   critical_options, ca_key, signed, signature)

    def signature_ok(self) -> bool:
        """Whether the CA key's signature over the certificate verifies."""
        import paramiko

        try:
            ca = paramiko.PKey.from_type_string(_blob_type(self.ca_key), self.ca_key)
            return bool(ca.verify_ssh_sig(self.signed, paramiko.Message(self.signature)))
        except Exception:  # an unknown CA key type or a mangled signature: not verified
            return False


@dataclass(frozen=True)
class _Line:
    marker: str  # "", "@cert-authority" or "@revoked"
    hosts: tuple[str, ...]
    key_type: str
    blob: bytes
    file: str
    number: int
    user_file: bool

    def matches(self, name: str) -> bool:
        """OpenSSH's match_hostname: a positive pattern matches and no negated one does."""
        found = False
        for pattern in self.hosts:
            if pattern.startswith("|1|"):
                found = found or _hashed_match(pattern, name)
            elif pattern.startswith("!"):
                if _wildcard(pattern[1:].lower()).fullmatch(name.lower()):
                    return False
            elif _wildcard(pattern.lower()).fullmatch(name.lower()):
                found = True
        return found

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


@functools.lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(".".join(re.escape(p) for p in part.split("?")) for part in pattern.split("*")))


def _hashed_match(pattern: str, name: str) -> bool:
    try:
        salt, digest = (base64.b64decode(p, validate=True) for p in pattern[3:].split("|"))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


class KnownHosts:
    """The known_hosts files of one connection: user files first, then global ones."""

    def __init__(self, user_files: Iterable[str] = (), global_files: Iterable[str] = ()) -> None:
        self.lines: list[_Line] = []
        for files, user in ((user_files, True), (global_files, False)):
            for file in files:
                self.lines.extend(_read(Path(file).expanduser(), user))

    @classmethod
    def for_target(cls, target: SSHTarget) -> KnownHosts:
        return cls(target.user_known_hosts, target.global_known_hosts)

    def _matching(self, name: str) -> list[_Line]:
        return [line for line in self.lines if line.matches(name)]

    def preferred_key_types(self, name: str) -> tuple[str, ...] | None:
        """Host key algorithms to ask for first: with a CA trusted for ``name``, the certificate ones
        (so the server presents its certificate), then those of the keys known for it; None if none."""
        lines = self._matching(name)
        first = [a + CERT_SUFFIX for a in _ALGORITHMS] if any(x.marker == "@cert-authority" for x in lines) else []
        known = {x.key_type for x in lines if not x.marker}
        first += [a for a in _ALGORITHMS if _key_type(a) in known]
        return tuple(first) or None

    def check(self, name: str, key: paramiko.PKey, *, target: SSHTarget | None = None) -> None:
        """Accept ``key`` for ``name`` (a ``known_hosts_name``) or raise HostKeyError saying why not.
        ``target`` words the advice (host, port, alias); else it is read from ``name``."""
        advice = _Advice.of(name, target)
        plain = key.asbytes()
        lines = self._matching(name)
        revoked = {x.blob: x for x in lines if x.marker == "@revoked"}
        if plain in revoked:
            raise HostKeyError(
                f"The host key of {name} is marked @revoked in known_hosts ({revoked[plain].where}): it must "
                "never be trusted.",
                "Do not connect; ask your cluster's admins which host key the login node has now.",
            )
        problem: tuple[str, str] | None = None
        public = key.public_blob  # paramiko keeps a presented certificate here
        if public is not None and public.key_type.endswith(CERT_SUFFIX):
            problem = self._certificate_problem(public.key_blob, lines, revoked, advice)
            if problem is None:
                return
        keys = [x for x in lines if not x.marker]
        if any(x.blob == plain for x in keys):
            return  # the plain key is known (also when its certificate is not trusted, as in OpenSSH)
        plain_type = _blob_type(plain)
        changed = [x for x in keys if x.key_type == plain_type]
        if changed:
            line = changed[0]
            remove = f"`ssh-keygen -R {name}" + ("`" if advice.default_file(line) else f" -f {line.file}`")
            remove += "" if line.user_file else " (as root: it is a global known_hosts file)"
            raise HostKeyError(
                f"The host key of {advice.hostname} does not match known_hosts ({line.where}): it changed, or "
                "someone is intercepting the connection.",
                f"Ask your cluster's admins whether the key changed (fingerprint now {fingerprint(plain)}); if "
                f"it did, remove the old line with {remove} and connect again.",
            )
        if problem is not None:
            raise HostKeyError(f"The host {name} presented a host certificate that cannot be trusted: {problem[0]}.",
                               problem[1])
        if keys:
            kinds = ", ".join(sorted({x.key_type for x in keys}))
            raise HostKeyError(
                f"The host {name} presented a {plain_type} host key, but your known_hosts lists only {kinds} "
                "keys for it.",
                f"Check the new key's fingerprint ({fingerprint(plain)}) with your cluster's documentation, then "
                f"trust it with {advice.scan(plain_type)}.",
            )
        raise HostKeyError(
            f"The host {name} is not in your known_hosts, so jupyter-hpcllm will not connect to it.",
            f"Check its fingerprint ({fingerprint(plain)}) with your cluster's documentation, then trust it with "
            f"{advice.scan()} (or connect once with `ssh {advice.alias}` and answer yes).",
        )

    def _certificate_problem(
        self, blob: bytes, lines: list[_Line], revoked: dict[bytes, _Line], advice: _Advice
    ) -> tuple[str, str] | None:
        """None if the certificate is good for the host, else (why not, what to do)."""
        admins = "Ask your cluster's admins to "
        try:
            cert = Certificate.parse(blob)
        except ValueError as error:
            return f"it cannot be read ({error})", admins + "check the login node's host certificate."
        if cert.ca_key in revoked:
            raise HostKeyError(
                f"The host certificate of {advice.name} is signed by a CA key marked @revoked in known_hosts "
                f"({revoked[cert.ca_key].where}).",
                "Do not connect; ask your cluster's admins which CA signs the login node's key now.",
            )
        if not cert.signature_ok():
            return "its CA signature does not verify", admins + "check it: it is damaged or forged."
        if not any(x.marker == "@cert-authority" and x.blob == cert.ca_key for x in lines):
            return (
                f"it is signed by a CA ({fingerprint(cert.ca_key)}) that no @cert-authority line in your "
                f"known_hosts trusts for {advice.name}",
                "Add your cluster's CA key as `@cert-authority PATTERN KEY` to ~/.ssh/known_hosts (its "
                f"documentation gives it), or trust the host's own key with {advice.scan()}.",
            )
        if cert.cert_type != _HOST_CERT:
            return "it is a user certificate, not a host certificate", admins + (
                "sign the login node's host key with `ssh-keygen -h`.")
        now = time.time()
        if now < cert.valid_after:
            return f"it is valid only from {_date(cert.valid_after)}", (
                "Check this computer's clock; if it is right, ask your cluster's admins to fix the certificate.")
        if now >= cert.valid_before:
            return f"it expired on {_date(cert.valid_before)}", admins + "renew the login node's host certificate."
        if cert.principals and advice.principal not in cert.principals:
            valid = ", ".join(cert.principals)
            return f"it is valid for {valid}, not {advice.principal}", (
                f"Connect with one of those names, or set `HostKeyAlias {cert.principals[0]}` for this host in "
                "your ssh config.")
        if cert.critical_options:
            return "it carries critical options, which host certificates do not support", admins + (
                "re-sign the login node's host key without options.")
        return None


@dataclass(frozen=True)
class _Advice:
    """What the messages of a check name: the known_hosts name, host, port, alias, principal."""

    name: str
    hostname: str
    port: int
    alias: str
    principal: str
    key_alias: str | None
    known_file: str = "~/.ssh/known_hosts"  # where a trusted key goes: the first of the user's files

    @classmethod
    def of(cls, name: str, target: SSHTarget | None) -> _Advice:
        if target is not None:
            files = target.user_known_hosts
            return cls(name, target.hostname, target.port, target.alias,
                       target.host_key_alias or target.hostname.lower(), target.host_key_alias,
                       _tilde(files[0]) if files else "~/.ssh/known_hosts")
        bracketed = re.fullmatch(r"\[(.+)\]:(\d+)", name)
        host, port = (bracketed.group(1), int(bracketed.group(2))) if bracketed else (name, 22)
        return cls(name, host, port, host, host, None)

    def scan(self, key_type: str | None = None) -> str:
        kind = f"-t {key_type.removeprefix('ssh-').split('-')[0]} " if key_type else ""
        rename = f" | sed 's/^[^ ]*/{self.key_alias}/'" if self.key_alias else ""
        return f"`ssh-keyscan {kind}-p {self.port} {self.hostname}{rename} >> {self.known_file}`"

    def default_file(self, line: _Line) -> bool:
        return Path(line.file) == Path("~/.ssh/known_hosts").expanduser()


def _tilde(path: str) -> str:
    """A path as a person would type it: the home directory as ~."""
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def _date(stamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(min(stamp, 253402300799)))


def _read(path: Path, user: bool) -> list[_Line]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []  # missing or unreadable: OpenSSH skips it too
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if marker not in ("", "@cert-authority", "@revoked") or len(fields) < 3:
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
            if _blob_type(blob) != fields[1]:
                continue
        except (ValueError, binascii.Error):
            continue  # a line OpenSSH would skip too
        lines.append(_Line(marker, tuple(fields[0].split(",")), fields[1], blob, str(path), number, user))
    return lines
