"""Site-ready SSH without a cluster: ssh_config resolution, known_hosts checks, and logins against an
in-process paramiko server (keys and certificates made with ssh-keygen into tmp_path)."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
from paramiko.common import AUTH_FAILED, AUTH_PARTIALLY_SUCCESSFUL, AUTH_SUCCESSFUL
from paramiko.pkey import PublicBlob
from paramiko.server import InteractiveQuery

import jupyter_hpcllm.edge
from jupyter_hpcllm.config.profiles import Profile
from jupyter_hpcllm.edge.hostkeys import KnownHosts
from jupyter_hpcllm.edge.sshconfig import SSHTarget, jump_chain
from jupyter_hpcllm.edge.sshsession import start_session
from jupyter_hpcllm.errors import AuthenticationError, ConfigError, ConnectError, HostKeyError

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own (no ~/.ssh keys or known_hosts of the machine) and no ssh-agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", path.name, "-f", str(path)], check=True)
    return path


def sign(ca: Path, key: Path, *, host: bool = True, principals: str = "login.example.org",
         validity: str | None = None, algorithm: str | None = None) -> Path:
    """Certify key.pub with ca: key-cert.pub."""
    args = ["ssh-keygen", "-q", "-s", str(ca), "-I", "test", "-n", principals]
    args += ["-h"] if host else []
    args += ["-V", validity] if validity else []
    args += ["-t", algorithm] if algorithm else []
    subprocess.run([*args, f"{key}.pub"], check=True, capture_output=True)
    return Path(f"{key}-cert.pub")


def public(path: Path) -> str:
    """'TYPE BASE64' of a .pub file."""
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def blob(path: Path) -> bytes:
    return base64.b64decode(Path(path).read_text().split()[1])


def profile(tmp_path: Path, config: str = "", **keys: object) -> Profile:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(config)
    return replace(Profile(name="site", host="login", ssh_config=str(ssh_config)), **keys)  # type: ignore[arg-type]


# --- ssh_config ----------------------------------------------------------------------------------------


def test_a_jump_chain_of_any_length_only_the_first_hops_own_proxy_applies(tmp_path: Path) -> None:
    config = """
Host login
  HostName login.example.org
  ProxyJump a,b:2201,carol@c
Host a
  HostName a.example.org
  User alice
  ProxyJump gw
Host b
  HostName b.example.org
  Port 2200
  ProxyJump nowhere
Host c
  ProxyCommand nc %h %p
Host gw
  ProxyCommand connect-proxy -S socks.example.org %h %p
"""
    site = profile(tmp_path, config)
    target = SSHTarget.resolve(site)
    assert target.proxy_jump == ("a", "b:2201", "carol@c") and target.proxy_command is None
    chain = jump_chain(site, target)
    assert [(t.hostname, t.port, t.user) for t in chain][1:] == [
        ("a.example.org", 22, "alice"), ("b.example.org", 2201, target.user), ("c", 22, "carol")]
    assert chain[0].hostname == "gw" and chain[0].proxy_command == "connect-proxy -S socks.example.org gw 22"
    assert all(t.proxy_jump == () for t in chain)
    assert all(t.proxy_command is None for t in chain[1:])  # b's ProxyJump and c's ProxyCommand do not apply


def test_jump_hosts_in_all_their_spellings(tmp_path: Path) -> None:
    site = profile(tmp_path, "Host b\n  Port 2200\n  User bob\n")
    assert (lambda t: (t.user, t.hostname, t.port))(SSHTarget.resolve(site, "eve@b:2201")) == ("eve", "b", 2201)
    assert (lambda t: (t.user, t.port))(SSHTarget.resolve(site, "b")) == ("bob", 2200)
    assert (lambda t: (t.hostname, t.port))(SSHTarget.resolve(site, "ssh://[::1]:2222")) == ("::1", 2222)
    with pytest.raises(ConfigError, match="jump host"):
        SSHTarget.resolve(site, "b:port")


def test_a_proxy_jump_loop_is_an_error(tmp_path: Path) -> None:
    site = profile(tmp_path, "Host login\n  ProxyJump x\nHost x\n  ProxyJump y\nHost y\n  ProxyJump x\n")
    with pytest.raises(ConfigError, match="loops: login → x → y → x"):
        jump_chain(site, SSHTarget.resolve(site))


def test_proxy_jump_none_and_whichever_proxy_comes_first(tmp_path: Path) -> None:
    config = """
Host login
  ProxyJump none
Host cmdfirst
  ProxyCommand nc %h %p
Host *
  ProxyJump bastion
  ProxyCommand never
"""
    site = profile(tmp_path, config)
    assert SSHTarget.resolve(site).proxy_jump == ()
    assert SSHTarget.resolve(site).proxy_command is None
    assert SSHTarget.resolve(replace(site, host="other")).proxy_jump == ("bastion",)
    assert SSHTarget.resolve(replace(site, host="other")).proxy_command is None
    cmd = SSHTarget.resolve(replace(site, host="cmdfirst"))
    assert (cmd.proxy_jump, cmd.proxy_command) == ((), "nc cmdfirst 22")
    # The profile's proxy_jump wins, "none" included.
    assert SSHTarget.resolve(replace(site, host="other", proxy_jump="none")).proxy_jump == ()
    assert SSHTarget.resolve(replace(site, host="cmdfirst", proxy_jump="none")).proxy_command is None
    assert SSHTarget.resolve(replace(site, proxy_jump="j1,j2")).proxy_jump == ("j1", "j2")


def test_profile_keys_win_for_its_host_and_apply_to_hops_as_documented(tmp_path: Path, home: Path) -> None:
    config = """
