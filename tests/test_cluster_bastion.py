"""The test cluster's bastion and MFA door, checked with the real OpenSSH client: the fixture itself, not the
project's code.

`tests/cluster/testcluster.sh up` runs a second sshd, the bastion, on 127.0.0.1:2223. Its host key is in no
known_hosts file: clients trust it only through a certificate from a test CA (`@cert-authority` in
`$STATE/known_hosts_ca`). A third sshd on 127.0.0.1:2224 wants the key and then a one-time code
(keyboard-interactive, from `$STATE/mfa/code`). `$STATE/ssh_config` names tc-login, tc-bastion, tc-twohop (the
login node reached through the bastion and the login node itself) and tc-mfa; config.toml's profiles
`testcluster-twohop` and `testcluster-mfa` use it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.cluster

BASTION = "[127.0.0.1]:2223"


@pytest.fixture(scope="session")
def state(cluster_config: Path) -> Path:
    return cluster_config.parent


def ssh(state: Path, host: str, *args: str, command: str = "true") -> subprocess.CompletedProcess[str]:
    """`ssh -F $STATE/ssh_config HOST COMMAND`: never a prompt (BatchMode, no terminal), bounded in time."""
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    return subprocess.run(
        ["ssh", "-F", str(state / "ssh_config"), *options, *args, host, command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no controlling terminal: a jump host could not ask anything either
    )


def public_key(path: Path) -> str:
    """'TYPE BASE64' of a .pub file (without its comment)."""
    return " ".join(path.read_text().split()[:2])


def fingerprint(path: Path) -> str:
    listing = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    return listing.stdout.split()[1]


def test_the_bastion_is_trusted_through_the_ca(state: Path) -> None:
    result = ssh(state, "tc-bastion", "-v", command="whoami")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hpcuser\n"
    assert "Server host certificate: ssh-ed25519-cert-v01@openssh.com" in result.stderr
    assert 'ID "testcluster-bastion"' in result.stderr
    assert "matches the ED25519-CERT host certificate" in result.stderr


def test_the_login_node_through_the_ssh_config(state: Path) -> None:
    result = ssh(state, "tc-login", command="whoami")
    assert (result.returncode, result.stdout) == (0, "hpcuser\n"), result.stderr


def other_ca_line(tmp_path: Path, pattern: str) -> str:
    key = tmp_path / "other_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return f"@cert-authority {pattern} {public_key(Path(f'{key}.pub'))}\n"


@pytest.mark.parametrize("known", ["plain-known_hosts", "other-ca", "ca-for-another-port", "empty"])
def test_the_bastion_is_refused_without_its_ca(state: Path, tmp_path: Path, known: str) -> None:
    if known == "plain-known_hosts":
        known_hosts = state / "known_hosts"  # the login node's key only
    else:
        lines = (state / "known_hosts_ca").read_text().splitlines(keepends=True)
        ca_line = next(line for line in lines if line.startswith("@cert-authority"))
        rest = [line for line in lines if line is not ca_line]
        extra = {
            "other-ca": other_ca_line(tmp_path, BASTION),
            "ca-for-another-port": ca_line.replace(BASTION, "[127.0.0.1]:2224"),
            "empty": "",
        }[known]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(rest) + extra if known != "empty" else "")
    result = ssh(state, "tc-bastion", "-o", f"UserKnownHostsFile={known_hosts}")
    assert result.returncode == 255, (result.stdout, result.stderr)
    assert "Host key verification failed." in result.stderr
    assert f"host key is known for {BASTION}" in result.stderr  # "No ED25519 host key is known for ..."


def test_the_bastion_is_known_only_through_the_ca(state: Path) -> None:
    bastion_key = public_key(state / "bastion" / "ssh_host_ed25519_key.pub")
    ca_key = public_key(state / "ca" / "host_ca.pub")
    login_line = (state / "known_hosts").read_text()
    assert login_line.startswith("[127.0.0.1]:2222 ssh-ed25519 ") and login_line.count("\n") == 1
    for name in ("known_hosts", "known_hosts_ca"):
        text = (state / name).read_text()
        assert bastion_key.split()[1] not in text, f"the bastion's plain key is in {name}"
        assert "2223" not in text.replace(f"@cert-authority {BASTION} ", "")
    login_key = login_line.split(" ", 1)[1]
    assert (state / "known_hosts_ca").read_text() == (
        f"{login_line}@cert-authority {BASTION} {ca_key}\n[127.0.0.1]:2224 {login_key}"
    )


def test_the_certificate_is_a_host_certificate_for_127_0_0_1(state: Path) -> None:
    cert = state / "bastion" / "ssh_host_ed25519_key-cert.pub"
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout
    lines = [line.strip() for line in listing.splitlines()]
    assert "Type: ssh-ed25519-cert-v01@openssh.com host certificate" in lines
    assert f"Public key: ED25519-CERT {fingerprint(state / 'bastion' / 'ssh_host_ed25519_key.pub')}" in lines
    assert f"Signing CA: ED25519 {fingerprint(state / 'ca' / 'host_ca.pub')} (using ssh-ed25519)" in lines
    assert 'Key ID: "testcluster-bastion"' in lines
    assert "Valid: forever" in lines
    principals = lines[lines.index("Principals:") + 1 : lines.index("Critical Options: (none)")]
    assert principals == ["127.0.0.1", "bastion"]


def test_the_running_bastion_serves_that_certificate(state: Path) -> None:
    scan = subprocess.run(
        ["ssh-keyscan", "-c", "-p", "2223", "-T", "10", "127.0.0.1"], capture_output=True, text=True, timeout=30
    )
    # -c prints each certificate as "TYPE BASE64", without the host in front.
    served = [line.split()[:2] for line in scan.stdout.splitlines() if not line.startswith("#")]
    cert = (state / "bastion" / "ssh_host_ed25519_key-cert.pub").read_text().split()[:2]
    assert served == [cert], scan.stderr


def test_two_hops_through_the_bastion_and_the_login_node(state: Path) -> None:
    result = ssh(state, "tc-twohop", "-v", command="hostname; whoami")
    assert result.returncode == 0, result.stderr
    hostname = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout
    assert result.stdout == f"{hostname}hpcuser\n"
    # ProxyJump tc-bastion,tc-login: ssh jumps to tc-login through tc-bastion, then to the target.
    assert "Setting implicit ProxyCommand from ProxyJump: ssh -J tc-bastion" in result.stderr
    assert f"Authenticated to 127.0.0.1 ({BASTION})" in result.stderr
    assert result.stderr.count("Authenticated to 127.0.0.1 (via proxy)") == 2
    assert "matches the ED25519-CERT host certificate" in result.stderr


@pytest.mark.parametrize(("name", "host"), [("testcluster-twohop", "tc-twohop"), ("testcluster-mfa", "tc-mfa")])
def test_the_profiles_through_the_ssh_config(state: Path, cluster_config: Path, name: str, host: str) -> None:
    profiles = tomllib.loads(cluster_config.read_text())["profiles"]
    direct, other = dict(profiles["testcluster"]), dict(profiles[name])
    assert other.pop("host") == host
    assert other.pop("ssh_config") == str(state / "ssh_config")
    for key in ("host", "port", "user", "identity_file", "known_hosts"):
        direct.pop(key)
    assert other == direct  # everything else as the direct profile; SSH settings only from ssh_config


# --- the MFA door: the key, then a one-time code -------------------------------------------------------


@pytest.fixture
def mfa(state: Path, tmp_path: Path):
    """Run `ssh tc-mfa` answering CODE to every question (SSH_ASKPASS); give back (result, questions, attempts)."""
    attempts_log = state / "logs" / "mfa-attempts.log"

    def attempts() -> list[str]:
        return attempts_log.read_text().splitlines() if attempts_log.exists() else []

    def run(code: str, *options: str, batch: bool = False):
        questions = tmp_path / "questions"
        questions.write_text("")
        askpass = tmp_path / "askpass"
        askpass.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>"{questions}"\necho "{code}"\n')
        askpass.chmod(0o755)
        before = len(attempts())
        args = [*options, "-o", "NumberOfPasswordPrompts=1"]
        if batch:
            result = ssh(state, "tc-mfa", *args, command="whoami")
        else:
            result = subprocess.run(
                ["ssh", "-F", str(state / "ssh_config"), "-o", "ConnectTimeout=10", *args, "tc-mfa", "whoami"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"},
            )
        return result, questions.read_text().splitlines(), [line.split()[1:] for line in attempts()[before:]]

    return run


def test_mfa_wants_the_key_and_then_the_code(state: Path, mfa) -> None:
    code = (state / "mfa" / "code").read_text().strip()
    result, questions, attempts = mfa(code)
    assert (result.returncode, result.stdout) == (0, "hpcuser\n"), result.stderr
    assert questions == ["(hpcuser@127.0.0.1) Password: "]  # keyboard-interactive, through PAM
    assert attempts == [["hpcuser", "ok"]]


def test_mfa_refuses_a_wrong_code(mfa) -> None:
    result, questions, attempts = mfa("000000x")
    assert result.returncode == 255
    assert "Permission denied (keyboard-interactive)" in result.stderr
    assert len(questions) == 1 and attempts == [["hpcuser", "wrong"]]


def test_mfa_refuses_the_code_without_the_key(state: Path, mfa) -> None:
    code = (state / "mfa" / "code").read_text().strip()
    result, questions, attempts = mfa(code, "-o", "PubkeyAuthentication=no")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert questions == [] and attempts == []


def test_mfa_refuses_a_client_that_cannot_ask(mfa) -> None:
    result, questions, attempts = mfa("unused", batch=True)  # BatchMode: no keyboard-interactive
    assert result.returncode == 255
    assert "Permission denied (keyboard-interactive)" in result.stderr
    assert questions == [] and attempts == []
