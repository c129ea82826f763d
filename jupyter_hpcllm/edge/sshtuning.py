"""Throughput and latency settings for paramiko connections and their forwarded channels.

One place for them, so the connection code (``ssh``, ``sshsession``) and the benchmark agree on what
is measured. The figures behind each choice are in benchmarks/bench_forward.py and the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

__all__ = ["channel_options", "transport_options", "tune_transport"]


def transport_options() -> dict[str, Any]:
    """Keyword arguments for ``paramiko.Transport(sock, **transport_options())``."""
    return {}


def tune_transport(transport: paramiko.Transport) -> None:
    """Settings applied to a new transport before its key exchange (cipher order and the like)."""


def channel_options() -> dict[str, Any]:
    """Keyword arguments for ``Transport.open_channel("direct-tcpip", ...)`` (window and packet sizes)."""
    return {}
