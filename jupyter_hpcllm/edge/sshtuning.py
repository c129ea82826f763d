"""Throughput and latency settings for paramiko connections and their forwarded channels.

One place for them, so the connection code (``sshsession``, ``ssh``) and the benchmark agree on what is
measured. The figures behind each choice are in the README's forward benchmark
(``benchmarks/bench_forward.py``); CPU seconds per 100 MB are of the forwarding process, 2-core machine.

- Ciphers: AES-GCM first. paramiko decrypts an AES-GCM packet in one call, where AES-CTR needs a second
  pass for its HMAC, and OpenSSH's sshd encrypts AES-GCM more cheaply than its default
  chacha20-poly1305 on CPUs with AES instructions: both ends spend less per byte (0.20 s per 100 MB with
  aes128-gcm against 0.32 s with aes128-ctr + hmac-sha2-256, paramiko's own first choice). Only
  modern algorithms are offered: no CBC, no 3DES, no SHA-1 or MD5 MACs. Every OpenSSH since 5.9 (2011)
  has aes-ctr with hmac-sha2, and since 6.2 (2013) AES-GCM.
- TCP_NODELAY on the connection's socket (``ssh`` sets it too when it makes the socket): without it a
  request that reaches paramiko in two writes waits for a delayed ACK (+44 ms per exchange measured).
- TCP_QUICKACK after each read, where the system has it (Linux): sshd leaves Nagle on for a session
  without a terminal, so an answer written in pieces (a head, then chunks, as an engine streams tokens)
  stalls its second piece until the client ACKs the first, which a client delays by up to 40 ms. Acking
  at once: the first chunk of a streamed answer 5.6 ms after the request instead of 44 ms (direct:
  5.2 ms; ``ssh -L`` has the 44 ms too). No cost in throughput measured.
- A packetizer that reads the socket in large pieces and takes AES-GCM packets out of its own buffer:
  one ``recv_into`` for many packets instead of two or more reads (each with a poll) per packet, and two
  copies fewer (0.16 s per 100 MB against 0.22 s with paramiko's Packetizer). Other ciphers, the key
  exchange's start and a socket that is not a plain socket (a ProxyJump channel, a ProxyCommand) use
  paramiko's own code.
- Both packetizers count what arrives (``arrivals``): the heartbeat takes any data arriving as a sign
  of life, as OpenSSH does, not only the replies to its probes.
- Window and packet size of forwarded channels: 4 MiB and 128 KiB (OpenSSH's ``ssh -L`` asks 2 MiB and
  32 KiB). sshd reads 32 KiB at a time but sends what has piled up in one packet when we allow it:
  fewer packets, less work per byte on both ends. 32 streams × 4 MB: 547 MB/s (1.32 × ``ssh -L``, 0.16 s
  CPU per 100 MB) against 432 MB/s (1.05 ×, 0.18 s) with 2 MiB and 32 KiB; 4 MiB with 64 KiB 477 MB/s;
  8 MiB with 128 KiB 565 MB/s, within the noise of 4 MiB, so the smaller one: a window is what a slow
  local reader can hold per connection (in sshd and in the forward's backlog).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import paramiko

__all__ = ["channel_options", "transport_options", "tune_transport"]

CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
MACS = (  # used with the CTR ciphers only (GCM authenticates itself)
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
# Linux only: ACK what arrives at once instead of up to 40 ms later (see the module's docstring).
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
WINDOW = 4 * 1024 * 1024
MAX_PACKET = 128 * 1024
PACKET_MAX_SIZE = 256 * 1024  # OpenSSH's limit on a packet's length field (packet.c): larger is corrupt


def transport_options() -> dict[str, Any]:
    """Keyword arguments for ``paramiko.Transport(sock, **transport_options())``: the packetizer."""
    return {"packetizer_class": _packetizer_class()}


def tune_transport(transport: paramiko.Transport) -> None:
    """Settings applied to a new transport before its key exchange: the cipher and MAC order (modern
    ones only, AES-GCM first) and TCP_NODELAY on its socket."""
    options = transport.get_security_options()
    offered = set(options.ciphers)
    options.ciphers = tuple(c for c in CIPHERS if c in offered) or options.ciphers
    offered = set(options.digests)
    options.digests = tuple(m for m in MACS if m in offered) or options.digests
    sock = transport.sock
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def channel_options() -> dict[str, Any]:
    """Keyword arguments for ``Transport.open_channel("direct-tcpip", ...)``: window and packet size."""
    return {"window_size": WINDOW, "max_packet_size": MAX_PACKET}


@functools.cache
def _packetizer_class() -> Any:
    """FastPacketizer; or, if this paramiko's Packetizer does not keep the state it relies on (checked
    once, every name it uses), paramiko's own reader, counting what arrives all the same."""
    from paramiko.packet import Packetizer

    class CountingPacketizer(Packetizer):
        """paramiko's Packetizer, counting the packets it read (see ``arrivals`` in the module's docstring)."""

        arrivals = 0  # grows whenever data arrived: only ever compared, never read as a number of anything

        def read_message(self) -> tuple[int, Any]:
            result: tuple[int, Any] = super().read_message()
            self.arrivals += 1
            return result

    try:
        probe = Packetizer(cast(Any, None))  # only looked at, never used
        usable = all(hasattr(probe, name) for name in _STATE)
        return _make_packetizer(CountingPacketizer) if usable else CountingPacketizer
    except Exception:  # a Packetizer that cannot even be looked at this way
        return CountingPacketizer