Host login
  HostName login.example.org
  User fromconfig
  Port 2200
  IdentityFile ~/.ssh/config_key
  UserKnownHostsFile ~/.ssh/config_known
  ProxyJump configjump
Host jumpwithkey
  IdentityFile ~/.ssh/jump_key
"""
    site = profile(tmp_path, config, user="me", port=2222, identity_file="~/my_key",
                   known_hosts="~/my_known", proxy_jump="myjump")
    target = SSHTarget.resolve(site)
    assert (target.hostname, target.user, target.port) == ("login.example.org", "me", 2222)
    assert target.identity_files == (f"{home}/my_key",)
    assert target.user_known_hosts == (f"{home}/my_known",)
    assert target.proxy_jump == ("myjump",)
    with_key, without = SSHTarget.resolve(site, "jumpwithkey"), SSHTarget.resolve(site, "plainjump")
    assert with_key.identity_files == (f"{home}/.ssh/jump_key",)
    assert without.identity_files == (f"{home}/my_key",)
    assert with_key.user_known_hosts == without.user_known_hosts == (f"{home}/my_known",)
    assert without.port == 22 and without.user != "me"  # the profile's user and port are its host's only
    # Without profile keys, ssh_config's apply.
    plain = SSHTarget.resolve(profile(tmp_path, config))
    assert (plain.user, plain.port, plain.proxy_jump) == ("fromconfig", 2200, ("configjump",))
    assert plain.identity_files == (f"{home}/.ssh/config_key",)
    assert plain.user_known_hosts == (f"{home}/.ssh/config_known",)


def test_defaults_as_openssh(tmp_path: Path, home: Path) -> None:
    target = SSHTarget.resolve(profile(tmp_path))
    assert target.user_known_hosts == (f"{home}/.ssh/known_hosts", f"{home}/.ssh/known_hosts2")
    assert target.global_known_hosts == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    assert target.identity_files == () and target.key_files[0] == f"{home}/.ssh/id_ed25519"
    assert (target.identities_only, target.identity_agent, target.host_key_alias) == (False, None, None)


def test_tokens_in_proxy_command_and_paths(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_DIR", "/opt/site")
    config = """
Host login
  HostName %h.example.org
  User hpc
  Port 2222
  ProxyCommand /usr/bin/nc -X connect -x proxy:3128 %h %p # %r %n 100%%h
  IdentityFile ~/.ssh/%r_at_%h
  IdentityFile ${SITE_DIR}/key
  UserKnownHostsFile ~/.ssh/kh_%n "/etc/site hosts"
Host bad
  IdentityFile ~/%Z
"""
    site = profile(tmp_path, config)
    target = SSHTarget.resolve(site)
    assert target.proxy_command == "/usr/bin/nc -X connect -x proxy:3128 login.example.org 2222 # hpc login 100%h"
    assert target.identity_files == (f"{home}/.ssh/hpc_at_login.example.org", "/opt/site/key")
    assert target.user_known_hosts == (f"{home}/.ssh/kh_login", "/etc/site hosts")
    with pytest.raises(ConfigError, match="%Z"):
        SSHTarget.resolve(replace(site, host="bad"))


@pytest.mark.parametrize(("keys", "config", "why"), [
    ({"host": "login;id"}, "", "The host name 'login;id' (in the profile 'site') contains the shell metacharacter ';'"),
    ({"host": "-oProxyCommand=id"}, "", "The host name '-oProxyCommand=id' (in the profile 'site') starts with '-'"),
    ({"host": "login node"}, "", "'login node' (in the profile 'site') contains whitespace"),
    ({"host": "login\x01"}, "", "contains a control character"),
    ({"user": "me`id`"}, "", "The user name 'me`id`' (in the profile 'site') contains the shell metacharacter '`'"),
    ({"user": "me -oX"}, "", "The user name 'me -oX' (in the profile 'site') has a '-' after whitespace"),
    ({"user": "me\\"}, "", "ends with a backslash"),
    ({"proxy_jump": "gw,eve;id@b"}, "", "The user name 'eve;id' (in the jump host 'eve;id@b') contains"),
    ({"proxy_jump": "alice@g$w"}, "", "The host name 'g$w' (in the jump host 'alice@g$w') contains the shell"),
    ({}, "Host login\n  ProxyJump al|ice@gw\n", "The user name 'al|ice' (in the jump host 'al|ice@gw')"),
])
def test_names_with_shell_metacharacters_are_refused_as_openssh_does(
    tmp_path: Path, keys: dict[str, object], config: str, why: str
) -> None:
    site = profile(tmp_path, config, **keys)
    with pytest.raises(ConfigError, match="CVE-2023-51385") as caught:
        jump_chain(site, SSHTarget.resolve(site))
    assert why in str(caught.value)


def test_names_openssh_accepts_are_accepted(tmp_path: Path) -> None:
    for keys in ({"host": "login-1.example.org", "user": "first last"}, {"host": "::1", "user": "DOM\\me$"},
                 {"proxy_jump": "ssh://al.ice@[::1]:2222,bob@gw_1:22"}):
        site = profile(tmp_path, **keys)
        jump_chain(site, SSHTarget.resolve(site))


def test_no_name_changes_the_shell_structure_of_a_proxy_command(tmp_path: Path) -> None:
    """ssh_config's own HostName (not checked, as in OpenSSH) and a user name with a space (allowed)
    reach the command quoted for where they land: bare, in '...' or in "..."."""
    hostname = "h*st;$(echo pwned)'\"`echo x`\\ #"
    config = (f"Host login\n  HostName {hostname}\n"
              "  ProxyCommand printf '<%%s>\\n' %h \"%h\" '%h' x%r\"%r\"'%r' %n:%p \\%n\n")
    target = SSHTarget.resolve(profile(tmp_path, config, user="first last"))
    assert target.hostname == hostname
    assert target.proxy_command is not None
    assert target.proxy_command.endswith(" login:22 \\login")  # plain values stay as they are
    printed = subprocess.run(["/bin/sh", "-c", "exec " + target.proxy_command], capture_output=True, text=True,
                             check=True).stdout
    assert printed.splitlines() == [f"<{hostname}>"] * 3 + ["<xfirst lastfirst lastfirst last>", "<login:22>",
                                                             "<login>"]
    # After a backslash no quoting helps: refused rather than run.
    with pytest.raises(ConfigError, match="after a backslash"):
        SSHTarget.resolve(profile(tmp_path, "Host login\n  ProxyCommand nc \\%r %p\n", user="first last"))


def test_host_key_alias_and_the_known_hosts_name(tmp_path: Path) -> None:
    site = profile(tmp_path, "Host aliased\n  HostName Login.Example.org\n  HostKeyAlias cluster-login\n"
                             "Host *\n  HostName Login.Example.org\n")
    assert SSHTarget.resolve(replace(site, host="aliased", port=2222)).known_hosts_name == "cluster-login"
    assert SSHTarget.resolve(replace(site, port=2222)).known_hosts_name == "[login.example.org]:2222"
    assert SSHTarget.resolve(site).known_hosts_name == "login.example.org"
    assert SSHTarget.resolve(replace(site, port=2222)).display.endswith("@Login.Example.org port 2222")


def test_identity_options(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_AGENT", "/run/agent.sock")
    config = """
