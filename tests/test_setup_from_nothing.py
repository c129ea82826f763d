"""The test cluster's bring-up from nothing: a fresh Debian machine has none of its packages, users or
files, and a machine where an earlier run was killed has some of them half made.

`tests/cluster/testcluster.sh` is sourced (it then only defines its functions and settings) and single
steps run with stub commands first on PATH (`dpkg-query`, `apt-get`, `dpkg`, `id`, `useradd`) and its
machine paths pointed into tmp_path: no root, no real apt or dpkg, no cluster, nothing outside tmp_path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "cluster" / "testcluster.sh"

# Before each step: the machine paths into tmp_path, and never the machine's apt or dpkg.
PRELUDE = r"""
source "$TESTCLUSTER"
STATE=$FAKE_ROOT/state
POLICY_RC_D=$FAKE_ROOT/policy-rc.d
ETC_HOSTS=$FAKE_ROOT/hosts
OPT=$FAKE_ROOT/opt MFA_PAM=$FAKE_ROOT/pam.d/sshd-mfa
MFA_SSHD=$OPT/bin/sshd-mfa MFA_CHECK=$OPT/bin/mfa-check
for tool in dpkg-query apt-get dpkg; do
    [ "$(command -v "$tool")" = "$FAKE_ROOT/bin/$tool" ] || { echo "not the stub: $tool" >&2; exit 99; }
done
"""

# dpkg-query as dpkg's: a line per known name in the given format, "no packages found matching" on stderr
# for each unknown one, and exit status 1 when there was one. The database is "STATUS NAME" lines.
FAKE_DPKG_QUERY = r"""#!/usr/bin/env bash
format='' names=()
for arg; do
    case $arg in
        -W) ;;
        -f=*|--showformat=*) format=${arg#*=} ;;
        -*) echo "fake dpkg-query: unexpected option $arg" >&2; exit 2 ;;
        *) names+=("$arg") ;;
    esac
done
rc=0
for name in "${names[@]}"; do
    status=$(awk -v name="$name" '$2 == name { print $1; exit }' "$FAKE_ROOT/dpkg-db")
    if [ -n "$status" ]; then
        line=${format//'${db:Status-Status}'/$status}
        printf '%b' "${line//'${Package}'/$name}"
    else
        echo "dpkg-query: no packages found matching $name" >&2
        rc=1
    fi
done
exit $rc
"""

# apt-get: records "COMMAND<TAB>PACKAGES<TAB>what policy-rc.d answers<TAB>DEBIAN_FRONTEND" per call.
# FAKE_APT: ok (install adds the packages to the database), fail (every install fails), stale (install fails
# until an update ran), noop (succeeds, installs nothing), interrupt (SIGTERM to the calling shell).
FAKE_APT_GET = r"""#!/usr/bin/env bash
command='' packages=()
while [ $# -gt 0 ]; do
    case $1 in
        -o|-c) shift ;;
        -*) ;;
        *) if [ -z "$command" ]; then command=$1; else packages+=("$1"); fi ;;
    esac
    shift
done
policy=absent
if [ -e "$FAKE_ROOT/policy-rc.d" ]; then
    "$FAKE_ROOT/policy-rc.d" slurmd start && policy=0 || policy=$?
fi
printf '%s\t%s\t%s\t%s\n' "$command" "${packages[*]}" "$policy" "${DEBIAN_FRONTEND:-}" >>"$FAKE_ROOT/apt-calls"
echo "fake apt-get $command ${packages[*]}"
case ${FAKE_APT:-ok} in
    fail) [ "$command" != install ] || { echo "E: Unable to locate package ${packages[0]:-}"; exit 100; } ;;
    noop) exit 0 ;;
    interrupt) kill -TERM "$PPID"; sleep 5; exit 0 ;;
    stale) [ "$command" = update ] && touch "$FAKE_ROOT/updated"
           [ "$command" != install ] || [ -e "$FAKE_ROOT/updated" ] || { echo "E: 404 Not Found"; exit 100; } ;;
