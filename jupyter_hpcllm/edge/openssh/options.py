"""ssh's settings for a profile: the options every ``ssh`` we run gets, what ``ssh -G`` makes of them, and
the private directory where the control sockets live.

The profile's settings become command-line options (StrictHostKeyChecking=yes always: an unknown host is
an error with advice, never accepted). ``ssh -G`` then says who and where ssh will log in as (user,
hostname, port, a ControlPath of the user's own), so that our errors name the real host and a master
the user opened by hand is found and reused. All of it is read once, when the transport is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass

from ...config.profiles import Profile
from ...errors import ConfigError

__all__ = ["LoginRoute", "ensure_private_dir", "escape_tokens", "resolve_route", "shown_options", "ssh_options"]


@dataclass(frozen=True)
class LoginRoute:
    """The login node as the system ssh reaches it for one profile, and where its control sockets live."""

    program: str  # the ssh command
    options: list[str]  # ssh_options(profile): every invocation gets them (master, commands, checks)
    destination: str  # the profile's host, as ssh is given it
    user: str
    hostname: str
    port: int
    user_control_path: str | None  # the user's own ControlPath (~/.ssh/config): a master there is reused
    socket_dir: str  # our private (0700) directory of control sockets
    shared_path: str  # where a master opened by hand (our error message says how) is looked for

    @property
    def description(self) -> str:
        port = "" if self.port == 22 else f" port {self.port}"
        return f"{self.user}@{self.hostname}{port} (OpenSSH)"


def resolve_route(profile: Profile, program: str) -> LoginRoute:
    """The profile's options and what ssh makes of them (``ssh -G``); ConfigError if ssh rejects them."""
    options = ssh_options(profile)
    settings = _resolved_settings(program, options, profile)
    user = settings.get("user", "")
    hostname = settings.get("hostname", profile.host)
    port = int(settings.get("port", "22") or 22)
    user_path = settings.get("controlpath", "none")
    # The same server by the same way (like ssh's %C): a master opened by hand for one profile never
    # serves another cluster whose login node has the same name behind another jump host.
    route = (user, hostname, str(port), settings.get("proxyjump", ""), settings.get("proxycommand", ""))
    tag = hashlib.sha256("\0".join(route).encode()).hexdigest()[:12]
    directory = socket_dir()
    return LoginRoute(
        program=program, options=options, destination=profile.host, user=user, hostname=hostname, port=port,
        user_control_path=None if user_path.lower() == "none" else user_path, socket_dir=directory,
        shared_path=os.path.join(directory, tag),
    )


def ssh_options(profile: Profile) -> list[str]:
    """The ssh options a profile asks for (every invocation gets them: master, commands, checks)."""
    options: list[str] = []
    config = os.path.expanduser(profile.ssh_config)
    if os.path.abspath(config) != os.path.abspath(os.path.expanduser("~/.ssh/config")):
        # -F also drops /etc/ssh/ssh_config (site settings such as GSSAPI): only for a file of the profile's
        # own. A missing one reads as empty, as the paramiko backend reads it.
        options += ["-F", config if os.path.exists(config) else os.devnull]
    if profile.port:
        options += ["-p", str(profile.port)]
    if profile.user:
        options += ["-l", profile.user]
    if profile.identity_file:
        options += ["-i", escape_tokens(os.path.expanduser(profile.identity_file)), "-o", "IdentitiesOnly=yes"]
    if profile.proxy_jump:
        if profile.proxy_jump.lower() == "none":
            options += ["-o", "ProxyJump=none"]
        else:
            options += ["-J", profile.proxy_jump]
    if profile.known_hosts:
        known_hosts = escape_tokens(os.path.expanduser(profile.known_hosts))
        options += ["-o", "UserKnownHostsFile=" + _config_word(known_hosts)]
    options += [
        "-o", "StrictHostKeyChecking=yes",  # never accept-new: an unknown host is an error with advice
        "-o", f"ServerAliveInterval={max(1, math.ceil(profile.keepalive))}",
        "-o", "ServerAliveCountMax=2",
        "-o", f"ConnectTimeout={max(1, math.ceil(profile.connect_timeout))}",
    ]
    return options


def shown_options(options: list[str]) -> list[str]:
    """The options for a command shown to the user (a master opened by hand): all but ConnectTimeout and
    StrictHostKeyChecking (a person at a terminal can wait, and answer). The keepalives stay, so that a
    master opened by hand notices a silent drop as ours do."""
    shown: list[str] = []
    skip = ("ConnectTimeout=", "StrictHostKeyChecking=")
    pairs = iter(options)
    for option in pairs:
        value = next(pairs)
        if option == "-o" and value.startswith(skip):
            continue
        shown += [option, value]
    return shown


def _resolved_settings(ssh: str, options: list[str], profile: Profile) -> dict[str, str]:
    """``ssh -G``: the settings ssh will use for the host (user, hostname, port, the user's ControlPath)."""
    try:
        done = subprocess.run([ssh, *options, "-G", "--", profile.host], capture_output=True, text=True,
                              timeout=15, stdin=subprocess.DEVNULL, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"Cannot read ssh's settings for {profile.host}: {error}.",
                          "Check that `ssh -G HOST` works in a terminal.") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise ConfigError(f"ssh does not accept the settings for {profile.host!r}: {detail}",
                          "Check the profile's host, user, port and ssh_config, and ~/.ssh/config.")
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip())
    return settings


def escape_tokens(path: str) -> str:
    """A path for an ssh option that expands %-tokens (ControlPath, IdentityFile, UserKnownHostsFile)."""
    return path.replace("%", "%%")


def _config_word(value: str) -> str:
    """A value for ``-o Key=value`` that ssh must read as one word (known_hosts takes a list)."""
    if any(c.isspace() for c in value) or '"' in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def socket_dir() -> str:
    """A private (0700) directory for control sockets, short enough for a unix socket path (~104 bytes)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and len(runtime) < 40:
        return os.path.join(runtime, "hpcllm-ssh")
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return os.path.join(base, f"hpcllm-ssh-{os.getuid()}")


def ensure_private_dir(path: str) -> None:
    """Make the socket directory (0700), and check that it is ours and private before any path in it is
    used: another user who made it first (it has a predictable name in /tmp) could have put a fake master
    there. ConfigError otherwise, with advice."""
    parent = os.path.dirname(path)
    info = os.stat(parent)  # /tmp itself may be a link (macOS)
    if info.st_uid not in (0, os.geteuid()) or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
        raise ConfigError(f"{parent} can be changed by other users, so it cannot hold ssh's control sockets.",
                          "Set XDG_RUNTIME_DIR (or TMPDIR) to a directory of your own.")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)  # not followed: a link is refused too
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ConfigError(f"{path} is not a directory of yours, so it cannot hold ssh's control sockets.",
                          "Remove it (it may be a leftover of another user, or a trap), then try again.")
    if info.st_mode & 0o077:
        raise ConfigError(f"{path} can be used by other users (mode {stat.S_IMODE(info.st_mode):o}), so it "
                          "cannot hold ssh's control sockets: someone may have put one there.",
                          f"Remove it (`rm -r {shlex.quote(path)}`), then try again: it is made anew, private.")