Host login
  IdentitiesOnly yes
  IdentityFile ~/.ssh/site_key
  CertificateFile ~/.ssh/site_key-cert.pub
  IdentityAgent ~/agent.sock
Host noagent
  IdentityAgent none
Host envagent
  IdentityAgent $MY_AGENT
Host defaultagent
  IdentityAgent SSH_AUTH_SOCK
Host *
  CertificateFile ~/.ssh/second-cert.pub
  IdentityFile ~/.ssh/second
  GlobalKnownHostsFile /site/known_hosts
"""
    site = profile(tmp_path, config)
    target = SSHTarget.resolve(site)
    assert target.identities_only
    assert target.identity_files == (f"{home}/.ssh/site_key", f"{home}/.ssh/second")
    assert target.certificate_files == (f"{home}/.ssh/site_key-cert.pub", f"{home}/.ssh/second-cert.pub")
    assert target.identity_agent == f"{home}/agent.sock"
    assert target.global_known_hosts == ("/site/known_hosts",)
    hosts = ("noagent", "envagent", "defaultagent")
    agents = {h: SSHTarget.resolve(replace(site, host=h)).identity_agent for h in hosts}
    assert agents == {"noagent": "none", "envagent": "/run/agent.sock", "defaultagent": None}
    assert not SSHTarget.resolve(replace(site, host="other")).identities_only


def test_include_as_openssh(tmp_path: Path, home: Path) -> None:
    (home / ".ssh" / "conf.d").mkdir()
    (home / ".ssh" / "conf.d" / "10-site").write_text("Host login\n  HostName login.site.org\n  User fromsite\n")
    site = profile(tmp_path, "Include conf.d/*\nPort 2200\nHost login\n  User fromlater\n")
    target = SSHTarget.resolve(site)
    # The include's Host block ended with it: Port 2200 is global again; the first User wins.
    assert (target.hostname, target.user, target.port) == ("login.site.org", "fromsite", 2200)
    assert SSHTarget.resolve(replace(site, host="other")).port == 2200


def test_the_system_config_is_read_after_the_users_unless_the_profile_names_a_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_hpcllm.edge import sshconfig

    system = tmp_path / "system_config"
    system.write_text("Host *\n  User fromsystem\n  Port 2200\n  GlobalKnownHostsFile /site/known_hosts\n")
    monkeypatch.setattr(sshconfig, "SYSTEM_CONFIG", str(system))
    (home / ".ssh" / "config").write_text("Host login\n  User fromuser\n")
    target = SSHTarget.resolve(replace(Profile(name="site", host="login")))
    assert (target.user, target.port, target.global_known_hosts) == ("fromuser", 2200, ("/site/known_hosts",))
    assert SSHTarget.resolve(profile(tmp_path, "Host login\n  User fromuser\n")).port == 22


# --- known_hosts ---------------------------------------------------------------------------------------


def presented(path: Path) -> paramiko.PKey:
    """The key a server presents, as paramiko's transport gives it: from a .pub or -cert.pub file."""
    data = blob(path)
    kind = Path(path).read_text().split()[0]
    return paramiko.RSAKey(data=data) if "rsa" in kind else paramiko.Ed25519Key(data=data)


def test_unknown_and_changed_keys_are_refused_with_advice(tmp_path: Path) -> None:
    host, other = keygen(tmp_path / "host"), keygen(tmp_path / "other")
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\n[login]:2222 {public(other)}\n")
    hosts = KnownHosts([str(known), str(tmp_path / "missing")])
    with pytest.raises(HostKeyError) as caught:
        hosts.check("[login]:2222", presented(Path(f"{host}.pub")))
    assert "does not match known_hosts" in str(caught.value)
    assert f"`ssh-keygen -R '[login]:2222' -f {known}`" in str(caught.value)  # zsh would glob [login]
    with pytest.raises(HostKeyError) as caught:
        hosts.check("[login]:2223", presented(Path(f"{host}.pub")))
    assert "ssh-keyscan -p 2223 login >> ~/.ssh/known_hosts" in str(caught.value)
    hosts.check("[login]:2222", presented(Path(f"{other}.pub")))


