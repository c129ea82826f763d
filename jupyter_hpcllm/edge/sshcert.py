"""OpenSSH certificates (PROTOCOL.certkeys): parsed, and their CA signature checked as OpenSSH checks it.

paramiko loads certificates but checks nothing in them; ``Certificate`` gives the fields a host key
check needs (type, principals, validity, critical options, CA key) and whether the CA's signature
verifies with an algorithm OpenSSH still accepts (its default CASignatureAlgorithms: no ``ssh-rsa``,
which is RSA with SHA-1).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

__all__ = ["CA_SIGNATURE_ALGORITHMS", "CERT_SUFFIX", "HOST_CERT", "USER_CERT", "Certificate", "blob_type",
           "fingerprint"]

CERT_SUFFIX = "-cert-v01@openssh.com"
USER_CERT, HOST_CERT = 1, 2
# OpenSSH's default CASignatureAlgorithms (since 8.2): every CA signature algorithm but ssh-rsa (SHA-1).
CA_SIGNATURE_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                           "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
                           "rsa-sha2-512", "rsa-sha2-256")
# How many public-key fields follow the type (and, in a certificate, the nonce) for each key type.
_KEY_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "ssh-dss": 4, "sk-ssh-ed25519@openssh.com": 2}


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


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


def blob_type(blob: bytes) -> str:
    """The type name a key blob (or signature blob) starts with; ValueError if it has none."""
    return _Reader(blob).string().decode(errors="replace")


@dataclass(frozen=True)
class Certificate:
    """An OpenSSH certificate (PROTOCOL.certkeys), parsed."""

    key_type: str  # e.g. ssh-ed25519-cert-v01@openssh.com
    public_key: bytes  # the certified key, as a plain public key blob
    cert_type: int  # USER_CERT or HOST_CERT
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

    @property
    def signature_algorithm(self) -> str:
        """The algorithm of the CA's signature (``rsa-sha2-512``, ``ssh-rsa``, ``ssh-ed25519`` …); "" if unreadable."""
        try:
            return blob_type(self.signature)
        except ValueError:
            return ""

    def signature_ok(self) -> bool:
        """Whether the CA key's signature over the certificate verifies, with an algorithm in
        CA_SIGNATURE_ALGORITHMS (an ``ssh-rsa`` signature does not count, valid or not)."""
        import paramiko

        if self.signature_algorithm not in CA_SIGNATURE_ALGORITHMS:
            return False
        try:
            ca = paramiko.PKey.from_type_string(blob_type(self.ca_key), self.ca_key)
            return bool(ca.verify_ssh_sig(self.signed, paramiko.Message(self.signature)))
        except Exception:  # an unknown CA key type or a mangled signature: not verified
            return False
