"""Where and how to connect: a profile merged with ~/.ssh/config, read as OpenSSH reads it.

``SSHTarget.resolve(profile)`` gives the settings for the profile's host (profile keys win over
ssh_config), ``SSHTarget.resolve(profile, hop)`` those of a jump host, and ``jump_chain`` the hosts to
go through, first hop first. paramiko's ``SSHConfig`` matches the Host and Match blocks; this module
adds what it lacks: ``Include``, OpenSSH's %-tokens and ${VAR} in the keys used here (``sshtokens``:
quoted in a ProxyCommand), CertificateFile given more than once, and "whichever of ProxyJump and
ProxyCommand comes first wins". The profile's host and user and each jump host's are checked as OpenSSH
checks names from its command line: shell metacharacters are refused.
"""

from __future__ import annotations

import getpass
import glob
import hashlib
import io
import os
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config.profiles import Profile
from ..errors import ConfigError
from .sshtokens import check_host, check_user, expand, expand_path, local_tokens, shell_command

__all__ = ["DEFAULT_IDENTITY_FILES", "SSHTarget", "jump_chain"]

# Tried, when they exist, if no IdentityFile is configured (as OpenSSH does; newest key types first).
DEFAULT_IDENTITY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"  # read after the user's file, unless the profile names its own file

# paramiko keeps the first ProxyJump and the first ProxyCommand apart, and only one CertificateFile.
# Rewritten as ProxyCommand and IdentityFile lines with these tags, they keep OpenSSH's semantics.
_JUMP = "\0jump:"
_CERT = "\0cert:"


@dataclass(frozen=True)
class SSHTarget:
    """One host's SSH settings, resolved: paths expanded, tokens replaced, defaults filled in."""

    alias: str  # the name as given (profile host, ssh_config alias or a jump host's name)
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]  # as configured; empty: DEFAULT_IDENTITY_FILES (see key_files)
    certificate_files: tuple[str, ...]
    identities_only: bool
    identity_agent: str | None  # None: $SSH_AUTH_SOCK; "none": no agent; else the agent's socket
    proxy_jump: tuple[str, ...]  # jump hosts, first hop first; at most one of proxy_jump, proxy_command
    proxy_command: str | None
    user_known_hosts: tuple[str, ...]
    global_known_hosts: tuple[str, ...]
    host_key_alias: str | None

    @property
    def display(self) -> str:
        port = "" if self.port == 22 else f" port {self.port}"
        return f"{self.user}@{self.hostname}{port}"

    @property
    def known_hosts_name(self) -> str:
        """The name looked up in known_hosts: HostKeyAlias as is, else the host, ``[host]:port`` off 22."""
        if self.host_key_alias:
            return self.host_key_alias
        host = self.hostname.lower()
        return host if self.port == 22 else f"[{host}]:{self.port}"

    @property
    def key_files(self) -> tuple[str, ...]:
        """The private key files to offer: the configured ones, else OpenSSH's defaults."""
        return self.identity_files or tuple(os.path.expanduser(p) for p in DEFAULT_IDENTITY_FILES)

    @classmethod
    def resolve(cls, profile: Profile, hop: str | None = None) -> SSHTarget:
        """The profile's host (``hop`` None: profile keys win over ssh_config) or a jump host
        ``[user@]host[:port]`` / ssh_config alias (ssh_config applies as for ``ssh -l user -p port host``;
        the profile's known_hosts applies too, its identity_file where the hop names none)."""
        own = hop is None
        if hop is None:
            alias, user, port = profile.host, profile.user, profile.port
            where = f"in the profile {profile.name!r}"
        else:
            user, alias, port = _split_hop(hop, profile.ssh_config)
            where = f"in the jump host {hop!r}"
        check_host(alias, where)  # as OpenSSH checks names given on its command line
        if user:
            check_user(user, where)
        entry = _lookup(profile.ssh_config, alias)
        hostname = expand(entry.get("hostname", alias), {"h": alias}, "HostName")
        port = port or _port(entry.get("port"), alias, profile.ssh_config)
        user = user or entry.get("user") or getpass.getuser()
        alias_key = entry.get("hostkeyalias")
        proxy = entry.get("proxycommand")
        jump = profile.proxy_jump if own and profile.proxy_jump else None
        if jump is None and proxy and proxy.startswith(_JUMP):
            jump, proxy = proxy[len(_JUMP):], None
        elif jump is not None:
            proxy = None  # the profile's proxy_jump (even "none") wins, as `ssh -J` does
        short = {"h": hostname, "n": alias, "p": str(port), "r": user}
        tokens = {**short, **local_tokens(), "k": alias_key or alias, "j": jump or ""}
        tokens["C"] = hashlib.sha1("".join(tokens[t] for t in "lhprj").encode()).hexdigest()

        def paths(key: str, values: list[str]) -> tuple[str, ...]:
            return tuple(expand_path(value, tokens, key) for value in values)

        files = entry.get("identityfile", [])
        identities = paths("IdentityFile", [f for f in files if not f.startswith(_CERT)])
        if profile.identity_file and (own or not identities):
            identities = (os.path.expanduser(profile.identity_file),)
        if profile.known_hosts:
            known = tuple(os.path.expanduser(p) for p in profile.known_hosts.split())
        else:
            known = _files(entry.get("userknownhostsfile"), USER_KNOWN_HOSTS, tokens, "UserKnownHostsFile")
        hops = "" if jump is None or jump.strip().lower() == "none" else expand(jump, short, "ProxyJump")
        return cls(
            alias=alias,
            hostname=hostname,
            port=port,
            user=user,
            identity_files=identities,
            certificate_files=paths("CertificateFile", [f[len(_CERT):] for f in files if f.startswith(_CERT)]),
            identities_only=str(entry.get("identitiesonly", "no")).lower() == "yes",
            identity_agent=_agent(entry.get("identityagent"), tokens),
            proxy_jump=tuple(h.strip() for h in hops.split(",") if h.strip()),
            proxy_command=shell_command(proxy, short, "ProxyCommand") if proxy else None,
            user_known_hosts=known,
            global_known_hosts=_files(entry.get("globalknownhostsfile"), GLOBAL_KNOWN_HOSTS, tokens,
                                      "GlobalKnownHostsFile"),
            host_key_alias=alias_key,
        )