def test_the_advice_runs_as_written_in_any_shell(tmp_path: Path) -> None:
    """Quoted where a shell would split or glob it (zsh fails on an unquoted [host]:port)."""
    host, other = keygen(tmp_path / "host"), keygen(tmp_path / "other")
    known = tmp_path / "my known_hosts [site]"
    known.write_text(f"[login]:2222 {public(other)}\nkeep {public(other)}\n")
    with pytest.raises(HostKeyError) as caught:
        KnownHosts([str(known)]).check("[login]:2222", presented(Path(f"{host}.pub")))
    remove = str(caught.value).split("remove the old line with `")[1].split("`")[0]
    assert remove == f"ssh-keygen -R '[login]:2222' -f {shlex.quote(str(known))}"
    subprocess.run(["/bin/sh", "-c", remove], check=True, capture_output=True)
    assert known.read_text().splitlines() == [f"keep {public(other)}"]
    # The keyscan advice: the file and the sed that writes a HostKeyAlias, quoted.
    hosts = tmp_path / "site hosts"
    config = f'Host login\n  HostKeyAlias cl&us/ter\n  UserKnownHostsFile "{hosts}"\n'
    target = SSHTarget.resolve(profile(tmp_path, config, port=2222))
    with pytest.raises(HostKeyError) as caught:
        KnownHosts.for_target(target).check(target.known_hosts_name, presented(Path(f"{host}.pub")), target=target)
    scan = str(caught.value).split("trust it with `")[1].split("`")[0]
    assert scan == (f"ssh-keyscan -p 2222 login | sed 's/^[^ ]*/cl\\&us\\/ter/' >> {shlex.quote(str(hosts))}")
    scanned = f"[login]:2222 {public(host)}"  # what ssh-keyscan would print
    subprocess.run(["/bin/sh", "-c", scan.replace("ssh-keyscan -p 2222 login", f"echo {shlex.quote(scanned)}")],
                   check=True)
    KnownHosts.for_target(target).check(target.known_hosts_name, presented(Path(f"{host}.pub")), target=target)


def test_other_key_types_only_is_not_a_change(tmp_path: Path) -> None:
    rsa, ed = keygen(tmp_path / "rsa", "rsa"), keygen(tmp_path / "ed")
    known = tmp_path / "known_hosts"
    known.write_text(f"login {public(rsa)}\n")
    with pytest.raises(HostKeyError, match="lists only ssh-rsa keys") as caught:
        KnownHosts([str(known)]).check("login", presented(Path(f"{ed}.pub")))
    assert "ssh-keyscan -t ed25519 -p 22 login" in str(caught.value)


def test_hashed_entries(tmp_path: Path) -> None:
    host = keygen(tmp_path / "host")
    known = tmp_path / "known_hosts"
    known.write_text(f"login.example.org {public(host)}\n[login.example.org]:2222 {public(host)}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "login.example.org" not in known.read_text() and known.read_text().count("|1|") == 2
    hosts = KnownHosts([str(known)])
    hosts.check("login.example.org", presented(Path(f"{host}.pub")))
    hosts.check("[login.example.org]:2222", presented(Path(f"{host}.pub")))
    assert hosts.preferred_key_types("[login.example.org]:2222") == ("ssh-ed25519",)
    with pytest.raises(HostKeyError, match="not in your known_hosts"):
        hosts.check("other.example.org", presented(Path(f"{host}.pub")))


def test_global_files_after_the_users(tmp_path: Path) -> None:
    host, other = keygen(tmp_path / "host"), keygen(tmp_path / "other")
    glob = tmp_path / "ssh_known_hosts"
    glob.write_text(f"login {public(host)}\nchanged {public(other)}\n")
    hosts = KnownHosts([str(tmp_path / "none")], [str(glob)])
    hosts.check("login", presented(Path(f"{host}.pub")))
    with pytest.raises(HostKeyError, match="as root"):
        hosts.check("changed", presented(Path(f"{host}.pub")))


def test_wildcards_and_negation(tmp_path: Path) -> None:
    host = keygen(tmp_path / "host")
    known = tmp_path / "known_hosts"
    known.write_text(f"*.example.org,!bad.example.org,node?? {public(host)}\n[login.site]:2222 {public(host)}\n")
    hosts = KnownHosts([str(known)])
    for name in ("login.example.org", "LOGIN.Example.ORG", "node01", "[login.site]:2222"):
        hosts.check(name, presented(Path(f"{host}.pub")))
    for name in ("bad.example.org", "node1", "example.org", "l[login.site]:2222", "[login.site]:22"):
        with pytest.raises(HostKeyError, match="not in your known_hosts"):
            hosts.check(name, presented(Path(f"{host}.pub")))


def test_revoked_keys(tmp_path: Path) -> None:
    host = keygen(tmp_path / "host")
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked * {public(host)}\nlogin {public(host)}\n")
    with pytest.raises(HostKeyError, match="@revoked"):
        KnownHosts([str(known)]).check("login", presented(Path(f"{host}.pub")))


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return keygen(tmp_path / "ca")


@pytest.fixture
def host_key(tmp_path: Path) -> Path:
    return keygen(tmp_path / "host")


def trusting(tmp_path: Path, *lines: str) -> KnownHosts:
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{line}\n" for line in lines))
    return KnownHosts([str(known)])


def test_a_host_certificate_from_a_trusted_ca_is_accepted(tmp_path: Path, ca: Path, host_key: Path) -> None:
    hosts = trusting(tmp_path, f"@cert-authority *.example.org {public(ca)}")
    cert = sign(ca, host_key, principals="login.example.org,login")
    hosts.check("login.example.org", presented(cert))
    first = hosts.preferred_key_types("login.example.org")
    assert first is not None and first[0] == "ssh-ed25519-cert-v01@openssh.com"
    assert hosts.preferred_key_types("elsewhere.org") is None
    # The plain key alone is not trusted by the CA line.
    with pytest.raises(HostKeyError, match="not in your known_hosts"):
        hosts.check("login.example.org", presented(Path(f"{host_key}.pub")))


def test_an_rsa_ca_signature_is_verified(tmp_path: Path, host_key: Path) -> None:
    rsa_ca = keygen(tmp_path / "rsa_ca", "rsa")
    trusting(tmp_path, f"@cert-authority login.example.org {public(rsa_ca)}").check(
        "login.example.org", presented(sign(rsa_ca, host_key)))


def test_a_host_certificate_signed_with_sha1_rsa_is_refused(tmp_path: Path, host_key: Path) -> None:
    """OpenSSH 8.2+ refuses CA signatures made with ssh-rsa (SHA-1): CASignatureAlgorithms."""
    rsa_ca = keygen(tmp_path / "rsa_ca", "rsa")
    cert = sign(rsa_ca, host_key, algorithm="ssh-rsa")
    listed = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True)
    assert "(using ssh-rsa)" in listed.stdout
    ca_line = f"@cert-authority login.example.org {public(rsa_ca)}"
    with pytest.raises(HostKeyError, match="cannot be trusted") as caught:
        trusting(tmp_path, ca_line).check("login.example.org", presented(cert))
    assert "its CA signature uses ssh-rsa (RSA with SHA-1), which OpenSSH 8.2 and later refuse" in str(caught.value)
    assert "-t rsa-sha2-512" in str(caught.value)
    # As in OpenSSH, the host's own key still counts when known_hosts lists it.
    trusting(tmp_path, ca_line, f"login.example.org {public(host_key)}").check("login.example.org", presented(cert))


