"""The OpenSSH backend (the system ssh with a ControlMaster) against the real sshd of the local test cluster."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from processes import sshd_pids, zombie_children

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.edge.openssh import OpenSSHTransport
from jupyter_hpcllm.edge.transport import connect, run_idempotent
from jupyter_hpcllm.errors import (
    AuthenticationError,
    CommandTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    RemoteCommandError,
    TransportError,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def ssh_backend() -> str:
    """The `profile` fixture of conftest, with ssh_backend = "openssh"."""
    return "openssh"


@pytest.fixture
def ssh(profile):
    made = connect(profile)
    assert isinstance(made, OpenSSHTransport)
    yield made
    made.close()


@pytest.fixture
def state(cluster_config: Path) -> Path:
    return cluster_config.parent


@pytest.fixture
def named_profile(cluster_config: Path):
    """Another profile of the test cluster's config (testcluster-twohop, testcluster-mfa), over OpenSSH."""
    return lambda name: replace(load_profile(name, path=cluster_config), ssh_backend="openssh")


def processes_with(text: str) -> list[str]:
    """Command lines of live processes that contain text (zombies have none)."""
    found = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if str(os.getpid()) not in line.split()[0]]


def gone(pid: int, within: float) -> bool:
    """Whether a process exited (a zombie counts as gone: PID 1 reaps late here) within some seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def start_remote_server(transport, command: str, *, cwd: str = "/tmp") -> tuple[int, str]:
    """Start a server on the cluster side in the background: (its pid, the first line it printed)."""
    script = (f"cd {cwd} && f=$(mktemp) && (nohup {command} > $f 2>&1 < /dev/null & echo $! > $f.pid) && "
              "for i in $(seq 50); do [ -s $f ] && break; sleep 0.1; done; cat $f.pid; head -1 $f; rm -f $f $f.pid")
    lines = transport.run(script).stdout.splitlines()
    return int(lines[0]), lines[1] if len(lines) > 1 else ""


# -- commands ---------------------------------------------------------------------------------------------


def test_run_and_errors(ssh):
    result = ssh.run("whoami; echo err >&2")
    assert (result.stdout, result.stderr) == ("hpcuser\n", "err\n")
    assert ssh.run("cat", stdin="through stdin").stdout == "through stdin"
    assert ssh.run("cat").stdout == ""  # no stdin: end of file at once, never a hang
    with pytest.raises(RemoteCommandError) as caught:
        ssh.run("echo so far; echo failing >&2; exit 7")
    assert (caught.value.exit_status, caught.value.stdout, caught.value.stderr) == (7, "so far\n", "failing\n")
    # A remote exit status of 255 is the command's, not a broken connection.
    assert ssh.run("echo out; exit 255", check=False).exit_status == 255
    with pytest.raises(CommandTimeout):
        ssh.run("sleep 10", timeout=0.5)
    assert ssh.run("echo still here").stdout == "still here\n"
    assert zombie_children() == []


def test_arguments_are_never_read_by_a_local_shell(ssh):
    assert ssh.run("printf '%s\\n' \"$0\" '-oProxyCommand=x' '$(id)'").stdout.splitlines()[1:] == [
        "-oProxyCommand=x", "$(id)"]


def test_large_output_on_both_streams(ssh):
    result = ssh.run("head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2")
    assert len(result.stdout) == 3_000_000 and len(result.stderr) == 3_000_000
    assert set(result.stdout) == {"a"} and set(result.stderr) == {"b"}


def test_description_connect_and_the_socket_directory(ssh):
    assert ssh.description == "hpcuser@127.0.0.1 port 2222 (OpenSSH)"
    assert not ssh.alive and ssh.control_path is None
    assert ssh.connect() is ssh
    assert ssh.alive and ssh.owns_master and ssh.master_pid > 1
    path = ssh.control_path
    assert path is not None and len(path.encode()) + 17 < 104  # ssh binds PATH.<16 random chars> first
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    directory = os.stat(os.path.dirname(path))
    assert directory.st_uid == os.getuid() and stat.S_IMODE(directory.st_mode) == 0o700
    assert "gpu01" in ssh.run("sinfo -h -N -o '%N %T'").stdout


def test_one_master_for_many_threads(profile):
    transport = OpenSSHTransport(profile)
    starts = []
    original = transport._start_master

    def counting(path):
        starts.append(path)
        return original(path)

    transport._start_master = counting
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(transport.run("echo hi").stdout)) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert outputs == ["hi\n"] * 6 and len(starts) == 1
    finally:
        transport.close()


# -- files ------------------------------------------------------------------------------------------------


@pytest.fixture
def remote_dir(ssh):
    path = ssh.run("mktemp -d ~/hpcllm-openssh-XXXXXX").stdout.strip()
    yield path
    ssh.run(f"rm -rf '{path}'")


def test_files_list_and_read(ssh, remote_dir):
    name = os.path.basename(remote_dir)
    ssh.run(
        f"cd '{remote_dir}' && printf 'a\\000b\\377c' > 'with space.bin' && mkdir sub && printf x > \"it's\" && "
        "ln -s sub link-to-dir && ln -s nowhere dangling && touch -d @1700000000 'with space.bin'"
    )
    files = ssh.files()
    entries = {e.name: e for e in files.list(remote_dir)}
    assert set(entries) == {"with space.bin", "sub", "it's", "link-to-dir", "dangling"}
    assert entries["with space.bin"].size == 5 and entries["with space.bin"].mtime == 1700000000
    assert entries["sub"].is_dir and not entries["sub"].is_link
    assert entries["link-to-dir"].is_link and not entries["link-to-dir"].is_dir  # links are not followed
    assert entries["dangling"].is_link
    # "~/" is the home directory; everything after it is quoted.
    assert {e.name for e in files.list(f"~/{name}")} == set(entries)
    assert files.read(f"{remote_dir}/with space.bin") == b"a\x00b\xffc"  # bytes as they are
    assert files.read(f"~/{name}/with space.bin", limit=3) == b"a\x00b"
    assert files.read(f"~/{name}/it's") == b"x"
    assert files.list(f"{remote_dir}/link-to-dir") == []  # a link given as the directory is followed
    for missing in (f"{remote_dir}/nope", f"~/{name}/nope", f"{remote_dir}/dangling", "-rf"):
        with pytest.raises(FileNotFoundError):
            files.read(missing)
    with pytest.raises(FileNotFoundError):
        files.list(f"~/{name}/no such dir")
    with pytest.raises(TransportError, match="Not a directory"):
        files.list(f"{remote_dir}/it's")
    with pytest.raises(TransportError, match="Is a directory"):
        files.read(f"{remote_dir}/sub")


def test_files_of_the_model_root(ssh, profile):
    models = {e.name: e for e in ssh.files().list(profile.model_root)}
    assert models and all(e.is_dir for e in models.values())
    some = sorted(models)[0]
    assert b'"architectures"' in ssh.files().read(f"{profile.model_root}/{some}/config.json")


@contextlib.contextmanager
def master_killed_under(transport, *, every_time: bool):
    """Within the block, the transport's run_bytes loses its master while the command runs (the first call,
    or every call): the master is killed 0.5 s into a command that first sleeps. Yields the masters' pids,
    one per call."""
    original = transport.run_bytes
    masters: list[int] = []

    def dying(command, **options):
        masters.append(transport.connect().master_pid)
        if len(masters) == 1 or every_time:
            threading.Timer(0.5, os.kill, (masters[-1], 9)).start()
            command = "sleep 3; " + command
        return original(command, **options)

    transport.run_bytes = dying
    try:
        yield masters
    finally:
        del transport.run_bytes


def test_file_reads_are_retried_once_when_the_master_dies_under_them(ssh, remote_dir):
    ssh.run(f"printf content > '{remote_dir}/f'")
    with master_killed_under(ssh, every_time=False) as masters:
        assert ssh.files().read(f"{remote_dir}/f") == b"content"
    assert len(masters) == 2 and masters[0] != masters[1]  # once more, on a new master
    with master_killed_under(ssh, every_time=False) as masters:
        assert [e.name for e in ssh.files().list(remote_dir)] == ["f"]
    assert len(masters) == 2 and masters[0] != masters[1]


def test_file_reads_are_retried_only_once(ssh, remote_dir):
    with master_killed_under(ssh, every_time=True) as masters, pytest.raises(ConnectionLost):
        ssh.files().read(f"{remote_dir}/f")
    assert len(masters) == 2
    with master_killed_under(ssh, every_time=True) as masters, pytest.raises(ConnectionLost):
        ssh.files().list(remote_dir)
    assert len(masters) == 2

# -- channels and forwards --------------------------------------------------------------------------------


def test_open_channel_reaches_the_login_nodes_sshd(ssh):
    channel = ssh.open_channel("127.0.0.1", 2222)
    try:
        channel.settimeout(10)
        assert channel.recv(100).startswith(b"SSH-2.0-OpenSSH")
    finally:
        channel.close()
    with pytest.raises(ConnectError, match="refused"):
        ssh.open_channel("127.0.0.1", 1)
    # A node name is resolved on the login node, as on a real cluster.
    channel = ssh.open_channel("gpu01", 2222)
    channel.close()


@pytest.fixture
def http_server(ssh, remote_dir):
    """`python3 -m http.server` on the cluster side (127.0.0.1, a free port), serving remote_dir."""
    ssh.run(f"cd '{remote_dir}' && head -c 5000000 /dev/urandom > big && printf hello > small")
    pid, line = start_remote_server(ssh, "python3 -u -m http.server --bind 127.0.0.1 0", cwd=remote_dir)
    port = int(re.search(r"port (\d+)", line).group(1))
    yield port, ssh.run(f"md5sum '{remote_dir}/big'").stdout.split()[0]
    ssh.run(f"kill {pid}", check=False)


def fetch(address: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=20) as answer:
        return bytes(answer.read())


def md5(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def test_forward_to_a_web_server(ssh, http_server):
    port, big_md5 = http_server
    forward = ssh.forward("127.0.0.1", port)
    try:
        assert fetch(forward.address, "/small") == b"hello"
        assert md5(fetch(forward.address, "/big")) == big_md5  # http.server ends each answer by closing
        results = []
        threads = [threading.Thread(target=lambda: results.append(fetch(forward.address, "/small")))
                   for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [b"hello"] * 20
        forward.raise_if_failed()
    finally:
        forward.close()
    with pytest.raises(OSError):
        fetch(forward.address, "/small")  # nothing listens there any more
    forward.close()  # idempotent


def test_forward_outlives_a_replaced_master(ssh, http_server):
    port, _ = http_server
    forward = ssh.forward("127.0.0.1", port, local_port=0)
    try:
        assert fetch(forward.address, "/small") == b"hello"
        first = ssh.master_pid
        os.kill(first, 9)
        assert gone(first, 5)
        assert fetch(forward.address, "/small") == b"hello"  # the next connection starts a new master
        assert ssh.master_pid not in (0, first)
        forward.raise_if_failed()
    finally:
        forward.close()


def test_forward_while_nothing_listens_yet(ssh):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    forward = ssh.forward("127.0.0.1", free)
    try:
        with pytest.raises(OSError):
            fetch(forward.address, "/")
        assert "refused" in (forward.last_refusal or "")
        forward.raise_if_failed()  # a refusal is not a failure of the forward
    finally:
        forward.close()


# -- the master: errors, death, reuse, closing ------------------------------------------------------------


def test_unknown_host_key_is_rejected_with_advice(profile, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as caught:
        connect(replace(profile, known_hosts=str(empty))).connect()
    assert "not in your known_hosts" in str(caught.value)
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {empty}" in str(caught.value)


def test_changed_host_key_is_rejected(profile, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 " + " ".join((tmp_path / "other_key.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(HostKeyError, match="does not match known_hosts") as caught:
        connect(replace(profile, known_hosts=str(known))).connect()
    assert "fingerprint now SHA256:" in str(caught.value) and f"ssh-keygen -f {known} -R" in str(caught.value)


@pytest.mark.parametrize("signal_number", [15, 9])
def test_a_killed_master_is_replaced_on_the_next_call(ssh, signal_number):
    assert ssh.run("echo first").stdout == "first\n"
    first, path = ssh.master_pid, ssh.control_path
    os.kill(first, signal_number)
    assert gone(first, 5)
    assert not ssh.alive
    assert ssh.run("echo second").stdout == "second\n"
    assert ssh.alive and ssh.master_pid != first and ssh.control_path == path


def test_a_master_that_dies_under_a_command_is_connection_lost(ssh):
    ssh.connect()
    pid = ssh.master_pid
    threading.Timer(1.0, os.kill, (pid, 9)).start()
    with pytest.raises(ConnectionLost, match="broke while running `sleep`"):
        ssh.run("sleep 5; echo done")
    assert run_idempotent(ssh, "echo again").stdout == "again\n"


def master_port(pid: int) -> int:
    """The local TCP port of a master's connection to the login node's sshd."""
    out = subprocess.run(["ss", "-tnpH", "( dport = :2222 )"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise AssertionError(f"no connection of the master {pid}: {out!r}")


def test_a_silent_drop_is_noticed_within_two_keepalives(profile):
    """The login node stops answering (sshd frozen: a laptop asleep, a VPN gone): the master's own
    keepalives (ServerAliveInterval, ServerAliveCountMax=2) end it, the command running under it is
    ConnectionLost, and the next call connects anew."""
    transport = connect(replace(profile, keepalive=1))
    transport.connect()
    stopped = sshd_pids(master_port(transport.master_pid))
    outcome: list[BaseException | str] = []

    def running() -> None:
        try:
            outcome.append(transport.run("sleep 3; echo done", timeout=30).stdout)
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=running)
    try:
        worker.start()
        time.sleep(1.0)  # the command runs
        for pid in stopped:
            os.kill(pid, 19)  # SIGSTOP
        started = time.monotonic()
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
        assert time.monotonic() - started < 8  # 2 keepalives of 1 s, and ssh's timer granularity
        assert transport.run("echo back").stdout == "back\n"
    finally:
        for pid in stopped:
            for signal_number in (18, 9):  # SIGCONT, SIGKILL
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_number)
        transport.close()


def test_close_leaves_nothing_behind(profile):
    transport = connect(profile)
    transport.run("true")
    channel = transport.open_channel("127.0.0.1", 2222)
    path, pid = transport.control_path, transport.master_pid
    assert processes_with(path)
    transport.close()
    channel.close()
    assert gone(pid, 5)
    assert processes_with(path) == [] and not os.path.exists(path)
    assert zombie_children() == []
    transport.close()  # idempotent
    with pytest.raises(ConnectError, match="closed"):
        transport.run("true")


def test_a_master_outlives_its_process_only_briefly(profile, cluster_config):
    """Killed without close(), our process leaves a master that exits ControlPersist seconds later."""
    code = (
        "import os, sys\n"
        "from dataclasses import replace\n"
        "from jupyter_hpcllm.config.profiles import load_profile\n"
        "from jupyter_hpcllm.edge import openssh\n"
        "from jupyter_hpcllm.edge.openssh import master\n"
        "master._GRACE = 2\n"
        "t = openssh.OpenSSHTransport(replace(load_profile('testcluster'), ssh_backend='openssh'))\n"
        "t.connect()\n"
        "print(t.master_pid, t.control_path, flush=True)\n"
        "os._exit(0)\n"
    )
    env = dict(os.environ, HPCLLM_CONFIG=str(cluster_config))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    pid, path = done.stdout.split()
    assert gone(int(pid), 15), "the master of a dead process is still running"
    deadline = time.monotonic() + 5
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(path)


def test_fresh_has_a_master_of_its_own(ssh):
    ssh.connect()
    other = ssh.fresh()
    try:
        assert other.run("echo fresh").stdout == "fresh\n"
        assert other.control_path != ssh.control_path and other.master_pid != ssh.master_pid
    finally:
        other.close()
    assert ssh.run("echo original").stdout == "original\n"


def test_the_users_own_control_master_is_reused_and_left_running(profile, tmp_path):
    control = tmp_path / "cm"
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host mylogin\n  HostName 127.0.0.1\n  Port 2222\n  User hpcuser\n  IdentityFile {profile.identity_file}\n"
        f"  UserKnownHostsFile {profile.known_hosts}\n  ControlPath {tmp_path}/cm\n"
    )
    subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-M", "-fN", "mylogin"], check=True,
                   stdin=subprocess.DEVNULL, timeout=30)
    try:
        alias = replace(profile, host="mylogin", port=None, user=None, identity_file=None, known_hosts=None,
                        ssh_config=str(config))
        transport = connect(alias)
        assert transport.description == "hpcuser@127.0.0.1 port 2222 (OpenSSH)"
        assert transport.run("whoami").stdout == "hpcuser\n"
        assert transport.control_path == str(control) and not transport.owns_master
        transport.close()
        check = subprocess.run(["ssh", "-F", str(config), "-O", "check", "mylogin"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr  # still there: it is the user's
    finally:
        subprocess.run(["ssh", "-F", str(config), "-O", "exit", "mylogin"], capture_output=True)


def test_proxy_jump_through_the_bastion(named_profile):
    transport = connect(named_profile("testcluster-twohop"))
    try:
        assert transport.run("whoami").stdout == "hpcuser\n"
        assert transport.description == "hpcuser@127.0.0.1 port 2222 (OpenSSH)"
        channel = transport.open_channel("127.0.0.1", 2222)
        channel.close()
    finally:
        transport.close()


def test_the_keepalive_and_host_key_options(profile):
    from jupyter_hpcllm.edge.openssh.options import ssh_options

    options = ssh_options(replace(profile, keepalive=7.5, connect_timeout=4))
    pairs = dict(zip(options[::2], options[1::2], strict=True))
    assert pairs["-p"] == "2222" and pairs["-l"] == "hpcuser"
    text = " ".join(options)
    for expected in ("StrictHostKeyChecking=yes", "ServerAliveInterval=8", "ServerAliveCountMax=2",
                     "ConnectTimeout=4", "IdentitiesOnly=yes", f"UserKnownHostsFile={profile.known_hosts}"):
        assert expected in text
    assert "accept-new" not in text and "-F" not in options  # the default ssh_config is not forced
    assert "ProxyJump=none" in ssh_options(replace(profile, proxy_jump="none"))
    # A file of the profile's own replaces ~/.ssh/config (and the system file, as for paramiko); a missing
    # one reads as empty.
    assert ssh_options(replace(profile, ssh_config="/nonexistent/ssh_config"))[:2] == ["-F", os.devnull]


# -- questions: MFA ---------------------------------------------------------------------------------------


def test_a_one_time_code_goes_to_the_prompt(state, named_profile):
    code = (state / "mfa" / "code").read_text().strip()
    asked = []

    def prompt(text: str, echo: bool) -> str:
        asked.append((threading.current_thread(), text, echo))
        return code

    transport = connect(named_profile("testcluster-mfa"), prompt=prompt)
    try:
        transport.connect()
        assert [(thread, echo) for thread, _, echo in asked] == [(threading.current_thread(), False)]
        assert "Password" in asked[0][1]
        assert transport.run("whoami").stdout == "hpcuser\n"
        assert len(asked) == 1  # asked once: every command shares the master
    finally:
        transport.close()


def test_a_wrong_code_is_an_authentication_error(named_profile):
    transport = connect(named_profile("testcluster-mfa"), prompt=lambda text, echo: "000000x")
    try:
        with pytest.raises(AuthenticationError, match="refused the password or code you entered"):
            transport.connect()
    finally:
        transport.close()


def test_without_a_prompt_the_error_says_how_to_open_a_master_by_hand(state, tmp_path, named_profile):
    profile = named_profile("testcluster-mfa")
    with pytest.raises(AuthenticationError, match="from a terminal") as caught:
        connect(profile).connect()
    command = re.search(r"from a terminal: `([^`]*)`", str(caught.value)).group(1)
    # Do what the message says, with the code typed by an askpass program instead of a person.
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ncat {state / 'mfa' / 'code'}\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
    subprocess.run(["bash", "-c", command], check=True, env=env, stdin=subprocess.DEVNULL, timeout=30,
                   start_new_session=True)
    path = command.split(" -S ")[1].split()[0]
    try:
        assert any("ServerAliveInterval=" in line and "ServerAliveCountMax=2" in line
                   for line in processes_with(path))
        transport = connect(profile)
        assert transport.run("whoami").stdout == "hpcuser\n"
        assert transport.control_path == path and not transport.owns_master
        transport.close()
        assert subprocess.run(["ssh", "-S", path, "-O", "check", "x"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ssh", "-S", path, "-O", "exit", "x"], capture_output=True)


def test_the_command_for_a_master_by_hand_keeps_the_keepalives(named_profile, monkeypatch):
    """A master opened by hand (the MFA case) must notice a silent drop as ours do."""
    from jupyter_hpcllm.edge.openssh import master

    monkeypatch.setattr(master, "has_terminal", lambda: False)
    profile = replace(named_profile("testcluster-mfa"), keepalive=7.5)
    route = OpenSSHTransport(profile)._route
    error = master.start_error(route, "Permission denied (keyboard-interactive).", route.shared_path,
                               asked=False, known_hosts=profile.known_hosts)
    assert isinstance(error, AuthenticationError)
    command = re.search(r"from a terminal: `([^`]*)`", str(error)).group(1)
    assert "-o ServerAliveInterval=8 -o ServerAliveCountMax=2" in command
    assert f"-M -S {route.shared_path} -fN -- {profile.host}" in command
    assert "ConnectTimeout" not in command


def test_without_a_prompt_ssh_asks_at_the_terminal(state, cluster_config):
    """No prompt, but a terminal: ssh asks there itself (a pseudo-terminal made by script(1) here)."""
    code = (
        "from pathlib import Path\n"
        "from dataclasses import replace\n"
        "from jupyter_hpcllm.config.profiles import load_profile\n"
        "from jupyter_hpcllm.edge import openssh\n"
        "from jupyter_hpcllm.edge.openssh.askpass import has_terminal\n"
        f"profile = replace(load_profile('testcluster-mfa', path=Path({str(cluster_config)!r})), "
        "ssh_backend='openssh')\n"
        "t = openssh.OpenSSHTransport(profile)\n"
        "print('terminal', has_terminal(), flush=True)\n"
        "print('RESULT', t.run('whoami').stdout.strip(), t.owns_master, flush=True)\n"
        "t.close()\n"
    )
    program = Path(f"/tmp/hpcllm-openssh-tty-{os.getpid()}.py")
    program.write_text(code)
    try:
        child = subprocess.Popen(["script", "-qec", f"{sys.executable} {program}", "/dev/null"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        assert child.stdin is not None and child.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while b"Password:" not in seen and time.monotonic() < deadline:
            seen += os.read(child.stdout.fileno(), 4096)
        assert b"terminal True" in seen and b"Password:" in seen, seen
        child.stdin.write((state / "mfa" / "code").read_bytes().strip() + b"\n")
        child.stdin.flush()
        rest, _ = child.communicate(timeout=30)
        assert b"RESULT hpcuser True" in seen + rest, seen + rest
    finally:
        program.unlink()


# -- other users: sockets and directories that are not ours ----------------------------------------------

NOBODY = pwd.getpwnam("nobody")

# A ControlMaster as far as our checks go (hello, alive check), run by user nobody; prints what it is sent.
FAKE_MASTER = r"""
import os, socket, struct, sys, threading
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(8)
print("ready", flush=True)