def jump_chain(profile: Profile, target: SSHTarget) -> list[SSHTarget]:
    """The jump hosts before ``target``, in the order to connect: the first directly (or through its
    proxy_command), each next one through a channel of the one before. As with OpenSSH's ``-J a,b,c``,
    only the first hop's own ProxyJump/ProxyCommand apply (recursively); none in the list has a
    proxy_jump left, and only the first may have a proxy_command."""
    return _chain(profile, target, (target.alias,))


def _chain(profile: Profile, target: SSHTarget, seen: tuple[str, ...]) -> list[SSHTarget]:
    if not target.proxy_jump:
        return []
    hops = [SSHTarget.resolve(profile, hop) for hop in target.proxy_jump]
    first = hops[0]
    if first.alias in seen or len(seen) > 16:
        raise ConfigError(
            f"ProxyJump in your ssh config loops: {' → '.join((*seen, first.alias))}.",
            f"Fix the ProxyJump lines for these hosts in {profile.ssh_config}.",
        )
    before = _chain(profile, first, (*seen, first.alias))  # resolve left it no proxy_command if any
    rest = [replace(hop, proxy_jump=(), proxy_command=None) for hop in hops[1:]]
    return [*before, replace(first, proxy_jump=()), *rest]


def _lookup(config_file: str, alias: str) -> dict[str, Any]:
    import paramiko

    own = Path(config_file).expanduser()
    text = _read(own, Path("~/.ssh").expanduser(), 0)  # relative Includes: in ~/.ssh, as for OpenSSH
    if own == Path(USER_CONFIG).expanduser():  # OpenSSH reads the system file after the user's (not with -F)
        system = Path(SYSTEM_CONFIG)
        text += "\nHost *\n" + _read(system, system.parent, 0)

    config = paramiko.SSHConfig()
    # OpenSSH's tokens are expanded in resolve, for every key that takes them (paramiko knows a few).
    config.TOKENS_BY_CONFIG_KEY = {"match-exec": paramiko.SSHConfig.TOKENS_BY_CONFIG_KEY["match-exec"]}
    try:
        config.parse(io.StringIO(text))
        return dict(config.lookup(alias))  # values: str, or a list for identityfile
    except (paramiko.SSHException, ImportError, ValueError) as error:
        raise ConfigError(
            f"Cannot read your ssh config {config_file} for {alias}: {error}.",
            "Fix the line it names (`ssh -G " + alias + "` shows how OpenSSH reads it); `Match exec` needs "
            "the Python package invoke.",
        ) from None