esac
if [ "$command" = install ]; then
    for package in "${packages[@]}"; do
        awk -v name="$package" '$2 != name' "$FAKE_ROOT/dpkg-db" >"$FAKE_ROOT/dpkg-db.new"
        echo "installed $package" >>"$FAKE_ROOT/dpkg-db.new"
        mv "$FAKE_ROOT/dpkg-db.new" "$FAKE_ROOT/dpkg-db"
    done
fi
"""

FAKE_DPKG = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_ROOT/dpkg-calls"
"""


class Machine:
    """A fake Debian machine in tmp_path: stub commands, a dpkg database, and where they record calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("apt-get", FAKE_APT_GET), ("dpkg", FAKE_DPKG)):
            self.stub(name, text)
        self.installed: list[str] = []
        self.db.write_text("")

    @property
    def db(self) -> Path:
        return self.root / "dpkg-db"

    @property
    def policy(self) -> Path:
        return self.root / "policy-rc.d"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    def stub(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def know(self, status: str, *packages: str) -> None:
        with self.db.open("a") as db:
            db.writelines(f"{status} {package}\n" for package in packages)

    def apt_calls(self) -> list[tuple[str, list[str], str, str]]:
        path = self.root / "apt-calls"
        if not path.exists():
            return []
        calls = []
        for line in path.read_text().splitlines():
            command, packages, policy, frontend = line.split("\t")
            calls.append((command, packages.split(), policy, frontend))
        return calls

    def run(self, code: str, *, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
        """Run bash CODE after sourcing testcluster.sh, with the stubs first on PATH."""
        environ = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "TESTCLUSTER": str(SCRIPT),
            "FAKE_ROOT": str(self.root),
            "HPCLLM_TESTCLUSTER_DIR": str(self.root / "state"),
            **env,
        }
        return subprocess.run(
            ["bash", "-c", PRELUDE + textwrap.dedent(code)],
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def cluster_packages(machine: Machine) -> list[str]:
    """The script's own PACKAGES, so the tests follow the list."""
    result = machine.run('printf "%s\\n" "${PACKAGES[@]}"')
    assert result.returncode == 0, result.stderr
    packages = result.stdout.split()
    assert len(packages) >= 3, packages
    return packages


# --- the package step ----------------------------------------------------------------------------------

# Which of the packages dpkg knows, and as what: a fresh machine knows none of them; a used one some, some
# of them only as removed ("config-files") or broken by an interrupted install ("half-configured").
SITUATIONS = {
    "none-known": lambda packages: {},
    "first-known": lambda packages: {packages[0]: "installed"},
    "last-unknown": lambda packages: dict.fromkeys(packages[:-1], "installed"),
    "every-other-known": lambda packages: dict.fromkeys(packages[::2], "installed"),
    "some-removed-or-broken": lambda packages: {
        **dict.fromkeys(packages[2:], "installed"),
        packages[0]: "config-files",
        packages[1]: "half-configured",
    },
    "all-installed": lambda packages: dict.fromkeys(packages, "installed"),
}


@pytest.mark.parametrize("situation", SITUATIONS)
def test_apt_get_installs_exactly_the_missing_packages(machine: Machine, situation: str) -> None:
    packages = cluster_packages(machine)
    known = SITUATIONS[situation](packages)
    for package, status in known.items():
        machine.know(status, package)
    missing = [p for p in packages if known.get(p) != "installed"]

    result = machine.run('install_packages "${PACKAGES[@]}"')

    assert result.returncode == 0, result.stderr
    if not missing:
        assert machine.apt_calls() == [], "apt-get ran although every package is installed"
        assert "packages already installed" in result.stdout
    else:
        # One call, for exactly the missing ones (in the list's order), with service starts forbidden
        # (policy-rc.d answers 101) and no questions asked.
        assert machine.apt_calls() == [("install", missing, "101", "noninteractive")]
        assert f"installing {' '.join(missing)}" in result.stdout
    assert not machine.policy.exists(), "policy-rc.d left behind"