def test_a_forged_certificate_is_refused(tmp_path: Path, ca: Path, host_key: Path) -> None:
    cert = sign(ca, host_key)
    kind, data = cert.read_text().split()[:2]
    raw = bytearray(base64.b64decode(data))
    raw[-5] ^= 1  # inside the signature
    cert.write_text(f"{kind} {base64.b64encode(bytes(raw)).decode()}\n")
    with pytest.raises(HostKeyError, match="signature does not verify"):
        trusting(tmp_path, f"@cert-authority * {public(ca)}").check("login.example.org", presented(cert))


@pytest.mark.parametrize(("signing", "why"), [
    ({"validity": "20200101:20200102"}, "expired on 2020-01-02"),
    ({"validity": "20990101:20990102"}, "valid only from 2099-01-01"),
    ({"principals": "other.example.org"}, "valid for other.example.org, not login.example.org"),
    ({"host": False}, "user certificate"),
])
def test_host_certificate_problems(tmp_path: Path, ca: Path, host_key: Path, signing: dict[str, object],
                                   why: str) -> None:
    hosts = trusting(tmp_path, f"@cert-authority *.example.org {public(ca)}")
    with pytest.raises(HostKeyError, match="cannot be trusted") as caught:
        hosts.check("login.example.org", presented(sign(ca, host_key, **signing)))  # type: ignore[arg-type]
    assert why in str(caught.value)


def test_a_certificate_from_an_untrusted_ca_falls_back_to_the_known_plain_key(
    tmp_path: Path, ca: Path, host_key: Path
) -> None:
    other_ca = keygen(tmp_path / "other_ca")
    cert = sign(other_ca, host_key)
    with pytest.raises(HostKeyError, match="no @cert-authority line"):
        trusting(tmp_path, f"@cert-authority * {public(ca)}").check("login.example.org", presented(cert))
    trusting(tmp_path, f"@cert-authority * {public(ca)}", f"login.example.org {public(host_key)}").check(
        "login.example.org", presented(cert))
    # An expired certificate falls back too.
    expired = sign(ca, host_key, validity="20200101:20200102")
    trusting(tmp_path, f"@cert-authority * {public(ca)}", f"login.example.org {public(host_key)}").check(
        "login.example.org", presented(expired))


def test_a_revoked_ca_and_host_key_alias_principals(tmp_path: Path, ca: Path, host_key: Path) -> None:
    cert = sign(ca, host_key, principals="cluster-login")
    with pytest.raises(HostKeyError, match="CA key marked @revoked"):
        trusting(tmp_path, f"@cert-authority * {public(ca)}", f"@revoked * {public(ca)}").check(
            "cluster-login", presented(cert))
    site = profile(tmp_path, "Host login\n  HostName login.example.org\n  HostKeyAlias cluster-login\n")
    target = SSHTarget.resolve(replace(site, port=2222))
    trusting(tmp_path, f"@cert-authority cluster-login {public(ca)}").check(
        target.known_hosts_name, presented(cert), target=target)


# --- sessions against an in-process server -------------------------------------------------------------


