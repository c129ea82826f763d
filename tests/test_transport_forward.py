"""The local transport and the port forward: without a cluster, and (tests marked `cluster`) through
the test cluster's sshd with the fast paramiko path (the transport writing to the local socket itself,
the tuned packetizer), a dropped connection, a replaced transport and a close with streams in flight."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from processes import sshd_pids

from jupyter_hpcllm.config.profiles import Profile
from jupyter_hpcllm.edge import forward as forward_module
from jupyter_hpcllm.edge import sshtuning
from jupyter_hpcllm.edge.forward import PortForward
from jupyter_hpcllm.edge.transport import LocalTransport
from jupyter_hpcllm.errors import CommandTimeout, ForwardError, RemoteCommandError


@pytest.fixture
def local():
    return LocalTransport(Profile(name="here", host="local", command_timeout=5))


def test_local_run(local):
    result = local.run("echo out; echo err >&2", stdin=None)
    assert (result.exit_status, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert local.run("cat", stdin="fed on stdin").stdout == "fed on stdin"


def test_local_failure_carries_everything(local):
    with pytest.raises(RemoteCommandError) as caught:
        local.run("echo partial; echo broken >&2; exit 3")
    error = caught.value
    assert (error.exit_status, error.stdout, error.stderr) == (3, "partial\n", "broken\n")
    assert "exit code 3" in str(error) and "broken" in str(error)


def test_local_timeout(local):
    with pytest.raises(CommandTimeout, match="did not finish within 0.3 s"):
        local.run("sleep 5", timeout=0.3)


@pytest.fixture
def echo_server():
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    def _echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_forward_relays_and_closes(local, echo_server):
    with PortForward(lambda: local.open_channel("127.0.0.1", echo_server), "echo") as forward:
        payload = b"x" * 300_000
        with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
            conn.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += conn.recv(65536)
        assert received == payload
        # many connections at once
        conns = [socket.create_connection(("127.0.0.1", forward.local_port)) for _ in range(16)]
        for i, conn in enumerate(conns):
            conn.sendall(f"hello {i}".encode())
        assert [c.recv(100) for c in conns] == [f"hello {i}".encode() for i in range(16)]
        for conn in conns:
            conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", forward.local_port), timeout=1).close()


def test_a_refused_channel_closes_the_connection():
    def refuse():
        raise ConnectionRefusedError("Connect failed")

    with PortForward(refuse, "gpu01:1") as forward:
        with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
            assert conn.recv(10) == b""  # the forward closes the connection it cannot relay
    assert "Connect failed" in forward.last_refusal


def test_forward_reraises_what_failed_in_its_threads():
    class Broken:
        def __init__(self):
            self.ends = socket.socketpair()
            self.ends[1].sendall(b"x")  # readable at once, so the relay calls recv()

        def fileno(self):
            return self.ends[0].fileno()

        def recv(self, size):
            raise RuntimeError("boom in the relay")

        def sendall(self, data):
            pass

        def close(self):
            for end in self.ends:
                end.close()

    with pytest.raises(ForwardError, match="boom in the relay"), PortForward(Broken, "broken") as forward:
        with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
            assert conn.recv(10) == b""


def test_an_ssh_error_in_one_relayed_connection_is_a_reset_not_a_forward_failure():
    """The SSH connection dying under a relayed request (paramiko raises SSHException, e.g. "Key-exchange
    timed out"): `hpcllm forward` calls raise_if_failed() every second and must survive the reconnect."""
    from paramiko import SSHException

    class Dying:
        def __init__(self):
            self.ends = socket.socketpair()

        def fileno(self):
            return self.ends[0].fileno()

        def recv(self, size):
            raise SSHException("Key-exchange timed out waiting for key negotiation")

        def sendall(self, data):
            raise SSHException("Key-exchange timed out waiting for key negotiation")

        def close(self):
            for end in self.ends:
                end.close()

    with PortForward(Dying, "dying") as forward:
        with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
            conn.sendall(b"a request")
            assert conn.recv(10) == b""
        time.sleep(0.1)
        assert not forward.errors
        forward.raise_if_failed()


class FakeChannel:
    """What _attach looks at on a paramiko Channel, with a real paramiko BufferedPipe as its input."""

    def __init__(self):
        from paramiko.buffered_pipe import BufferedPipe

        self.in_buffer = BufferedPipe()
        self.remote_chanid = 7
        self.transport = SimpleNamespace(_send_user_message=lambda message: None)

    def _check_add_window(self, size):
        return 0


def test_a_channel_buffer_shaped_otherwise_falls_back_to_the_two_thread_copy(monkeypatch):
    client, other = socket.socketpair()
    with client, other:
        channel = FakeChannel()
        channel.in_buffer.feed(b"early")
        attached = forward_module._attach(channel, client)
        assert attached is channel.in_buffer and list(attached.backlog) == [b"early"]  # as paramiko 5 has it
        for missing in ("_lock", "_buffer"):  # something paramiko might rename: the swap gives up untouched
            channel = FakeChannel()
            channel.in_buffer.feed(b"early")
            delattr(channel.in_buffer, missing)
            assert forward_module._attach(channel, client) is None
            assert type(channel.in_buffer).__name__ == "BufferedPipe"
        channel = FakeChannel()
        del channel.remote_chanid
        assert forward_module._attach(channel, client) is None
        # a BufferedPipe without the state DirectPipe uses: checked once, then always the copy
        monkeypatch.setattr(forward_module, "_PIPE_STATE", (*forward_module._PIPE_STATE, "_renamed"))
        forward_module._pipe_class.cache_clear()
        try:
            channel = FakeChannel()
            assert forward_module._attach(channel, client) is None
        finally:
            forward_module._pipe_class.cache_clear()


def fast_packetizer_reading(data: bytes):
    """A FastPacketizer in its AES-GCM state, reading ``data`` from a socket that then ends."""
    cls = sshtuning.transport_options()["packetizer_class"]
    assert cls.__name__ == "FastPacketizer"
    ours, theirs = socket.socketpair()
    ours.settimeout(0.1)
    packetizer = cls(ours)
    packetizer._Packetizer__aead_in = True
    packetizer._Packetizer__block_size_in = 16
    packetizer._Packetizer__mac_size_in = 16
    packetizer._Packetizer__block_engine_in = object()  # never reached: the length is refused first
    theirs.sendall(data)
    theirs.close()
    return packetizer, ours


@pytest.mark.parametrize("length", [300 * 1024, 256 * 1024 + 16, 100, 0])
def test_a_bad_packet_length_is_refused_before_anything_is_read_or_allocated(length):
    """Larger than OpenSSH's PACKET_MAX_SIZE (256 KiB), or not whole cipher blocks: refused as OpenSSH
    refuses it, before the tag is checked (a corrupt length could ask for 4 GiB)."""
    from paramiko import SSHException

    packetizer, ours = fast_packetizer_reading(struct.pack(">I", length) + b"\0" * 64)
    with ours, pytest.raises(SSHException, match="Bad packet length"):
        packetizer.read_message()


def test_forward_close_is_idempotent(local, echo_server):
    forward = PortForward(lambda: local.open_channel("127.0.0.1", echo_server), "echo")
    forward.close()
    forward.close()


# --- servers the forward relays to ---------------------------------------------------------------------

class TCPServer:
    """A TCP server on 127.0.0.1 that runs ``handle(conn)`` in a thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def endless(conn: socket.socket) -> None:
    """A response that never ends (a long stream)."""
    chunk = b"z" * 65536
    while True:
        conn.sendall(chunk)


def deaf(conn: socket.socket) -> None:
    """Reads nothing: whoever sends to it ends up waiting for the window (or the socket buffer)."""
    while conn.recv(1, socket.MSG_PEEK) and conn.fileno() >= 0:
        time.sleep(0.05)


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[socket.socket], None]], TCPServer]]:
    made: list[TCPServer] = []

    def make(handle: Callable[[socket.socket], None]) -> TCPServer:
        made.append(TCPServer(handle))
        return made[-1]

    yield make
    for server in made:
        server.close()


def forward_threads(target: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hpcllm-") and target in t.name and t.is_alive()]


def read_some(conn: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        data = conn.recv(size - len(got))
        assert data, "the connection closed early"
        got += data
    return got


def assert_closed_within_a_second(forward: PortForward, target: str) -> None:
    closed = time.monotonic()
    forward.close()
    while forward_threads(target) and time.monotonic() - closed < 1.0:
        time.sleep(0.02)
    assert not forward_threads(target), f"threads still alive 1 s after close: {forward_threads(target)}"
    assert forward._listener.fileno() == -1  # the listening socket is closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", forward.local_port), timeout=1).close()


def test_close_ends_every_thread_within_a_second_with_streams_in_flight(local, servers):
    stream, sink = servers(endless), servers(deaf)
    forward = PortForward(lambda: local.open_channel("127.0.0.1", stream.port), f"endless:{stream.port}")
    upload = PortForward(lambda: local.open_channel("127.0.0.1", sink.port), f"deaf:{sink.port}")
    readers = [socket.create_connection(("127.0.0.1", forward.local_port)) for _ in range(4)]
    for conn in readers[:2]:
        read_some(conn, 100_000)  # streams in flight; the other two are never read (their sends block)
    sender = socket.create_connection(("127.0.0.1", upload.local_port))
    sender.setblocking(False)
    with pytest.raises(BlockingIOError):
        while True:
            sender.send(b"u" * 65536)  # until every buffer on the way is full
    time.sleep(0.2)
    assert len(forward_threads(f"endless:{stream.port}")) >= 4
    assert_closed_within_a_second(forward, f"endless:{stream.port}")
    assert_closed_within_a_second(upload, f"deaf:{sink.port}")
    for conn in [*readers, sender]:
        conn.close()


# --- through the test cluster's sshd: the paramiko path ----------------------------------------------

def ssh_transport(profile):
    """A paramiko transport to the test cluster, tuned the way jupyter_hpcllm's SSH connection is."""
    import paramiko

    from jupyter_hpcllm.edge import sshtuning

    sock = socket.create_connection((profile.host, profile.port), timeout=10)
    transport = paramiko.Transport(sock, **sshtuning.transport_options())
    sshtuning.tune_transport(transport)
    transport.connect(username=profile.user, pkey=paramiko.Ed25519Key.from_private_key_file(profile.identity_file))
    return transport


def opener(holder: list, port: int) -> Callable[[], object]:
    """A channel factory on whatever transport holder[0] is now (as SSHTransport reconnects)."""
    from jupyter_hpcllm.edge import sshtuning

    return lambda: holder[0].open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10,
                                          **sshtuning.channel_options())