def test_missing_packages_reads_the_output_not_the_exit_status(machine: Machine) -> None:
    machine.know("installed", "python3", "munge")
    machine.know("not-installed", "slurmd")
    result = machine.run("missing_packages nosuch-a python3 slurmd munge nosuch-b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["nosuch-a", "slurmd", "nosuch-b"]


def test_apt_get_failing_is_a_clear_error(machine: Machine) -> None:
    packages = cluster_packages(machine)
    result = machine.run('install_packages "${PACKAGES[@]}"', FAKE_APT="fail")
    assert result.returncode != 0
    assert "ERROR: apt-get failed" in result.stderr
    assert "E: Unable to locate package" in result.stderr  # the apt log's end is shown
    assert str(machine.root / "state" / "logs" / "apt.log") in result.stderr
    # Tried once, then finished dpkg's interrupted work, updated the lists, and tried again.
    assert [(command, names) for command, names, _, _ in machine.apt_calls()] == [
        ("install", packages),
        ("update", []),
        ("install", packages),
    ]
    assert "--configure -a" in (machine.root / "dpkg-calls").read_text()
    assert not machine.policy.exists(), "policy-rc.d left behind"


def test_stale_package_lists_are_updated(machine: Machine) -> None:
    packages = cluster_packages(machine)
    machine.know("installed", *packages[1:])
    result = machine.run('install_packages "${PACKAGES[@]}"', FAKE_APT="stale")
    assert result.returncode == 0, result.stderr
    assert [(command, names) for command, names, _, _ in machine.apt_calls()] == [
        ("install", packages[:1]),
        ("update", []),
        ("install", packages[:1]),
    ]


def test_packages_still_missing_after_apt_get_is_an_error(machine: Machine) -> None:
    packages = cluster_packages(machine)
    machine.know("installed", *packages[:-2])
    result = machine.run('install_packages "${PACKAGES[@]}"', FAKE_APT="noop")
    assert result.returncode != 0
    assert f"still not installed after apt-get: {' '.join(packages[-2:])}" in result.stderr
    assert not machine.policy.exists()


def test_someone_elses_policy_rc_d_stays(machine: Machine) -> None:
    machine.policy.write_text("#!/bin/sh\n# the image's own\nexit 104\n")
    machine.policy.chmod(0o755)
    result = machine.run("install_packages python3-venv")
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == [("install", ["python3-venv"], "104", "noninteractive")]
    assert machine.policy.read_text() == "#!/bin/sh\n# the image's own\nexit 104\n"


def test_our_policy_rc_d_left_by_a_killed_run_goes(machine: Machine) -> None:
    # Killed while apt-get ran: the EXIT trap takes it away.
    result = machine.run("install_packages python3-venv", FAKE_APT="interrupt")
    assert result.returncode != 0
    assert machine.apt_calls()[0][2] == "101"
    assert not machine.policy.exists(), "policy-rc.d left behind by an interrupted run"
    # Killed harder (no trap ran): the next run removes it, even with nothing to install.
    result = machine.run('printf "#!/bin/sh\\n%s\\nexit 101\\n" "$POLICY_MARK" >"$POLICY_RC_D"')
    assert result.returncode == 0, result.stderr
    assert machine.policy.exists()
    machine.know("installed", "python3-venv")
    result = machine.run("install_packages python3-venv")
    assert result.returncode == 0, result.stderr
    assert not machine.policy.exists()


def test_sourcing_runs_nothing(machine: Machine) -> None:
    result = machine.run("echo sourced")
    assert (result.returncode, result.stdout, result.stderr) == (0, "sourced\n", "")
    assert not (machine.root / "state").exists()


def test_packages_command_needs_root(machine: Machine) -> None:
    machine.stub("id", "#!/bin/sh\necho 1000\n")  # `id -u` of a user (also when the tests run as root)
    machine.know("installed", "python3-venv")  # were the check gone, still nothing to install
    result = machine.run(f"bash '{SCRIPT}' packages python3-venv")
    assert result.returncode != 0
    assert "run as root" in result.stderr
    assert machine.apt_calls() == []


# --- system users --------------------------------------------------------------------------------------

FAKE_ID = r"""#!/usr/bin/env bash
# id NAME: known unless listed in $FAKE_NO_USERS
for user in $FAKE_NO_USERS; do [ "$user" != "${1:-}" ] || { echo "id: '$1': no such user" >&2; exit 1; }; done
echo "uid=1(${1:-root})"
"""

FAKE_USERADD = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$FAKE_ROOT/useradd-calls"
"""


@pytest.mark.parametrize("absent", ["", "slurm"])
def test_the_slurm_user_is_made_when_missing(machine: Machine, absent: str) -> None:
    # slurm-wlm-basic-plugins makes it on its first install only; without it `install -o slurm` fails.
    machine.stub("id", FAKE_ID)
    machine.stub("useradd", FAKE_USERADD)
    result = machine.run("setup_system_users", FAKE_NO_USERS=absent)
    assert result.returncode == 0, result.stderr
    calls = machine.root / "useradd-calls"
    if absent:
        assert calls.read_text().split() == [
            "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "slurm",
        ]  # fmt: skip
    else:
        assert not calls.exists()


def test_a_missing_munge_user_is_a_clear_error(machine: Machine) -> None:
    machine.stub("id", FAKE_ID)
    machine.stub("useradd", FAKE_USERADD)
    result = machine.run("setup_system_users", FAKE_NO_USERS="munge")
    assert result.returncode != 0
    assert "system user munge is missing" in result.stderr
    assert "dpkg-reconfigure" in result.stderr


# --- /etc/hosts ----------------------------------------------------------------------------------------

HOSTS = {
    "absent": None,
    "empty": "",
    "usual": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n",
    "no-final-newline": "127.0.0.1\tlocalhost\n10.0.0.5\tvm",
    "only-gpu01": "127.0.0.1 localhost gpu01\n",
}


@pytest.mark.parametrize("before", HOSTS)
def test_hosts_get_the_node_names_once(machine: Machine, before: str) -> None:
    text = HOSTS[before]
    if text is not None:
        machine.hosts.write_text(text)
    for _ in range(2):
        result = machine.run("setup_hosts")
        assert result.returncode == 0, result.stderr
    lines = machine.hosts.read_text().splitlines()
    assert lines.count("127.0.0.1 gpu01 gpu02") == 1
    assert lines[: len((text or "").splitlines())] == (text or "").splitlines()  # the old lines untouched


def test_hosts_that_have_the_names_stay_as_they_are(machine: Machine) -> None:
    machine.hosts.write_text("127.0.0.1 localhost\n127.0.0.1\tgpu02 gpu01\n")
    result = machine.run("setup_hosts")
    assert result.returncode == 0, result.stderr
    assert machine.hosts.read_text() == "127.0.0.1 localhost\n127.0.0.1\tgpu02 gpu01\n"


# --- keys ----------------------------------------------------------------------------------------------

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


@needs_ssh_keygen
@pytest.mark.parametrize("leftover", ["nothing", "private-only", "public-only", "empty-private", "mismatched"])
def test_key_pairs_are_whole_after_any_leftover(machine: Machine, leftover: str) -> None:
    key = machine.root / "key"
    other = machine.root / "other"
    for path in (key, other):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    pub = Path(f"{key}.pub")
    if leftover == "nothing":
        key.unlink()
        pub.unlink()
    elif leftover == "private-only":
        pub.unlink()
    elif leftover == "public-only":
        key.unlink()
    elif leftover == "empty-private":
        key.write_text("")
    elif leftover == "mismatched":
        pub.write_text(Path(f"{other}.pub").read_text())
    result = machine.run(f"make_key '{key}' test-key")
    assert result.returncode == 0, result.stderr
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[1] == pub.read_text().split()[1]


@needs_ssh_keygen
def test_a_whole_key_pair_is_kept(machine: Machine) -> None:
    key = machine.root / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    before = (key.read_text(), Path(f"{key}.pub").read_text())
    result = machine.run(f"make_key '{key}' test-key")
    assert result.returncode == 0, result.stderr
    assert (key.read_text(), Path(f"{key}.pub").read_text()) == before


# --- pid files -----------------------------------------------------------------------------------------


@pytest.fixture
def stranger(tmp_path: Path):
    """A live process that is not any daemon of the cluster (what a stale pid's number now belongs to)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_stale_pid_file_never_signals_another_program(machine: Machine, stranger: subprocess.Popen[bytes]) -> None:
    pidfile = machine.root / "munged.pid"
    pidfile.write_text(f"{stranger.pid}\n")
    result = machine.run(f"echo \"[$(pid_of '{pidfile}')]\"; stop_pidfile munged '{pidfile}'")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "[]"
    time.sleep(0.2)
    assert stranger.poll() is None, "stop_pidfile killed a process that is not munged"
    assert not pidfile.exists()


def test_a_live_daemon_is_found_by_its_pid_file(machine: Machine) -> None:
    fake_sshd = machine.root / "sshd"  # /proc/PID/comm says "sshd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_sshd)
    process = subprocess.Popen([str(fake_sshd), "60"])
    try:
        pidfile = machine.root / "pids" / "sshd"
        pidfile.parent.mkdir()
        pidfile.write_text(f"{process.pid}\n")
        result = machine.run(f"pid_of '{pidfile}'; stop_pidfile sshd '{pidfile}'")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == str(process.pid)
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()


# --- the bastion's certificate and the client files ----------------------------------------------------

CERT_LEFTOVERS = ["nothing", "whole", "ca-private-only", "cert-from-another-ca", "cert-for-an-old-host-key",
                  "cert-garbage", "cert-other-principals"]  # fmt: skip


def sign(machine: Machine, ca: Path, key_pub: Path, principals: str = "127.0.0.1,bastion") -> Path:
    """A host certificate as setup_bastion_keys makes it, by another hand: KEY-cert.pub beside key_pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "testcluster-bastion", "-h", "-n", principals,
         "-V", "always:forever", str(key_pub)],
        check=True,
    )  # fmt: skip
    return key_pub.with_name(key_pub.name.removesuffix(".pub") + "-cert.pub")


@needs_ssh_keygen
@pytest.mark.parametrize("leftover", CERT_LEFTOVERS)
def test_the_bastion_certificate_is_whole_after_any_leftover(machine: Machine, leftover: str) -> None:
    state = machine.root / "state"
    ca, key = state / "ca" / "host_ca", state / "bastion" / "ssh_host_ed25519_key"
    cert = state / "bastion" / "ssh_host_ed25519_key-cert.pub"
    if leftover != "nothing":
        result = machine.run("setup_bastion_keys")
        assert result.returncode == 0, result.stderr
    before = cert.read_bytes() if cert.exists() else b""
    other = machine.root / "other"
    if leftover != "nothing" and leftover != "whole":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    if leftover == "ca-private-only":
        Path(f"{ca}.pub").unlink()
    elif leftover == "cert-from-another-ca":
        shutil.copy(f"{key}.pub", machine.root / "key.pub")
        shutil.copy(sign(machine, other, machine.root / "key.pub"), cert)
    elif leftover == "cert-for-an-old-host-key":
        shutil.copy(sign(machine, ca, Path(f"{other}.pub")), cert)
    elif leftover == "cert-garbage":
        cert.write_text("ssh-ed25519-cert-v01@openssh.com AAAA\n")
    elif leftover == "cert-other-principals":
        shutil.copy(f"{key}.pub", machine.root / "key.pub")
        shutil.copy(sign(machine, ca, machine.root / "key.pub", "127.0.0.1"), cert)

    result = machine.run("setup_bastion_keys; cert_fits && echo fits")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "fits"
    assert ("signed the bastion's host key" in result.stdout) == (leftover != "whole")
    if leftover == "whole":
        assert cert.read_bytes() == before, "a good certificate was signed anew"
    listing = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True)
    assert "host certificate" in listing.stdout
    assert not (state / "bastion" / "signing").exists()
    assert oct(cert.stat().st_mode & 0o777) == "0o644"
    assert oct(ca.stat().st_mode & 0o777) == "0o600" and oct(key.stat().st_mode & 0o777) == "0o600"


@needs_ssh_keygen
@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs ssh")
def test_the_client_files_name_the_bastion_through_the_ca(machine: Machine) -> None:
    state = machine.root / "state"
    code = """
        install -d "$STATE/sshd"
        make_key "$STATE/sshd/ssh_host_ed25519_key" testcluster-host
        setup_bastion_keys
        write_client_config
    """
    for _ in range(2):  # the second run changes nothing
        result = machine.run(code)
        assert result.returncode == 0, result.stderr
    login = " ".join((state / "sshd" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    ca = " ".join((state / "ca" / "host_ca.pub").read_text().split()[:2])
    assert (state / "known_hosts_ca").read_text() == (
        f"[127.0.0.1]:2222 {login}\n@cert-authority [127.0.0.1]:2223 {ca}\n[127.0.0.1]:2224 {login}\n"
    )
    for name in ("known_hosts_ca", "ssh_config", "config.toml"):
        assert oct((state / name).stat().st_mode & 0o777) == "0o644"
    assert not list(state.glob("*.tmp"))

    def resolved(host: str) -> dict[str, str]:  # what OpenSSH makes of the config (ssh -G: no connection)
        out = subprocess.run(["ssh", "-G", "-F", str(state / "ssh_config"), host], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)

    for host, port in (("tc-login", "2222"), ("tc-bastion", "2223"), ("tc-twohop", "2222"), ("tc-mfa", "2224")):
        settings = resolved(host)
        assert (settings["hostname"], settings["port"], settings["user"]) == ("127.0.0.1", port, "hpcuser")
        assert settings["identityfile"] == str(state / "client_key")
        assert settings["userknownhostsfile"] == str(state / "known_hosts_ca")
        assert (settings["stricthostkeychecking"], settings["identitiesonly"]) == ("true", "yes")
        assert settings.get("proxyjump") == ("tc-bastion,tc-login" if host == "tc-twohop" else None)


@pytest.mark.parametrize("leftover", ["nothing", "whole", "garbage", "empty"])
def test_the_mfa_code_and_its_check(machine: Machine, leftover: str) -> None:
    state = machine.root / "state"
    code_file = state / "mfa" / "code"
    (machine.root / "pam.d").mkdir()
    if leftover != "nothing":
        code_file.parent.mkdir(parents=True)
        code_file.write_text({"whole": "012345\n", "garbage": "12345x\n", "empty": ""}[leftover])
    for _ in range(2):
        result = machine.run("setup_mfa")
        assert result.returncode == 0, result.stderr
    code = code_file.read_text()
    assert len(code) == 7 and code[:6].isdigit() and code.endswith("\n")
    assert code == "012345\n" or leftover != "whole"
    assert oct(code_file.stat().st_mode & 0o777) == "0o600"
    check = machine.root / "opt" / "bin" / "mfa-check"
    pam = (machine.root / "pam.d" / "sshd-mfa").read_text()
    assert f"pam_exec.so type=auth quiet expose_authtok {check} {code_file} {state}/logs/mfa-attempts.log" in pam
    assert (machine.root / "opt" / "bin" / "sshd-mfa").resolve() == Path("/usr/sbin/sshd").resolve()
    assert "AuthenticationMethods publickey,keyboard-interactive" in (state / "mfa" / "sshd_config").read_text()
    # pam_exec (expose_authtok) writes the answer with a NUL after it.
    attempts = machine.root / "attempts.log"
    for answer, status, outcome in ((code[:6], 0, "ok"), ("999999x", 1, "wrong"), ("", 1, "wrong")):
        ran = subprocess.run(
            [str(check), str(code_file), str(attempts)],
            input=answer.encode() + b"\0",
            env={"PATH": "/usr/bin:/bin", "PAM_USER": "hpcuser"},
            capture_output=True,
        )
        assert ran.returncode == status, ran.stderr
        assert attempts.read_text().splitlines()[-1].split()[1:] == ["hpcuser", outcome]


@pytest.mark.parametrize("known", [False, True])
def test_the_ui_tests_browser_is_installed_the_same_way(machine: Machine, known: bool) -> None:
    """scripts/ui-test installs Debian's Chromium through the same step: a fresh machine asks apt-get for it,
    one that has it asks nothing."""
    script = (SCRIPT.parent.parent.parent / "scripts" / "ui-test").read_text()
    assert 'bash tests/cluster/testcluster.sh packages chromium' in script
    if known:
        machine.know("installed", "chromium")
    result = machine.run("install_packages chromium")
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == ([] if known else [("install", ["chromium"], "101", "noninteractive")])