def recv(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def serve(c):
    print("connected", flush=True)
    try:
        while True:
            body = recv(c, struct.unpack(">I", recv(c, 4))[0])
            kind = struct.unpack(">I", body[:4])[0]
            print(f"message {kind:#x}", flush=True)
            if kind == 1:
                c.sendall(struct.pack(">III", 8, 1, 4))
            elif kind == 0x10000004:
                c.sendall(struct.pack(">II", 12, 0x80000005) + body[4:8] + struct.pack(">I", os.getpid()))
    except (EOFError, OSError):
        c.close()

while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", *argv]


@contextlib.contextmanager
def fake_master_of_nobody(path: str):
    """A fake master of user nobody listening at path; the list it yields holds, once the block ends,
    what it saw (connections, messages)."""
    server = subprocess.Popen(as_nobody("/usr/bin/python3", "-I", "-c", FAKE_MASTER, path),
                              stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert server.stdout.readline() == "ready\n"
        yield seen
    finally:
        time.sleep(0.5)  # what it was sent is printed
        server.kill()
        seen += server.communicate(timeout=10)[0].splitlines()


@pytest.fixture
def runtime_dir(monkeypatch):
    """A short XDG_RUNTIME_DIR of the test's own (our socket directory goes in it), that nobody can enter."""
    base = tempfile.mkdtemp(prefix="hx", dir="/tmp")
    os.chmod(base, 0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("trap", ["owned by another user", "open to every user", "a link"])
def test_a_socket_directory_that_is_not_private_is_refused_before_any_use(profile, runtime_dir, trap):
    """Another user made our socket directory first (its name is predictable) and put a fake master at the
    shared path in it: refused before it is even connected to."""
    transport = OpenSSHTransport(profile)
    route = transport._route
    if trap == "a link":
        target = tempfile.mkdtemp(dir=runtime_dir)
        os.chown(target, NOBODY.pw_uid, NOBODY.pw_gid)
        os.symlink(target, route.socket_dir)
    else:
        os.mkdir(route.socket_dir, 0o700)
        if trap == "owned by another user":
            os.chown(route.socket_dir, NOBODY.pw_uid, NOBODY.pw_gid)
        else:
            os.chmod(route.socket_dir, 0o777)
    try:
        with fake_master_of_nobody(route.shared_path) as seen, pytest.raises(ConfigError) as caught:
            transport.connect()
        expected = "can be used by other users" if trap == "open to every user" else "is not a directory of yours"
        assert expected in str(caught.value) and route.socket_dir in str(caught.value)
        assert seen == []  # never connected to
        assert transport.control_path is None
    finally:
        transport.close()


def test_a_socket_directory_in_a_directory_others_can_change_is_refused(profile, runtime_dir):
    os.chmod(runtime_dir, 0o777)  # no sticky bit: another user could swap our directory for theirs
    transport = OpenSSHTransport(profile)
    try:
        with pytest.raises(ConfigError, match="can be changed by other users"):
            transport.connect()
        assert not os.path.exists(transport._route.socket_dir)
    finally:
        transport.close()


def test_a_master_of_another_user_at_the_users_control_path_is_refused(profile, tmp_path):
    """The user's own ControlPath is theirs to choose (/tmp/ssh-%r@%h:%p, say), but a master there that
    runs as another user is never used: it would see every socket we hand it."""
    theirs = tempfile.mkdtemp(prefix="hx", dir="/tmp")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host mylogin\n  HostName 127.0.0.1\n  Port 2222\n  User hpcuser\n  IdentityFile {profile.identity_file}\n"
        f"  UserKnownHostsFile {profile.known_hosts}\n  ControlPath {theirs}/cm\n"
    )
    alias = replace(profile, host="mylogin", port=None, user=None, identity_file=None, known_hosts=None,
                    ssh_config=str(config))
    transport = connect(alias)
    try:
        with fake_master_of_nobody(f"{theirs}/cm") as seen, pytest.raises(ConnectError) as caught:
            transport.connect()
        assert f"{theirs}/cm is served by another user (uid {NOBODY.pw_uid})" in str(caught.value)
        assert seen == ["connected"]  # not one message: the check comes before the hello
        assert transport.control_path is None
    finally:
        transport.close()
        shutil.rmtree(theirs, ignore_errors=True)


def test_a_master_of_another_user_at_the_shared_path_is_refused(profile, runtime_dir):
    """Even in our private directory (put there by root, or by a race): the peer's user is checked."""
    transport = OpenSSHTransport(profile)
    route = transport._route
    theirs = tempfile.mkdtemp(dir=runtime_dir)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    os.mkdir(route.socket_dir, 0o700)
    try:
        with fake_master_of_nobody(f"{theirs}/s") as seen:
            os.rename(f"{theirs}/s", route.shared_path)  # still nobody's listening socket
            with pytest.raises(ConnectError, match="served by another user"):
                transport.connect()
        assert seen == ["connected"]
    finally:
        transport.close()


def test_the_askpass_bridge_is_private(runtime_dir):
    from jupyter_hpcllm.edge.openssh.askpass import AskpassBridge

    directory = os.path.join(runtime_dir, "hpcllm-ssh")
    os.mkdir(directory, 0o700)
    os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(ConfigError, match="not a directory of yours"):
        AskpassBridge(directory)
    os.chown(directory, os.geteuid(), os.getegid())
    bridge, other = AskpassBridge(directory), AskpassBridge(directory)
    try:
        assert bridge.directory != other.directory  # one of its own per start
        for path in (os.path.dirname(bridge.socket_path), os.path.dirname(bridge.script)):
            info = os.lstat(path)
            assert path == bridge.directory and os.path.dirname(path) == directory
            assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
    finally:
        bridge.close()
        other.close()
    assert os.listdir(directory) == []


def test_the_askpass_bridge_answers_no_other_user(runtime_dir):
    """Were its socket reachable, a process of another user asking first still gets no answer (the code)."""
    from jupyter_hpcllm.edge.openssh.askpass import _ASKPASS_CODE, AskpassBridge, StderrCollector

    directory = os.path.join(runtime_dir, "hpcllm-ssh")
    os.mkdir(directory, 0o700)
    bridge = AskpassBridge(directory)
    for path, mode in ((directory, 0o711), (bridge.directory, 0o711), (bridge.socket_path, 0o777)):
        os.chmod(path, mode)  # as if the directories did not keep others out
    ssh = subprocess.Popen(["sleep", "60"], stderr=subprocess.PIPE)  # stands for ssh while it asks
    asked: list[str] = []
    answers: dict[str, subprocess.CompletedProcess[str]] = {}

    def ask(who: str, argv: list[str]) -> None:
        env = dict(os.environ, **bridge.env)
        answers[who] = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)

    def askers() -> None:
        try:
            ask("nobody", as_nobody("/usr/bin/python3", "-I", "-S", "-c", _ASKPASS_CODE, "nobody's question"))
            ask("us", [bridge.script, "our question"])
        finally:
            ssh.kill()

    thread = threading.Thread(target=askers)
    thread.start()
    try:
        bridge.serve(ssh, lambda text, echo: asked.append(text) or "123456",
                     StderrCollector(ssh.stderr, echo=False), time.monotonic() + 30)
    finally:
        thread.join(30)
        ssh.wait()
        bridge.close()
    assert asked == ["our question"]
    assert (answers["nobody"].returncode, answers["nobody"].stdout) == (1, "")
    assert (answers["us"].returncode, answers["us"].stdout) == (0, "123456\n")


# -- portability ------------------------------------------------------------------------------------------


def test_windows_is_refused_with_advice(profile, monkeypatch):
    monkeypatch.setattr(os, "name", "nt")
    with pytest.raises(ConfigError, match="paramiko"):
        OpenSSHTransport(profile)


def test_importing_the_package_does_not_import_the_backend():
    code = "import sys, jupyter_hpcllm; print('jupyter_hpcllm.edge.openssh' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"
