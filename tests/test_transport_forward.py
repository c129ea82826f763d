"""The local transport and the port forward, without a cluster."""

from __future__ import annotations

import socket
import threading

import pytest

from jupyter_hpcllm.config.profiles import Profile
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


def test_forward_close_is_idempotent(local, echo_server):
    forward = PortForward(lambda: local.open_channel("127.0.0.1", echo_server), "echo")
    forward.close()
    forward.close()