class Sshd(paramiko.ServerInterface):
    """A paramiko server: accepts the given keys (or certificates), then optionally asks questions."""

    def __init__(self, *, keys: tuple[bytes, ...] = (), then: str = "", questions: tuple[tuple[str, bool], ...] = (),
                 expected: tuple[str, ...] = (), password: str | None = None) -> None:
        self.keys, self.then, self.questions, self.expected, self.password = keys, then, questions, expected, password
        self.offered: list[bytes] = []
        self.replies: list[list[str]] = []
        self.passwords: list[str] = []
        self.key_done = False

    def get_allowed_auths(self, username: str) -> str:
        if self.key_done:
            return self.then
        methods = ["publickey"] if self.keys else []
        methods += ["keyboard-interactive"] if self.questions and not self.then else []
        methods += ["password"] if self.password and not self.then else []
        return ",".join(methods)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        offered = key.public_blob.key_blob if key.public_blob else key.asbytes()
        self.offered.append(offered)
        if offered not in self.keys:
            return AUTH_FAILED
        if self.then:
            self.key_done = True
            return AUTH_PARTIALLY_SUCCESSFUL
        return AUTH_SUCCESSFUL

    def check_auth_interactive(self, username: str, submethods: str) -> int | InteractiveQuery:
        if "keyboard-interactive" not in self.get_allowed_auths(username):
            return AUTH_FAILED
        return InteractiveQuery("Cluster login", "Use your token.", *self.questions)

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        self.replies.append(list(responses))
        return AUTH_SUCCESSFUL if tuple(responses) == self.expected else AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.passwords.append(password)
        return AUTH_SUCCESSFUL if password == self.password else AUTH_FAILED


class CertHostKey(paramiko.Ed25519Key):
    """A host key that a paramiko server presents as its certificate."""

    def __init__(self, key: Path, cert: Path) -> None:
        super().__init__(filename=str(key))
        self.cert = PublicBlob.from_file(str(cert))

    def asbytes(self) -> bytes:
        return bytes(self.cert.key_blob)

    def get_name(self) -> str:
        return str(self.cert.key_type)