def _read(path: Path, base: Path, depth: int) -> str:
    """A config file's text with its Include lines replaced by the files they name."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read the ssh config {path}: {error}.", "Fix its permissions or content.") from None
    lines: list[str] = []
    block = "Host *"  # the Host or Match line the next lines belong to
    for raw in text.splitlines():
        line = raw.strip()
        match = re.match(r"(\w+)(?:\s*=\s*|\s+)(.+)", line)
        key, value = (match.group(1).lower(), match.group(2).strip()) if match else ("", "")
        if key in ("host", "match"):
            block = line
        elif key == "include":
            if depth >= 16:
                raise ConfigError(f"Include in {path} nests too deep.", "An Include line includes itself.")
            for pattern in shlex.split(value):
                full = Path(os.path.expanduser(pattern))
                for name in sorted(glob.glob(str(full if full.is_absolute() else base / full))):
                    lines.append(_read(Path(name), base, depth + 1))
            line = block  # back to the block the Include was in
        elif key == "proxyjump":
            line = f"ProxyCommand {_JUMP}{_unquote(value)}"
        elif key == "certificatefile":
            line = f"IdentityFile {_CERT}{_unquote(value)}"
        elif key in ("userknownhostsfile", "globalknownhostsfile"):  # paramiko would unquote "a b" into two files
            try:
                line = f"{key} {' '.join(shlex.quote(p) for p in shlex.split(value))}"
            except ValueError as error:
                raise ConfigError(f"Cannot read the line {line!r} in {path}: {error}.",
                                  "Quote each file name with a space in it, with matching quotes.") from None
        lines.append(line)
    return "\n".join(lines)


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value


def _split_hop(hop: str, config_file: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]``, ``[user@][v6addr]:port`` or ``ssh://[user@]host[:port]``."""
    text = hop.strip().removeprefix("ssh://").rstrip("/")
    user, _, rest = text.rpartition("@")
    if rest.startswith("["):
        host, closed, port = rest[1:].partition("]")
        if not closed or (port and not port.startswith(":")):
            host = ""  # "[::1" or "[::1]x": not an address
        port = port.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host, port = rest, ""
    if not host or (port and not _valid_port(port)):
        raise ConfigError(
            f"Cannot read the jump host {hop!r}" + (f": its port {port!r} is not a number from 1 to 65535." if host
                                                    else "."),
            f"Fix the ProxyJump line that names it in {config_file}, or the profile's proxy_jump: write each "
            "jump host as [user@]host[:port] or an ssh config alias.",
        )
    return user or None, host, int(port) if port else None


def _valid_port(text: str) -> bool:
    # ASCII digits only: str.isdigit() also takes '²' and '١', which int() refuses or reads differently.
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _port(value: str | None, alias: str, config_file: str) -> int:
    if not value:
        return 22
    if not _valid_port(value.strip()):
        raise ConfigError(f"The Port {value!r} for {alias} in your ssh config is not a number from 1 to 65535.",
                          f"Fix the Port line of the Host block for {alias} in {config_file} "
                          f"(`ssh -G {alias}` shows how OpenSSH reads it).")
    return int(value.strip())


def _files(value: str | None, default: tuple[str, ...], tokens: dict[str, str], key: str) -> tuple[str, ...]:
    if value is None:
        return tuple(os.path.expanduser(p) for p in default)
    if value.strip().lower() == "none":
        return ()
    return tuple(expand_path(p, tokens, key) for p in shlex.split(value))


def _agent(value: str | None, tokens: dict[str, str]) -> str | None:
    if value is None or value == "SSH_AUTH_SOCK":
        return None
    if value.lower() == "none":
        return "none"
    if value.startswith("$"):  # an environment variable that holds the socket's path
        return os.environ.get(value[1:].strip("{}")) or "none"
    return expand_path(value, tokens, "IdentityAgent")
