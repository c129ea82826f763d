"""SSH transport against the real sshd of the local test cluster."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from processes import zombie_children

from jupyter_hpcllm.edge.ssh import SSHTransport
from jupyter_hpcllm.edge.transport import connect
from jupyter_hpcllm.errors import (
    AuthenticationError,
    CommandTimeout,
    ConnectError,
    HostKeyError,
    RemoteCommandError,
)

pytestmark = pytest.mark.cluster


def test_run_and_errors(transport):
    result = transport.run("whoami; echo err >&2")
    assert result.stdout == "hpcuser\n" and result.stderr == "err\n"
    assert transport.run("cat", stdin="through stdin").stdout == "through stdin"
    with pytest.raises(RemoteCommandError) as caught:
        transport.run("echo so far; echo failing >&2; exit 7")
    assert (caught.value.exit_status, caught.value.stdout, caught.value.stderr) == (7, "so far\n", "failing\n")
    with pytest.raises(CommandTimeout):
        transport.run("sleep 10", timeout=0.5)
    # the connection survives a timed-out command
    assert transport.run("echo still here").stdout == "still here\n"


def test_large_output_on_both_streams(transport):
    result = transport.run("head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2")
    assert len(result.stdout) == 3_000_000 and len(result.stderr) == 3_000_000


def test_slurm_is_reachable(transport):
    assert "gpu01" in transport.run("sinfo -h -N -o '%N %T'").stdout


def test_unknown_host_key_is_rejected_with_advice(profile, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as caught:
        SSHTransport(replace(profile, known_hosts=str(empty))).connect()
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {empty}" in str(caught.value)


def test_changed_host_key_is_rejected(profile, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 " + " ".join((tmp_path / "other_key.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(HostKeyError, match="does not match known_hosts"):
        SSHTransport(replace(profile, known_hosts=str(known))).connect()


@pytest.mark.parametrize("ssh_backend", ["paramiko", "openssh"])
def test_wrong_key_is_an_authentication_error(profile, tmp_path):
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with pytest.raises(AuthenticationError, match="refused our keys"):
        connect(replace(profile, identity_file=str(wrong))).connect()


@pytest.mark.parametrize("ssh_backend", ["paramiko", "openssh"])
def test_unreachable_host(profile):
    with pytest.raises(ConnectError, match="Cannot reach .*Connection refused"):
        connect(replace(profile, port=1, connect_timeout=3)).connect()
    with pytest.raises(ConnectError, match="Cannot reach .*(resolve|Name or service not known)"):
        connect(replace(profile, host="no-such-host.invalid", connect_timeout=3)).connect()


def test_ssh_config_alias_with_all_its_settings(profile, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host testlogin\n  HostName 127.0.0.1\n  Port 2222\n  User hpcuser\n"
        f"  IdentityFile {profile.identity_file}\n  UserKnownHostsFile {profile.known_hosts}\n"
    )
    alias = replace(profile, host="testlogin", port=None, user=None, identity_file=None, known_hosts=None,
                    ssh_config=str(config))
    transport = SSHTransport(alias)
    try:
        assert transport.run("whoami").stdout == "hpcuser\n"
    finally:
        transport.close()


def test_proxy_jump(profile, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host jump\n  HostName 127.0.0.1\n  Port 2222\n  User hpcuser\n"
        f"  IdentityFile {profile.identity_file}\n  UserKnownHostsFile {profile.known_hosts}\n"
    )
    jumped = replace(profile, proxy_jump="jump", ssh_config=str(config))
    transport = SSHTransport(jumped)
    try:
        assert transport.run("echo $SSH_CONNECTION").stdout.startswith("127.0.0.1")
        assert transport._live is not None and len(transport._live.hops) == 1
    finally:
        transport.close()


def test_a_dropped_connection_is_replaced(profile):
    transport = SSHTransport(profile)
    try:
        assert transport.run("echo first").stdout == "first\n"
        first = transport.session()
        first.close()  # the connection drops (laptop asleep, VPN gone)
        assert not transport.alive
        assert transport.run("echo second").stdout == "second\n"
        assert transport.session() is not first and transport.alive
    finally:
        transport.close()


def counting_connects(transport: SSHTransport) -> list[int]:
    """A list that gains an entry each time the transport makes a connection."""
    made: list[int] = []
    original = transport._connect

    def counting_connect():
        made.append(1)
        return original()

    transport._connect = counting_connect  # type: ignore[method-assign]
    return made


def test_threads_share_one_connection_attempt(profile):
    """Many threads asking at once for a transport that is not connected yet make one connection."""
    import threading

    transport = SSHTransport(profile)
    made = counting_connects(transport)
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(transport.run("echo hi").stdout)) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert outputs == ["hi\n"] * 6 and made == [1]
    finally:
        transport.close()


def test_commands_ending_at_once_keep_the_connection(profile):
    """Commands on one connection that end as their input is closed never break it. paramiko's own
    half-close could reach sshd after the channel's CLOSE, and sshd then dropped the whole connection
    ("ieof packet referred to nonexistent channel"): about one run in twenty of six commands at once."""
    import threading

    transport = SSHTransport(profile)
    made = counting_connects(transport)
    outputs: list[str] = []
    errors: list[BaseException] = []

    def run_some() -> None:
        for _ in range(10):
            try:
                outputs.append(transport.run("true; echo ok").stdout)
            except BaseException as error:  # collected: the assertion shows it
                errors.append(error)

    threads = [threading.Thread(target=run_some) for _ in range(5)]  # within sshd's MaxSessions, with closing ones
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [] and outputs == ["ok\n"] * 50 and made == [1]
    finally:
        transport.close()


# --- a site's SSH: bastions, host certificates, a second factor (the test cluster's :2223 and :2224) ----

STATE = Path("/tmp/hpcllm-testcluster")


def site_profile(cluster_config, name: str):
    from jupyter_hpcllm.config.profiles import load_profile

    return load_profile(name, path=cluster_config)


def test_two_hop_proxy_jump_through_a_bastion_trusted_by_its_host_certificate(cluster_config):
    transport = SSHTransport(site_profile(cluster_config, "testcluster-twohop"))
    try:
        assert transport.run("whoami").stdout == "hpcuser\n"
        live = transport._live
        assert live is not None and len(live.hops) == 2  # the bastion, then the login node, then the target
        # the bastion presented its certificate, and the CA line in known_hosts_ca is what trusted it
        assert live.hops[0].host_key_type == "ssh-ed25519-cert-v01@openssh.com"
        login_key = live.hops[1].get_remote_server_key()
        assert live.hops[1].host_key_type == "ssh-ed25519" and login_key != live.hops[0].get_remote_server_key()
        assert live.session.get_remote_server_key() == login_key
    finally:
        transport.close()


def test_a_host_certificate_is_refused_without_the_cert_authority_line(cluster_config, tmp_path):
    without = tmp_path / "known_hosts"
    lines = (STATE / "known_hosts_ca").read_text().splitlines()
    without.write_text("".join(line + "\n" for line in lines if not line.startswith("@cert-authority")))
    config = tmp_path / "ssh_config"
    config.write_text((STATE / "ssh_config").read_text().replace(str(STATE / "known_hosts_ca"), str(without)))
    profile = replace(site_profile(cluster_config, "testcluster-twohop"), ssh_config=str(config))
    with pytest.raises(HostKeyError) as caught:
        SSHTransport(profile).connect()
    assert "[127.0.0.1]:2223" in str(caught.value)


def test_a_proxy_command_runs_through_the_shell(profile, tmp_path):
    config = tmp_path / "ssh_config"
    # OpenSSH's own client as the proxy, through the bastion: a pipe-free but shell-expanded command
    config.write_text(
        "Host viacommand\n  HostName 127.0.0.1\n  Port 2222\n  User hpcuser\n"
        f"  IdentityFile {profile.identity_file}\n  UserKnownHostsFile {profile.known_hosts}\n"
        f"  ProxyCommand ssh -F {STATE / 'ssh_config'} -o BatchMode=yes -W %h:%p tc-bastion 2>/dev/null\n")
    via = replace(profile, host="viacommand", port=None, user=None, identity_file=None, known_hosts=None,
                  ssh_config=str(config))
    transport = SSHTransport(via)
    try:
        assert transport.run("echo through $0").stdout.startswith("through")
    finally:
        transport.close()
    assert zombie_children() == []  # the ProxyCommand's process was waited for


def test_a_second_factor_is_asked_once_per_connection(cluster_config):
    code = (STATE / "mfa" / "code").read_text().strip()
    asked: list[tuple[str, bool]] = []

    def prompt(text: str, echo: bool) -> str:
        asked.append((text, echo))
        return code

    transport = SSHTransport(site_profile(cluster_config, "testcluster-mfa"), prompt=prompt)
    try:
        assert transport.run("whoami").stdout == "hpcuser\n" and transport.run("true").exit_status == 0
        assert len(asked) == 1 and asked[0][1] is False  # once, not echoed
        transport.session().close()  # a new connection asks again
        assert transport.run("whoami").stdout == "hpcuser\n" and len(asked) == 2
    finally:
        transport.close()


def test_a_second_factor_without_a_way_to_ask_is_a_clear_error_not_a_hang(cluster_config):
    from jupyter_hpcllm.errors import AuthenticationError

    with pytest.raises(AuthenticationError) as caught:
        SSHTransport(site_profile(cluster_config, "testcluster-mfa")).connect()
    assert "one-time code" in str(caught.value) and "ssh_backend" in str(caught.value)