class Asked:
    """A prompt that records its questions and answers from a list."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.questions: list[tuple[str, bool]] = []

    def __call__(self, text: str, echo: bool) -> str:
        self.questions.append((text, echo))
        return self.answers.pop(0)


@contextmanager
def sshd(server: Sshd, *host_keys: paramiko.PKey) -> Iterator[tuple[socket.socket, paramiko.Transport]]:
    client, there = socket.socketpair()
    transport = paramiko.Transport(there)
    for key in host_keys:
        transport.add_server_key(key)
    transport.start_server(threading.Event(), server=server)
    try:
        yield client, transport
    finally:
        transport.close()
        client.close()


@pytest.fixture
def site(tmp_path: Path, host_key: Path) -> tuple[Profile, paramiko.PKey]:
    """A profile for login:2222 whose known_hosts has the host key; the host key."""
    known = tmp_path / "site_known_hosts"
    known.write_text(f"[login]:2222 {public(host_key)}\n")
    return (profile(tmp_path, port=2222, user="me", known_hosts=str(known)),
            paramiko.Ed25519Key.from_private_key_file(str(host_key)))


def connect(client: socket.socket, site: Profile, prompt: object = None, timeout: float = 5.0) -> paramiko.Transport:
    target = SSHTarget.resolve(site)
    return start_session(client, target, KnownHosts.for_target(target), timeout=timeout,
                         prompt=prompt)  # type: ignore[arg-type]


def assert_all_closed(before: set[threading.Thread], client: socket.socket, server: paramiko.Transport) -> None:
    """The server saw the connection close, and no thread of ours is left."""
    server.join(5)
    assert not server.is_alive()
    assert client.fileno() == -1
    assert set(threading.enumerate()) <= before


def test_a_key_login_with_the_host_key_checked(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    user = keygen(tmp_path / "user")
    server = Sshd(keys=(blob(Path(f"{user}.pub")),))
    with sshd(server, host) as (client, _):
        transport = connect(client, replace(profile_, identity_file=str(user)))
        assert transport.is_authenticated() and transport.get_username() == "me"
        transport.close()


def test_an_unknown_host_is_refused_and_everything_closed(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    (tmp_path / "empty").write_text("")
    before = set(threading.enumerate())
    with sshd(Sshd(), host) as (client, server):
        with pytest.raises(HostKeyError) as caught:
            connect(client, replace(profile_, known_hosts=str(tmp_path / "empty")))
        # the advice appends to the file the profile reads, not to one it would never look at
        assert f"`ssh-keyscan -p 2222 login >> {tmp_path / 'empty'}`" in str(caught.value)
        assert_all_closed(before, client, server)


def test_the_server_presents_its_certificate_when_a_ca_is_trusted(tmp_path: Path, ca: Path, host_key: Path) -> None:
    cert = sign(ca, host_key, principals="login")
    known = tmp_path / "ca_known_hosts"
    known.write_text(f"@cert-authority [login]:* {public(ca)}\n")
    user = keygen(tmp_path / "user")
    plain = paramiko.Ed25519Key.from_private_key_file(str(host_key))
    with sshd(Sshd(keys=(blob(Path(f"{user}.pub")),)), plain, CertHostKey(host_key, cert)) as (client, _):
        transport = connect(client, profile(tmp_path, port=2222, known_hosts=str(known), identity_file=str(user)))
        assert transport.host_key_type == "ssh-ed25519-cert-v01@openssh.com"
        transport.close()


def test_a_user_certificate_is_offered_first(tmp_path: Path, site: tuple[Profile, paramiko.PKey], ca: Path) -> None:
    profile_, host = site
    user = keygen(tmp_path / "user")
    cert = sign(ca, user, host=False, principals="me")
    server = Sshd(keys=(blob(cert),))  # only the certificate is accepted
    with sshd(server, host) as (client, _):
        connect(client, replace(profile_, identity_file=str(user))).close()
    assert server.offered == [blob(cert)]
    # Named by CertificateFile (not beside the key), too.
    moved = cert.rename(tmp_path / "elsewhere-cert.pub")
    config = Path(profile_.ssh_config)
    config.write_text(f"Host login\n  CertificateFile {moved}\n")
    server = Sshd(keys=(blob(moved),))
    with sshd(server, host) as (client, _):
        connect(client, replace(profile_, identity_file=str(user))).close()
    assert server.offered == [blob(moved)]


def test_keyboard_interactive_asks_each_question_once(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    server = Sshd(questions=(("Password: ", False), ("Token: ", True)), expected=("pw", "123456"))
    asked = Asked("pw", "123456")
    with sshd(server, host) as (client, _):
        connect(client, profile_, asked).close()
    assert server.replies == [["pw", "123456"]]
    assert asked.questions == [("Cluster login\nUse your token.\n(me@login) Password: ", False),
                               ("(me@login) Token: ", True)]


def test_a_key_then_a_one_time_code(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    user = keygen(tmp_path / "user")
    server = Sshd(keys=(blob(Path(f"{user}.pub")),), then="keyboard-interactive", questions=(("Code: ", False),),
                  expected=("424242",))
    asked = Asked("424242")
    with sshd(server, host) as (client, _):
        transport = connect(client, replace(profile_, identity_file=str(user)), asked)
        assert transport.is_authenticated()
        transport.close()
    assert server.offered == [blob(Path(f"{user}.pub"))] and server.replies == [["424242"]]
    assert len(asked.questions) == 1


def test_without_a_prompt_a_second_factor_is_a_clear_error_fast(
    tmp_path: Path, site: tuple[Profile, paramiko.PKey]
) -> None:
    profile_, host = site
    user = keygen(tmp_path / "user")
    server = Sshd(keys=(blob(Path(f"{user}.pub")),), then="keyboard-interactive", questions=(("Code: ", False),))
    before = set(threading.enumerate())
    started = time.monotonic()
    with sshd(server, host) as (client, transport):
        with pytest.raises(AuthenticationError) as caught:
            connect(client, replace(profile_, identity_file=str(user)), None, timeout=30)
        assert time.monotonic() - started < 5
        assert_all_closed(before, client, transport)
    message = str(caught.value)
    assert "accepted our key but also asks for a password or one-time code" in message
    assert "`hpcllm`" in message and 'ssh_backend = "openssh"' in message


def test_without_a_prompt_a_password_login_is_a_clear_error(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    before = set(threading.enumerate())
    with sshd(Sshd(password="secret"), host) as (client, transport):
        with pytest.raises(AuthenticationError, match="refused our keys.*asks for a password or one-time code"):
            connect(client, profile_)
        assert_all_closed(before, client, transport)


def test_a_password_is_asked_once(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    server = Sshd(password="secret")
    asked = Asked("secret")
    with sshd(server, host) as (client, _):
        connect(client, profile_, asked).close()
    assert asked.questions == [("me@login's password: ", False)] and server.passwords == ["secret"]


def test_a_wrong_answer_is_not_asked_again(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    server = Sshd(questions=(("Password: ", False),), expected=("right",), password="right")
    asked = Asked("wrong", "wrong again")
    before = set(threading.enumerate())
    with sshd(server, host) as (client, transport):
        with pytest.raises(AuthenticationError, match="refused the password or code you entered"):
            connect(client, profile_, asked)
        assert_all_closed(before, client, transport)
    assert len(asked.questions) == 1 and server.replies == [["wrong"]] and server.passwords == []


def test_a_failing_prompt_is_an_authentication_error(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site

    def no_terminal(text: str, echo: bool) -> str:
        raise EOFError("no terminal")

    before = set(threading.enumerate())
    with sshd(Sshd(questions=(("Password: ", False),)), host) as (client, transport):
        with pytest.raises(AuthenticationError, match="Could not ask .*no terminal"):
            connect(client, profile_, no_terminal)
        assert_all_closed(before, client, transport)


def test_refused_keys_keep_the_documented_message(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    wrong, right = keygen(tmp_path / "wrong"), keygen(tmp_path / "right")
    before = set(threading.enumerate())
    with sshd(Sshd(keys=(blob(Path(f"{right}.pub")),)), host) as (client, transport):
        with pytest.raises(AuthenticationError, match="refused our keys .1 offered.") as caught:
            connect(client, replace(profile_, identity_file=str(wrong)))
        assert_all_closed(before, client, transport)
    assert "`ssh login`" in str(caught.value) and "ssh-add" in str(caught.value)


def test_an_encrypted_key_asks_its_passphrase_once(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    user = keygen(tmp_path / "user", passphrase="open sesame")
    key = blob(Path(f"{user}.pub"))
    asked = Asked("open sesame")
    with sshd(Sshd(keys=(key,)), host) as (client, _):
        connect(client, replace(profile_, identity_file=str(user)), asked).close()
    assert asked.questions == [(f"Passphrase for {user}: ", False)]
    asked = Asked("wrong")
    with sshd(Sshd(keys=(key,)), host) as (client, _):
        with pytest.raises(AuthenticationError, match="the passphrase for .* is wrong"):
            connect(client, replace(profile_, identity_file=str(user)), asked)
    assert len(asked.questions) == 1
    with sshd(Sshd(keys=(key,)), host) as (client, _):
        with pytest.raises(AuthenticationError, match="is encrypted and nothing here can ask"):
            connect(client, replace(profile_, identity_file=str(user)))


def test_a_handshake_that_never_comes_times_out(site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, _ = site
    client, silent = socket.socketpair()
    before = set(threading.enumerate())
    started = time.monotonic()
    try:
        with pytest.raises(ConnectError):
            connect(client, profile_, timeout=0.5)
        assert time.monotonic() - started < 3
        assert client.fileno() == -1 and set(threading.enumerate()) <= before
    finally:
        silent.close()


def test_too_many_keys_offered_is_said_so(tmp_path: Path, site: tuple[Profile, paramiko.PKey]) -> None:
    profile_, host = site
    keys = [keygen(tmp_path / f"key{n}") for n in range(11)]  # paramiko's sshd hangs up after 10 failures
    Path(profile_.ssh_config).write_text("Host login\n" + "".join(f"  IdentityFile {k}\n" for k in keys))
    before = set(threading.enumerate())
    with sshd(Sshd(keys=(b"none of them",)), host) as (client, transport):
        with pytest.raises(AuthenticationError, match=r"closed the connection after (9|10) of them \(too many keys"):
            connect(client, profile_)
        assert_all_closed(before, client, transport)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    """An ssh-agent of the test's own on a socket in tmp_path."""
    if shutil.which("ssh-agent") is None:
        # openssh-client (a test-cluster package, installed by scripts/test) brings it: CI must never skip
        message = "needs ssh-agent (Debian: openssh-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    path = Path(f"/tmp/hpcllm-agent-{os.getpid()}-{time.monotonic_ns()}.sock")  # short: sun_path is 108 bytes
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if path.exists():
                break
            time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(5)
        path.unlink(missing_ok=True)


