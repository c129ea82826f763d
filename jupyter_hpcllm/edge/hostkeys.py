"""Host keys checked as OpenSSH checks them, never trusted silently (no auto-add).

``KnownHosts`` reads known_hosts files (the user's, then the global ones; missing files are skipped):
plain and hashed (``|1|``) host names, ``*``/``?`` wildcards and ``!`` negation, ``@revoked`` keys and
``@cert-authority`` CAs. ``check`` accepts a host key that known_hosts lists, or a host certificate
signed by a CA trusted for the host (``sshcert`` reads it; its signature and signature algorithm, no
SHA-1, its principal and validity are checked here, since paramiko does not); a certificate that fails
falls back to its plain key, as in OpenSSH. Every refusal is a ``HostKeyError`` that says why and what
to do, its commands quoted so that any shell (zsh too) runs them as written.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HostKeyError
from .sshcert import CA_SIGNATURE_ALGORITHMS, CERT_SUFFIX, HOST_CERT, Certificate, blob_type, fingerprint

if TYPE_CHECKING:
    import paramiko

    from .sshconfig import SSHTarget

__all__ = ["KnownHosts"]

# The host key algorithms paramiko speaks, in its order of preference.
_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
               "rsa-sha2-512", "rsa-sha2-256")


def _key_type(algorithm: str) -> str:
    """The key type of a host key algorithm (``rsa-sha2-512`` → ``ssh-rsa``)."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


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
        plain_type = blob_type(plain)
        changed = [x for x in keys if x.key_type == plain_type]
        if changed:
            line = changed[0]
            remove = f"`ssh-keygen -R {shlex.quote(name)}" + (
                "`" if advice.default_file(line) else f" -f {_shell_path(line.file)}`")
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
            f"{advice.scan()} (or connect once with `ssh {shlex.quote(advice.alias)}` and answer yes).",
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
        algorithm = cert.signature_algorithm
        if algorithm not in CA_SIGNATURE_ALGORITHMS:
            weak = " (RSA with SHA-1)" if algorithm == "ssh-rsa" else ""
            return (f"its CA signature uses {algorithm or 'an unreadable algorithm'}{weak}, which OpenSSH 8.2 "
                    "and later refuse (CASignatureAlgorithms)",
                    admins + "re-sign the login node's host key with `ssh-keygen -s CA_KEY -t rsa-sha2-512 -h ...`, "
                    f"or trust the host's own key with {advice.scan()}.")
        if not cert.signature_ok():
            return "its CA signature does not verify", admins + "check it: it is damaged or forged."
        if not any(x.marker == "@cert-authority" and x.blob == cert.ca_key for x in lines):
            return (
                f"it is signed by a CA ({fingerprint(cert.ca_key)}) that no @cert-authority line in your "
                f"known_hosts trusts for {advice.name}",
                "Add your cluster's CA key as `@cert-authority PATTERN KEY` to ~/.ssh/known_hosts (its "
                f"documentation gives it), or trust the host's own key with {advice.scan()}.",
            )
        if cert.cert_type != HOST_CERT:
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
        rename = ""
        if self.key_alias:
            alias = re.sub(r"([\\/&])", r"\\\1", self.key_alias)  # literal in sed's replacement
            rename = f" | sed {shlex.quote(f's/^[^ ]*/{alias}/')}"
        return (f"`ssh-keyscan {kind}-p {self.port} {shlex.quote(self.hostname)}{rename} >> "
                f"{_shell_path(self.known_file)}`")

    def default_file(self, line: _Line) -> bool:
        return Path(line.file) == Path("~/.ssh/known_hosts").expanduser()


def _shell_path(path: str) -> str:
    """A path quoted for any POSIX shell (zsh's globbing included), a leading ``~/`` left to expand."""
    return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


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
            if blob_type(blob) != fields[1]:
                continue
        except (ValueError, binascii.Error):
            continue  # a line OpenSSH would skip too
        lines.append(_Line(marker, tuple(fields[0].split(",")), fields[1], blob, str(path), number, user))
    return lines