@pytest.mark.cluster
def test_the_fast_path_is_in_use(profile):
    from jupyter_hpcllm.edge import sshtuning

    transport = ssh_transport(profile)
    try:
        assert type(transport.packetizer) is sshtuning.transport_options()["packetizer_class"]
        assert transport.remote_cipher == transport.local_cipher == "aes128-gcm@openssh.com"
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert transport.packetizer.arrivals > 0  # what arrives is counted, for the heartbeat
    finally:
        transport.close()


@pytest.mark.cluster
@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_a_streamed_answer_is_not_held_back_by_delayed_acks(profile, servers):
    """sshd leaves Nagle on: the first chunk after the head waits for our ACK of the head, which the
    packetizer sends at once instead of up to 40 ms later."""

    def stream(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while conn.recv(100):
            conn.sendall(b"head")
            time.sleep(0.005)
            conn.sendall(b"chunk")

    server = servers(stream)
    holder = [ssh_transport(profile)]
    try:
        with PortForward(opener(holder, server.port), f"stream:{server.port}") as forward:
            with socket.create_connection(("127.0.0.1", forward.local_port), timeout=5) as conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                times = []
                for _ in range(7):
                    started = time.perf_counter()
                    conn.sendall(b"go")
                    assert read_some(conn, 9) == b"headchunk"
                    times.append(time.perf_counter() - started)
        assert sorted(times)[3] < 0.025, f"the chunk after the head took {sorted(times)[3] * 1e3:.0f} ms"
    finally:
        holder[0].close()


@pytest.mark.cluster
def test_data_arrives_intact_across_rekeys_and_a_slow_reader(profile, servers, monkeypatch):
    from jupyter_hpcllm.edge import sshtuning

    # a rekey every 2 MB in each direction instead of every 512 MB
    monkeypatch.setattr(sshtuning.transport_options()["packetizer_class"], "REKEY_BYTES", 1 << 21)
    blob = os.urandom(12_000_000)

    def serve_blob(conn: socket.socket) -> None:
        size = int(read_some(conn, 9))
        conn.sendall(blob[:size])
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    server = servers(serve_blob)
    holder = [ssh_transport(profile)]
    try:
        with PortForward(opener(holder, server.port), f"blob:{server.port}") as forward:
            with socket.create_connection(("127.0.0.1", forward.local_port)) as fast:
                fast.sendall(b"%09d" % len(blob))
                got = bytearray()
                while data := fast.recv(1 << 20):
                    got += data
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
            with socket.create_connection(("127.0.0.1", forward.local_port)) as slow:
                slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                slow.sendall(b"%09d" % len(blob))
                # Not reading for a while: the socket buffers fill up, then the SSH window, and the
                # rest comes through the relay thread's backlog as the reader catches up.
                time.sleep(0.5)
                got = bytearray()
                while data := slow.recv(4096):
                    got += data
                    if len(got) % 65536 < 4096:
                        time.sleep(0.001)
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    finally:
        holder[0].close()


@pytest.mark.cluster
def test_without_the_expected_paramiko_internals_the_fallbacks_relay_intact(profile, servers, monkeypatch):
    """A paramiko whose private state differs: paramiko's own packetizer (still counting what arrives)
    and the two-thread copy instead of the transport writing to the local socket."""
    monkeypatch.setattr(sshtuning, "_STATE", (*sshtuning._STATE, "_Packetizer__renamed"))
    monkeypatch.setattr(forward_module, "_PIPE_STATE", (*forward_module._PIPE_STATE, "_renamed"))
    sshtuning._packetizer_class.cache_clear()
    forward_module._pipe_class.cache_clear()
    attached: list[object] = []
    real_attach = forward_module._attach
    monkeypatch.setattr(forward_module, "_attach", lambda *args: attached.append(real_attach(*args)) or attached[-1])
    blob = os.urandom(3_000_000)
    server = servers(echo)
    holder: list = []
    try:
        holder.append(ssh_transport(profile))
        packetizer = holder[0].packetizer
        assert type(packetizer).__name__ != "FastPacketizer" and packetizer.arrivals > 0
        with PortForward(opener(holder, server.port), f"echo:{server.port}") as forward:
            with socket.create_connection(("127.0.0.1", forward.local_port), timeout=10) as conn:
                threading.Thread(target=conn.sendall, args=(blob,), daemon=True).start()
                assert read_some(conn, len(blob)) == blob
        assert attached == [None] and not forward.errors
    finally:
        if holder:
            holder[0].close()
        sshtuning._packetizer_class.cache_clear()
        forward_module._pipe_class.cache_clear()


@pytest.mark.cluster
def test_the_forward_survives_its_transport_being_replaced(profile, servers):
    server = servers(echo)
    holder = [ssh_transport(profile)]
    try:
        with PortForward(opener(holder, server.port), f"echo:{server.port}") as forward:
            address = forward.address
            with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
                conn.sendall(b"before")
                assert read_some(conn, 6) == b"before"
            holder[0].close()  # the connection drops; the next one is made anew (SSHTransport does this)
            holder[0] = ssh_transport(profile)
            with socket.create_connection(("127.0.0.1", forward.local_port)) as conn:
                conn.sendall(b"after")
                assert read_some(conn, 5) == b"after"
            assert forward.address == address and not forward.errors
    finally:
        holder[0].close()


@pytest.mark.cluster
def test_a_stream_in_flight_ends_when_the_connection_dies(profile, servers):
    server = servers(endless)
    holder = [ssh_transport(profile)]
    try:
        with PortForward(opener(holder, server.port), f"endless:{server.port}") as forward:
            with socket.create_connection(("127.0.0.1", forward.local_port), timeout=10) as conn:
                read_some(conn, 1_000_000)
                killed = time.monotonic()
                for pid in sshd_pids(holder[0].sock.getsockname()[1]):
                    os.kill(pid, signal.SIGKILL)
                try:
                    while conn.recv(1 << 20):  # a hang would end in TimeoutError after 10 s
                        pass
                except ConnectionResetError:
                    pass  # a reset ends it as well as an EOF
                assert time.monotonic() - killed < 5, "the stream in flight hung instead of ending"
    finally:
        holder[0].close()


@pytest.mark.cluster
def test_ssh_transport_forward_reconnects_after_a_killed_sshd(profile, servers):
    from jupyter_hpcllm.edge.ssh import SSHTransport

    server = servers(echo)
    before = _our_ssh_ports()
    transport = SSHTransport(profile)
    try:
        forward = transport.forward("127.0.0.1", server.port)
        host, port = forward.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"first")
            assert read_some(conn, 5) == b"first"
        for local in _our_ssh_ports() - before:
            for pid in sshd_pids(local):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while transport.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection((host, int(port))) as conn:  # the same address, a new connection
            conn.sendall(b"second")
            assert read_some(conn, 6) == b"second"
        forward.raise_if_failed()
        assert_closed_within_a_second(forward, f"127.0.0.1:{server.port}")
    finally:
        transport.close()


def _our_ssh_ports() -> set[int]:
    out = subprocess.run(["ss", "-tnpH", "( dport = :2222 )"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={os.getpid()}," in line}


@pytest.mark.cluster
def test_close_ends_every_thread_within_a_second_with_channels_in_flight(profile, servers):
    stream, sink = servers(endless), servers(deaf)
    holder = [ssh_transport(profile)]
    try:
        forward = PortForward(opener(holder, stream.port), f"endless:{stream.port}")
        upload = PortForward(opener(holder, sink.port), f"deaf:{sink.port}")
        readers = [socket.create_connection(("127.0.0.1", forward.local_port)) for _ in range(4)]
        for conn in readers[:2]:
            read_some(conn, 100_000)  # two streams flow; two are never read (window full, backlog)
        sender = socket.create_connection(("127.0.0.1", upload.local_port))
        sender.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                sender.send(b"u" * 65536)  # the channel's sendall now waits for window
        time.sleep(0.3)
        assert_closed_within_a_second(forward, f"endless:{stream.port}")
        assert_closed_within_a_second(upload, f"deaf:{sink.port}")
        assert not forward.errors and not upload.errors
        for conn in [*readers, sender]:
            conn.close()
    finally:
        holder[0].close()