def add_to_agent(agent: Path, *keys: Path) -> None:
    for key in keys:
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(agent)}, check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)


def test_agent_keys_and_identities_only(tmp_path: Path, site: tuple[Profile, paramiko.PKey], agent: Path) -> None:
    profile_, host = site
    unrelated = keygen(tmp_path / "unrelated")
    user = keygen(tmp_path / "user")
    add_to_agent(agent, unrelated, user)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "only in the agent", "-f", str(user)], check=True,
                   capture_output=True)  # the file is encrypted now; the agent holds the key
    # The encrypted file's key is in the agent: no passphrase is asked, its key comes from the agent.
    config = Path(profile_.ssh_config)
    key = blob(Path(f"{user}.pub"))
    for identities_only, offered in (("yes", [key]), ("no", [blob(Path(f"{unrelated}.pub")), key])):
        config.write_text(f"Host login\n  IdentityAgent {agent}\n  IdentitiesOnly {identities_only}\n")
        server = Sshd(keys=(key,))
        asked = Asked()
        with sshd(server, host) as (client, _):
            connect(client, replace(profile_, identity_file=str(user)), asked).close()
        assert server.offered == offered and asked.questions == []
    # IdentityAgent none: the file's passphrase is asked instead.
    config.write_text("Host login\n  IdentityAgent none\n")
    asked = Asked("only in the agent")
    with sshd(Sshd(keys=(key,)), host) as (client, _):
        connect(client, replace(profile_, identity_file=str(user)), asked).close()
    assert len(asked.questions) == 1


def test_an_agent_key_with_a_certificate_file(tmp_path: Path, site: tuple[Profile, paramiko.PKey], agent: Path,
                                              ca: Path) -> None:
    """The private key only in the agent (IdentityFile names its .pub), its certificate named by CertificateFile."""
    profile_, host = site
    user = keygen(tmp_path / "user")
    add_to_agent(agent, user)
    user.unlink()
    cert = sign(ca, user, host=False, principals="me").rename(tmp_path / "cert.pub")
    Path(profile_.ssh_config).write_text(
        f"Host login\n  IdentityAgent {agent}\n  IdentitiesOnly yes\n  IdentityFile {user}\n  CertificateFile {cert}\n")
    server = Sshd(keys=(blob(cert),))
    with sshd(server, host) as (client, _):
        connect(client, profile_).close()
    assert server.offered == [blob(cert)]


@pytest.mark.parametrize("broken", ["missing", "changed"])
def test_an_agent_paramiko_cannot_use_is_skipped_with_a_note(
    tmp_path: Path, site: tuple[Profile, paramiko.PKey], agent: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """The agent is reached through paramiko's private AgentSSH._connect: if it is gone or fails, the
    login goes on without the agent, and says so if it fails."""
    from paramiko.agent import AgentSSH

    profile_, host = site
    user, other = keygen(tmp_path / "user"), keygen(tmp_path / "other")
    add_to_agent(agent, other)
    Path(profile_.ssh_config).write_text(f"Host login\n  IdentityAgent {agent}\n")
    if broken == "missing":
        monkeypatch.delattr(AgentSSH, "_connect")
    else:
        monkeypatch.setattr(AgentSSH, "_connect", lambda self, conn, more: None)  # a new signature: TypeError
    server = Sshd(keys=(blob(Path(f"{user}.pub")),))
    with sshd(server, host) as (client, _):
        connect(client, replace(profile_, identity_file=str(user))).close()
    assert server.offered == [blob(Path(f"{user}.pub"))]  # the agent's key was never offered
    with sshd(Sshd(keys=(b"none of them",)), host) as (client, _):
        with pytest.raises(AuthenticationError, match=f"the ssh-agent at {agent} was skipped: paramiko could not "
                                                      "use it .(AttributeError|TypeError)"):
            connect(client, replace(profile_, identity_file=str(user)))


def test_the_ssh_modules_stay_small_enough_to_read_in_one_sitting() -> None:
    edge = Path(jupyter_hpcllm.edge.__file__).parent
    for name in ("hostkeys", "sshcert", "sshconfig", "sshkeys", "sshlogin", "sshsession", "sshtokens"):
        assert len((edge / f"{name}.py").read_text().splitlines()) <= 300, name