# Packetizer's private state that FastPacketizer reads and updates as Packetizer.read_message does: every
# private (or undocumented) name it uses, so a paramiko that renamed one gets paramiko's reader instead.
_STATE = (
    "_Packetizer__aead_in", "_Packetizer__block_engine_in", "_Packetizer__iv_in", "_Packetizer__mac_size_in",
    "_Packetizer__block_size_in", "_Packetizer__compress_engine_in", "_Packetizer__remainder",
    "_Packetizer__sequence_number_in", "_Packetizer__received_bytes", "_Packetizer__received_packets",
    "_Packetizer__received_bytes_overflow", "_Packetizer__received_packets_overflow", "_Packetizer__need_rekey",
    "_initial_kex_done", "_inc_iv_counter", "_trigger_rekey", "_check_keepalive", "handshake_timed_out", "closed",
    "REKEY_PACKETS", "REKEY_BYTES", "REKEY_PACKETS_OVERFLOW_MAX", "REKEY_BYTES_OVERFLOW_MAX",
)


def _make_packetizer(base: Any) -> Any:
    from paramiko.message import Message
    from paramiko.packet import NeedRekeyException
    from paramiko.ssh_exception import SSHException

    unpack = struct.Struct(">I").unpack_from

    class FastPacketizer(base):  # type: ignore[misc]  # (a subclass of CountingPacketizer, made at run time)
        """paramiko's Packetizer, reading AES-GCM packets out of a buffer filled in large pieces.

        Other ciphers (and the unencrypted start of the key exchange) use paramiko's own code, which
        gets whatever was read ahead back through the ``__remainder`` its banner reading uses."""

        # Packetizer's state (see _STATE); declared for the type checker only.
        _Packetizer__aead_in: bool
        _Packetizer__block_engine_in: Any
        _Packetizer__iv_in: bytes
        _Packetizer__mac_size_in: int
        _Packetizer__block_size_in: int
        _Packetizer__compress_engine_in: Any
        _Packetizer__remainder: bytes
        _Packetizer__sequence_number_in: int
        _Packetizer__received_bytes: int
        _Packetizer__received_packets: int
        _Packetizer__received_bytes_overflow: int
        _Packetizer__received_packets_overflow: int
        _Packetizer__need_rekey: bool
        _initial_kex_done: bool
        _inc_iv_counter: Callable[[bytes], bytes]
        _trigger_rekey: Callable[[], None]
        _check_keepalive: Callable[[], None]

        def __init__(self, sock: Any) -> None:
            super().__init__(sock)
            self._hpcllm_sock = sock if isinstance(sock, socket.socket) else None
            self._hpcllm_buf = bytearray(1 << 18)
            self._hpcllm_start = 0
            self._hpcllm_end = 0

        def read_message(self) -> tuple[int, Message]:
            if self._hpcllm_sock is None or not self._Packetizer__aead_in:
                if self._hpcllm_end > self._hpcllm_start:  # hand what was read ahead to paramiko's reader
                    ahead = bytes(self._hpcllm_buf[self._hpcllm_start:self._hpcllm_end])
                    self._Packetizer__remainder = ahead + self._Packetizer__remainder
                    self._hpcllm_start = self._hpcllm_end = 0
                result: tuple[int, Message] = super().read_message()
                return result
            if self._Packetizer__remainder:
                self._append(self._Packetizer__remainder)
                self._Packetizer__remainder = b""
            self._fill(4, check_rekey=True)
            packet_size = unpack(self._hpcllm_buf, self._hpcllm_start)[0]
            # The length is read before the tag is checked: a corrupt one must not make us wait for (and
            # allocate) up to 4 GiB. OpenSSH's checks (packet.c; paramiko checks nothing here): at most
            # PACKET_MAX_SIZE, and whole cipher blocks (with AES-GCM the length itself is not encrypted).
            block = self._Packetizer__block_size_in
            if not block <= packet_size <= PACKET_MAX_SIZE or packet_size % block:
                raise SSHException("Bad packet length")
            mac_size = self._Packetizer__mac_size_in
            total = 4 + packet_size + mac_size
            self._fill(total, check_rekey=False)  # may move the buffered bytes to the front
            start = self._hpcllm_start
            iv = self._Packetizer__iv_in
            with memoryview(self._hpcllm_buf) as view:  # the length is the associated data, as in paramiko
                packet: bytes = self._Packetizer__block_engine_in.decrypt(
                    iv, view[start + 4:start + total], view[start:start + 4])
            self._hpcllm_start = start + total
            self._Packetizer__iv_in = self._inc_iv_counter(iv)
            padding = packet[0]
            if self._Packetizer__compress_engine_in is not None:
                payload = self._Packetizer__compress_engine_in(packet[1:packet_size - padding])
                ptype, message = payload[0], Message(payload[1:])
            else:
                ptype, message = packet[1], Message(packet[2:packet_size - padding])
            seqno = self._Packetizer__sequence_number_in
            message.seqno = seqno
            next_seq = (seqno + 1) & 0xFFFFFFFF
            if next_seq == 0 and not self._initial_kex_done:
                raise SSHException("Sequence number rolled over during initial kex!")
            self._Packetizer__sequence_number_in = next_seq
            self._count_received(packet_size + mac_size + 4)
            return ptype, message

        def _count_received(self, raw_packet_size: int) -> None:
            """paramiko's rekey bookkeeping for a received packet, as in Packetizer.read_message."""
            self._Packetizer__received_bytes += raw_packet_size
            self._Packetizer__received_packets += 1
            if self._Packetizer__need_rekey:
                self._Packetizer__received_bytes_overflow += raw_packet_size
                self._Packetizer__received_packets_overflow += 1
                if (self._Packetizer__received_packets_overflow >= self.REKEY_PACKETS_OVERFLOW_MAX
                        or self._Packetizer__received_bytes_overflow >= self.REKEY_BYTES_OVERFLOW_MAX):
                    raise SSHException("Remote transport is ignoring rekey requests")
            elif (self._Packetizer__received_packets >= self.REKEY_PACKETS
                  or self._Packetizer__received_bytes >= self.REKEY_BYTES):
                self._Packetizer__received_bytes_overflow = 0
                self._Packetizer__received_packets_overflow = 0
                self._trigger_rekey()

        def _append(self, data: bytes) -> None:
            self._make_room(len(data))
            self._hpcllm_buf[self._hpcllm_end:self._hpcllm_end + len(data)] = data
            self._hpcllm_end += len(data)

        def _make_room(self, size: int) -> None:
            """At least ``size`` free bytes after the buffered ones (moved to the front if need be)."""
            buf, start, end = self._hpcllm_buf, self._hpcllm_start, self._hpcllm_end
            if len(buf) - end >= size:
                return
            held = end - start
            if held + size > len(buf):  # a new buffer: never resize one a memoryview may still see
                self._hpcllm_buf = bytearray(max(2 * len(buf), held + size))
            self._hpcllm_buf[:held] = buf[start:end]
            self._hpcllm_start, self._hpcllm_end = 0, held

        def _fill(self, size: int, check_rekey: bool) -> None:
            """Have at least ``size`` bytes buffered, reading as much as the socket has."""
            sock = self._hpcllm_sock
            assert sock is not None
            while self._hpcllm_end - self._hpcllm_start < size:
                self._make_room(max(size - (self._hpcllm_end - self._hpcllm_start), 1 << 16))
                if self.handshake_timed_out():
                    raise EOFError()
                try:
                    with memoryview(self._hpcllm_buf) as view:
                        got = sock.recv_into(view[self._hpcllm_end:])
                except (TimeoutError, BlockingIOError):
                    got = -1
                except OSError:
                    if self.closed:
                        raise EOFError() from None
                    raise
                if got == 0:
                    raise EOFError()
                if got > 0:
                    self._hpcllm_end += got
                    self.arrivals += 1
                    if QUICKACK is not None:  # re-armed after each read: Linux leaves quick-ACK mode again
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                    continue
                # A timeout (the transport's socket has a short one): paramiko's reader checks for
                # closing, a pending rekey and keepalives here, and so do we.
                if self.closed:
                    raise EOFError()
                if check_rekey and self._hpcllm_end == self._hpcllm_start and self._Packetizer__need_rekey:
                    raise NeedRekeyException()
                self._check_keepalive()

    return FastPacketizer
