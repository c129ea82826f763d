"""SSH to the login node with the system ``ssh``: one ControlMaster per transport, shared by every command,
file read and tunnel. For what paramiko cannot do: FIDO keys, GSSAPI/Kerberos, an MFA code typed once.

- The master: ``ssh -M -S PATH -o ControlPersist=30 -N -f HOST``, with the profile's settings as options
  (StrictHostKeyChecking=yes always). What ssh asks (a passphrase, a one-time code) goes to the face's
  ``prompt`` through SSH_ASKPASS, answered in the thread that connects; without a prompt, ssh asks at the
  terminal; with neither it runs with BatchMode=yes (a question is an error that says how to open a master
  from a terminal, never a hang). A master that already runs at the user's own ControlPath (~/.ssh/config)
  or at the path our error message suggests is reused, never stopped by us.
- A *keeper*: one idle connection to the master's control socket, held while the transport lives. It
  tells at once (EOF) that the master died, so the next call starts a new one; and as ssh counts it as an
  open client, the master outlives idle periods, yet exits ControlPersist seconds after our process does,
  however that process ends.
- Commands: ``ssh -S PATH -o ControlMaster=no -o BatchMode=yes -T -- HOST COMMAND`` (argv, no local shell).
  A master that dies under a running command makes it ConnectionLost. One that is dead before the session
  opens (or refuses it: sshd's MaxSessions) makes ssh itself fall back to a direct connection with the same
  options, so the command still runs exactly once (or fails as a login without a terminal would).
- Channels to host:port (``open_channel``, ``forward``): the master's multiplexing protocol spoken here
  (OpenSSH's PROTOCOL.mux, version 4: MUX_C_NEW_STDIO_FWD, a socket passed by SCM_RIGHTS), as ``ssh -W``
  does. The master relays that socket itself: no ``ssh -W`` process per connection, a refused port is a
  ConnectError at once rather than an EOF later, and the forward hands each accepted connection itself to
  the master, so no byte is copied in Python and a replaced master serves the next connection.
- Files: ``find``/``head`` over ``run`` (GNU findutils and coreutils on the cluster).

Windows' ssh has no ControlMaster: there this backend refuses to start (paramiko is the way in).
Nothing here is imported by ``import jupyter_hpcllm``; POSIX-only calls run only past that check.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING

from ..config.profiles import Profile
from ..errors import (
    AuthenticationError,
    CommandTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ForwardError,
    HostKeyError,
    HpcllmError,
    TransportError,
)
from .transport import CommandResult, Forward, Prompt, Stream, check_result

if TYPE_CHECKING:
    from .files import FileInfo, Files

__all__ = ["OpenSSHTransport"]

# Seconds a master we started outlives its last client (our keeper): only matters when our process ended
# without close() (killed), so it is short.
_GRACE = 30
# How long a person at a terminal may take to answer ssh's questions (an MFA code, a key touch).
_INTERACTIVE_TIMEOUT = 300.0

_REACH_HINT = (
    "Check the host name and your network or VPN, and that `ssh` to it works from a terminal; "
    "`hpcllm config show` prints the settings in use."
)


class OpenSSHTransport:
    """The system ssh with a ControlMaster, reused for every command and tunnel (restarted if it dies)."""

    _count = 0
    _count_lock = threading.Lock()

    def __init__(self, profile: Profile, *, prompt: Prompt | None = None) -> None:
        if os.name == "nt":
            raise ConfigError(
                f"Profile {profile.name!r} asks for ssh_backend = \"openssh\", which needs ssh's ControlMaster; "
                "the OpenSSH of Windows has none.",
                "Use ssh_backend = \"paramiko\" (the default) on Windows.",
            )
        ssh = shutil.which("ssh")
        if ssh is None:
            raise ConfigError(
                f"Profile {profile.name!r} asks for ssh_backend = \"openssh\", but there is no `ssh` command here.",
                "Install the OpenSSH client, or use ssh_backend = \"paramiko\" (the default).",
            )
        self.profile = profile
        self._prompt = prompt
        self._ssh = ssh
        self._destination = profile.host
        self._options = _options(profile)
        settings = _resolve(ssh, self._options, profile)
        self._user = settings.get("user", "")
        self._hostname = settings.get("hostname", profile.host)
        self._port = int(settings.get("port", "22") or 22)
        port = "" if self._port == 22 else f" port {self._port}"
        self.description = f"{self._user}@{self._hostname}{port} (OpenSSH)"
        user_path = settings.get("controlpath", "none")
        self._user_path = None if user_path.lower() == "none" else user_path
        # The same server by the same way (like ssh's %C): a master opened by hand for one profile never
        # serves another cluster whose login node has the same name behind another jump host.
        route = (self._user, self._hostname, str(self._port), settings.get("proxyjump", ""),
                 settings.get("proxycommand", ""))
        tag = hashlib.sha256("\0".join(route).encode()).hexdigest()[:12]
        with OpenSSHTransport._count_lock:
            OpenSSHTransport._count += 1
            number = OpenSSHTransport._count
        self._dir = _socket_dir()
        # Where a master opened by hand (our error message says how) is looked for, and where ours lives.
        self._shared_path = os.path.join(self._dir, tag)
        self._own_path = os.path.join(self._dir, f"{tag}-{os.getpid()}-{number}")
        self._client_env = {k: v for k, v in os.environ.items()
                            if not (k.startswith("LC_") or k in ("LANG", "LANGUAGE"))}
        self._lock = threading.Lock()  # guards the fields below; never held while ssh runs
        self._start_lock = threading.Lock()  # one thread starts the master, the others wait for it
        self._keeper: socket.socket | None = None
        self._path: str | None = None
        self._pid = 0
        self._owned = False
        self._closed = False

    # -- the master --------------------------------------------------------------------------------

    def connect(self) -> OpenSSHTransport:
        """Open the master now (it opens on first use otherwise); errors say what to do."""
        self._master()
        return self

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._keeper is not None and _open(self._keeper)

    @property
    def control_path(self) -> str | None:
        """The control socket in use (ours, or a master of the user's we reuse); None before connecting."""
        return self._path

    @property
    def master_pid(self) -> int:
        return self._pid

    @property
    def owns_master(self) -> bool:
        """Whether the master in use was started by this transport (and is stopped by close())."""
        return self._owned

    def _live(self) -> str | None:
        """The control path of a live master, or None (a dead one is forgotten). Raises once closed."""
        with self._lock:
            if self._closed:
                raise ConnectError(f"The connection to {self.description} was closed.", _REACH_HINT)
            if self._keeper is not None:
                if _open(self._keeper):
                    return self._path
                keeper, path, owned = self._keeper, self._path, self._owned
                self._keeper, self._path, self._pid, self._owned = None, None, 0, False
            else:
                return None
        keeper.close()
        if owned and path:
            _unlink_stale(path)  # a master killed with SIGKILL leaves its socket behind
        return None

    def _master(self) -> str:
        """The control path of a live master: ours or the user's, started if there is none."""
        path = self._live()
        if path is not None:
            return path
        with self._start_lock:
            path = self._live()
            if path is not None:
                return path
            keeper, path, pid, owned = self._attach_or_start()
            with self._lock:
                closed = self._closed
                if not closed:
                    self._keeper, self._path, self._pid, self._owned = keeper, path, pid, owned
            if closed:
                _release(keeper, path, pid, owned)
                raise ConnectError(f"The connection to {self.description} was closed.", _REACH_HINT)
            return path

    def _attach_or_start(self) -> tuple[socket.socket, str, int, bool]:
        for path in (self._user_path, self._shared_path):
            if path and len(path.encode()) < 104:
                keeper = _mux_connect(path, timeout=5.0, quiet=True)
                if keeper is not None:
                    try:
                        pid = _mux_alive(keeper)
                    except OSError:
                        keeper.close()
                        continue
                    keeper.setblocking(False)  # see _open
                    return keeper, path, pid, False
        path = self._own_path
        for attempt in (1, 2):
            _ensure_dir(self._dir)
            _unlink_stale(path)
            error = self._start_master(path)
            if error is None:
                break
            if attempt == 1 and "unix_listener" in error:
                continue  # our directory was removed under us (another transport's close): once more
            raise self._start_error(error, path, asked=self._prompt is not None)
        keeper = _mux_connect(path, timeout=self.profile.connect_timeout)
        if keeper is None:
            raise ConnectError(f"ssh connected to {self.description} but its control socket {path} does not "
                               "answer.", _REACH_HINT)
        try:
            pid = _mux_alive(keeper)
        except OSError as error:
            keeper.close()
            raise ConnectError(f"The ssh master for {self.description} does not answer: {error}.",
                               _REACH_HINT) from None
        keeper.setblocking(False)  # see _open
        return keeper, path, pid, True

    def _start_master(self, path: str) -> str | None:
        """Run ``ssh -M -N -f``: None once it is authenticated and in the background, else ssh's stderr.

        ssh's questions go to the face's prompt (SSH_ASKPASS, answered in this thread: a notebook's input
        works only in the cell's own thread), else to the terminal, else nowhere (BatchMode)."""
        asking = self._prompt is not None
        interactive = not asking and _has_terminal()
        argv = [self._ssh, *self._options, "-M", "-S", _escape(path), "-o", f"ControlPersist={_GRACE}",
                "-N", "-f"]
        if not asking and not interactive:
            argv += ["-o", "BatchMode=yes"]
        argv += ["--", self._destination]
        timeout = self.profile.connect_timeout + (_INTERACTIVE_TIMEOUT if asking or interactive else 30.0)
        bridge = _AskpassBridge(path + ".ask", self._dir) if asking else None
        try:
            env = dict(os.environ, **bridge.env) if bridge is not None else None
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=None if interactive else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=not interactive,  # no terminal: ssh cannot open /dev/tty either
                )
            except OSError as error:
                raise ConnectError(f"Cannot run {self._ssh}: {error}.", _REACH_HINT) from None
            assert process.stderr is not None
            errors = _Collector(process.stderr, echo=interactive)
            try:
                if bridge is not None:
                    assert self._prompt is not None
                    bridge.serve(process, self._prompt, errors, time.monotonic() + timeout)
                status = process.wait(max(0.1, timeout if bridge is None else 5.0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise ConnectError(f"SSH to {self.description} did not finish connecting within {timeout:g} s.",
                                   _REACH_HINT) from None
            except BaseException:  # interrupted (Ctrl-C while ssh waits for a code), a prompt that failed
                process.kill()
                process.wait()
                raise
            text = errors.text()
        finally:
            if bridge is not None:
                bridge.close()
        if status == 0:
            return None
        return text.strip() or f"ssh exited with status {status}"

    def _start_error(self, text: str, path: str, *, asked: bool) -> Exception:
        """ssh's complaint about a master that did not start, as one of our errors with advice."""
        display = self.description.removesuffix(" (OpenSSH)")
        name = self._hostname if self._port == 22 else f"[{self._hostname}]:{self._port}"
        known = self.profile.known_hosts
        known_file = shlex.quote(os.path.expanduser(known)) if known else "~/.ssh/known_hosts"
        last = text.strip().splitlines()[-1] if text.strip() else text
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested" in text:
            found = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
            fingerprint = found.group(1).rstrip(".") if found else "unknown"
            remove = f"ssh-keygen -f {known_file} -R '{name}'" if known else f"ssh-keygen -R '{name}'"
            return HostKeyError(
                f"The host key of {self._hostname} does not match known_hosts: it changed, or someone is "
                "intercepting the connection.",
                f"Ask your cluster's admins whether the key changed (fingerprint now {fingerprint}); if it "
                f"did, remove the old line with `{remove}` and connect again.",
            )
        if "Host key verification failed" in text or "host key is known for" in text:
            return HostKeyError(
                f"The host {name} is not in your known_hosts, so jupyter-hpcllm will not connect to it.",
                "Check its fingerprint with your cluster's documentation, then trust it with "
                f"`ssh-keyscan -p {self._port} {self._hostname} >> {known_file}` (or connect once with "
                f"`ssh {self._destination}` and answer yes).",
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            methods = re.search(r"Permission denied \(([^)]*)\)", text)
            methods_text = methods.group(1) if methods else ""
            command = " ".join(shlex.quote(a) for a in [
                "ssh", *_public_options(self._options), "-M", "-S", self._shared_path, "-fN", "--",
                self._destination])
            typed = any(m in methods_text for m in ("keyboard-interactive", "password"))
            if typed and asked:
                return AuthenticationError(
                    f"{display} refused the password or code you entered.",
                    f"Connect again to retry; check that `ssh {self._destination}` works from a terminal.",
                )
            if typed and not _has_terminal():
                return AuthenticationError(
                    f"SSH to {display} needs an answer typed at a terminal ({methods_text}), and there is none "
                    "here.",
                    f"Open a shared connection once from a terminal: `mkdir -p -m 700 {shlex.quote(self._dir)} "
                    f"&& {command}`, and jupyter-hpcllm will use it until it ends; or set ControlMaster auto, "
                    f"ControlPath and ControlPersist for {self._destination} in ~/.ssh/config and run "
                    f"`ssh {self._destination}` once.",
                )
            return AuthenticationError(
                f"SSH to {display} refused our keys ({methods_text or last}).",
                f"Check that `ssh {self._destination}` works from a terminal; load your key with `ssh-add`, or "
                "set identity_file in the profile (`hpcllm config show` prints what is used). If the cluster "
                f"asks for a code, open a shared connection once from a terminal: `{command}`.",
            )
        if "ControlSocket" in text or "unix_listener" in text or "control socket" in text.lower():
            return ConnectError(f"ssh cannot make its control socket {path}: {last}.",
                                "Check that the directory is writable and not full.")
        return ConnectError(f"Cannot reach {display}: {last.removeprefix('ssh: ')}.", _REACH_HINT)

    # -- commands ------------------------------------------------------------------------------------

    def run(
        self, command: str, *, stdin: str | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        timeout = timeout or self.profile.command_timeout
        status, out, err = self.run_bytes(command, stdin=None if stdin is None else stdin.encode(),
                                          timeout=timeout)
        return check_result(
            CommandResult(command, status, out.decode(errors="replace"), err.decode(errors="replace")), check)

    def run_bytes(self, command: str, *, stdin: bytes | None = None,
                  timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run a command through the master: (exit status, stdout, stderr) as bytes, whatever the status."""
        timeout = timeout or self.profile.command_timeout
        path = self._master()
        argv = [self._ssh, *self._options, "-S", _escape(path), "-o", "ControlMaster=no", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-T", "--", self._destination, command]
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout,
                env=self._client_env,  # no LANG/LC_*: the remote locale, as with paramiko
                start_new_session=True,  # never a terminal to ask on, never our Ctrl-C
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(command, timeout) from None
        except OSError as error:
            raise ConnectError(f"Cannot run {self._ssh}: {error}.", _REACH_HINT) from None
        if done.returncode == 255:
            # 255 is ssh's own failure, or the remote command's status: the master and ssh's words tell.
            text = done.stderr.decode(errors="replace").strip()
            why = text.splitlines()[-1] if text else ""
            word = command.split()[0] if command.split() else command
            if self._live() is None:  # the master died under the command: it may or may not have run
                raise ConnectionLost(
                    f"The SSH connection to {self.description} broke while running `{word}`"
                    f"{f' ({why})' if why else ''}; the next command connects anew.", _REACH_HINT)
            if "mux_client_" in text or "Control socket" in text:
                raise TransportError(f"Cannot open a session on {self.description}: {why}.", _REACH_HINT)
        return done.returncode, done.stdout, done.stderr

    # -- channels and forwards -----------------------------------------------------------------------

    def open_channel(self, host: str, port: int, timeout: float = 10.0) -> Stream:
        """A socket connected to host:port as the login node sees it, relayed by the master itself."""
        ours, theirs = socket.socketpair()
        try:
            control = self._hand_over(theirs, host, port, timeout)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the master holds its own copy now (or nobody does)
        return _ChannelSocket(ours, control)

    def _hand_over(self, sock: socket.socket, host: str, port: int, timeout: float) -> socket.socket:
        """Have the master relay ``sock`` to host:port (MUX_C_NEW_STDIO_FWD); the control connection that
        keeps the channel open (closing it ends the channel; the master closes it when the channel ends)."""
        for attempt in (1, 2):
            path = self._master()
            control = _mux_connect(path, timeout=timeout, quiet=True)
            if control is None:
                self._live()  # the master died since: forget it, and start another once
                if attempt == 1:
                    continue
                raise ConnectError(f"The SSH connection to {self.description} was lost.", _REACH_HINT)
            try:
                _mux_stdio_forward(control, sock, host, port)
                return control
            except _Refused as refused:
                control.close()
                raise ConnectError(
                    f"Cannot connect to {host}:{port} through {self.description}: {refused}.",
                    "Nothing may listen there (yet), or the login node does not allow forwarding to it.",
                ) from None
            except OSError as error:
                control.close()
                if isinstance(error, TimeoutError):
                    raise ConnectError(f"The login node did not open a connection to {host}:{port} within "
                                       f"{timeout:g} s.", _REACH_HINT) from None
                self._live()
                if attempt == 1:
                    continue  # nothing was opened: safe to ask a new master once
                raise ConnectError(f"The SSH connection to {self.description} broke while connecting to "
                                   f"{host}:{port}: {error}.", _REACH_HINT) from None
        raise AssertionError("unreachable")

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward:
        """A local port relayed to host:port. Each accepted connection is handed to the master in use at
        the time, which relays it itself (as fast as ``ssh -O forward``, no copy in Python); unlike a
        forward of the master's own, it outlives a master that died and was replaced."""
        return _MuxForward(self, host, port, local_port=local_port)

    def files(self) -> Files:
        return _ShellFiles(self)

    def fresh(self) -> OpenSSHTransport:
        """A transport with a master of its own (this one's may be dead): for a cancel that must get through.
        A master of the user's (their ControlPath) is still reused: it is theirs, not one of ours."""
        return OpenSSHTransport(self.profile, prompt=self._prompt)

    # -- closing -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the master if we started it (a reused one is left running); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            keeper, path, pid, owned = self._keeper, self._path, self._pid, self._owned
            self._keeper, self._path, self._pid, self._owned = None, None, 0, False
        if keeper is not None and path is not None:
            _release(keeper, path, pid, owned)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)  # only when empty: another transport's socket keeps it

    def __enter__(self) -> OpenSSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- files -------------------------------------------------------------------------------------------------

_MISSING = 44  # the exit status our file commands use for "no such file or directory"


def _shell_path(path: str) -> str:
    """A path as shell text: quoted, but a leading ``~/`` left bare so that the shell expands it."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:]) if path[2:] else "~/"
    if path.startswith("-"):
        path = "./" + path  # never an option of find or head
    return shlex.quote(path)


class _ShellFiles:
    """Files on the cluster through commands of the transport (one command per call)."""

    def __init__(self, transport: OpenSSHTransport) -> None:
        self._transport = transport

    def list(self, path: str) -> list[FileInfo]:
        from .files import FileInfo

        where = _shell_path(path)
        command = (f"if [ -d {where} ]; then exec find -H {where} -mindepth 1 -maxdepth 1 "
                   f"-printf '%y %s %T@ %P\\0'; elif [ -e {where} ] || [ -L {where} ]; then "
                   f"echo 'Not a directory' >&2; exit 1; else exit {_MISSING}; fi")
        status, out, err = self._transport.run_bytes(command)
        if status == _MISSING:
            raise FileNotFoundError(path)
        if status != 0:
            detail = err.decode(errors="replace").strip() or f"exit status {status}"
            raise TransportError(f"Cannot list {path} on the cluster: {detail.splitlines()[-1]}.")
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            kind, size, mtime, name = record.split(b" ", 3)
            entries.append(FileInfo(name.decode(errors="replace"), int(size), float(mtime),
                                    kind == b"d", kind == b"l"))
        return entries

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        where = _shell_path(path)
        command = f"if [ -e {where} ]; then exec head -c {int(limit)} -- {where}; else exit {_MISSING}; fi"
        status, out, err = self._transport.run_bytes(command)
        if status == _MISSING:
            raise FileNotFoundError(path)
        if status != 0:
            detail = err.decode(errors="replace").strip() or f"exit status {status}"
            raise TransportError(f"Cannot read {path} on the cluster: {detail.splitlines()[-1]}.")
        return out


# -- ssh's settings ----------------------------------------------------------------------------------------


def _options(profile: Profile) -> list[str]:
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
        options += ["-i", _escape(os.path.expanduser(profile.identity_file)), "-o", "IdentitiesOnly=yes"]
    if profile.proxy_jump:
        if profile.proxy_jump.lower() == "none":
            options += ["-o", "ProxyJump=none"]
        else:
            options += ["-J", profile.proxy_jump]
    if profile.known_hosts:
        options += ["-o", "UserKnownHostsFile=" + _config_word(_escape(os.path.expanduser(profile.known_hosts)))]
    options += [
        "-o", "StrictHostKeyChecking=yes",  # never accept-new: an unknown host is an error with advice
        "-o", f"ServerAliveInterval={max(1, math.ceil(profile.keepalive))}",
        "-o", "ServerAliveCountMax=2",
        "-o", f"ConnectTimeout={max(1, math.ceil(profile.connect_timeout))}",
    ]
    return options


def _public_options(options: list[str]) -> list[str]:
    """The options for a command shown to the user (the generated timeouts left out)."""
    shown: list[str] = []
    skip = ("ServerAliveInterval=", "ServerAliveCountMax=", "ConnectTimeout=", "StrictHostKeyChecking=")
    pairs = iter(options)
    for option in pairs:
        value = next(pairs)
        if option == "-o" and value.startswith(skip):
            continue
        shown += [option, value]
    return shown


def _resolve(ssh: str, options: list[str], profile: Profile) -> dict[str, str]:
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


def _escape(path: str) -> str:
    """A path for an ssh option that expands %-tokens (ControlPath, IdentityFile, UserKnownHostsFile)."""
    return path.replace("%", "%%")


def _config_word(value: str) -> str:
    """A value for ``-o Key=value`` that ssh must read as one word (known_hosts takes a list)."""
    if any(c.isspace() for c in value) or '"' in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _has_terminal() -> bool:
    """Whether ssh can ask the person at the keyboard: stdin is a terminal and we are in its foreground."""
    try:
        return bool(sys.stdin) and os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except (OSError, AttributeError, ValueError):
        return False


def _socket_dir() -> str:
    """A private (0700) directory for control sockets, short enough for a unix socket path (~104 bytes)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and len(runtime) < 40:
        return os.path.join(runtime, "hpcllm-ssh")
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return os.path.join(base, f"hpcllm-ssh-{os.getuid()}")


def _ensure_dir(path: str) -> None:
    """Make the socket directory (0700) and check that it is ours and private, not a trap set by another user."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path} is not a directory of yours, so it cannot hold ssh's control sockets.",
                          "Remove it (it may be a leftover of another user), then try again.")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _unlink_stale(path: str) -> None:
    """Remove a control socket that no master answers on (left by a master killed with SIGKILL)."""
    if os.path.exists(path) and _mux_connect(path, timeout=2.0, quiet=True) is None:
        with contextlib.suppress(OSError):
            os.unlink(path)


class _Collector:
    """ssh's stderr, kept (for the error) and, while ssh asks at the terminal, copied to ours (MFA
    instructions come on stderr, the question on /dev/tty)."""

    def __init__(self, source: IO[bytes], *, echo: bool) -> None:
        self._source = source
        self._echo = echo
        self._chunks: list[bytes] = []
        self._shown = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="hpcllm-ssh-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self._source.fileno(), 4096):
                with self._lock:
                    self._chunks.append(chunk)
                if self._echo:
                    with contextlib.suppress(Exception):
                        sys.stderr.write(chunk.decode(errors="replace"))
                        sys.stderr.flush()

    def new_text(self) -> str:
        """What ssh wrote since the last call (the instructions that come with a question)."""
        time.sleep(0.05)  # ssh writes them just before it runs the askpass program
        with self._lock:
            chunks, self._shown = self._chunks[self._shown:], len(self._chunks)
        return b"".join(chunks).decode(errors="replace")

    def text(self) -> str:
        # ssh -f points the background master's stderr at /dev/null, so the pipe ends with the foreground
        # process; an older ssh may keep it: do not wait for that.
        self._thread.join(2.0)
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")


# The SSH_ASKPASS program: passes ssh's question to the socket of the process that started ssh, prints the
# answer. Isolated Python (-I -S), standard library only.
_ASKPASS_CODE = """
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HPCLLM_ASKPASS_SOCKET"])
question = {"text": sys.argv[1] if len(sys.argv) > 1 else "", "kind": os.environ.get("SSH_ASKPASS_PROMPT", "")}
s.sendall(json.dumps(question).encode() + b"\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
answer = json.loads(data or b"null")
if answer is None:
    sys.exit(1)
sys.stdout.write(answer + "\\n")
"""


class _AskpassBridge:
    """SSH_ASKPASS for one master start: ssh runs a small program that asks us over a unix socket in our
    private directory; ``serve`` answers with the face's prompt, in the calling thread."""

    def __init__(self, socket_path: str, directory: str) -> None:
        self.socket_path = socket_path
        self.script = socket_path + ".sh"
        python = shlex.quote(sys.executable or "python3")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        descriptor = os.open(self.script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(descriptor, "w") as script:
            script.write(f"#!/bin/sh\nexec {python} -I -S -c {shlex.quote(_ASKPASS_CODE)} \"$@\"\n")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_path)
        self._listener.listen(4)
        self._listener.settimeout(0.2)
        self.env = {"SSH_ASKPASS": self.script, "SSH_ASKPASS_REQUIRE": "force",
                    "HPCLLM_ASKPASS_SOCKET": socket_path}

    def serve(self, process: subprocess.Popen[bytes], prompt: Prompt, errors: _Collector, deadline: float) -> None:
        """Answer ssh's questions until it exits (authenticated, or failed) or the deadline passes."""
        import json

        while process.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(process.args, 0)
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10.0)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    question = json.loads(data or b"{}")
                except ValueError:
                    question = {}
                text = str(question.get("text", ""))
                kind = str(question.get("kind", ""))
                said = errors.new_text().strip()
                if kind == "none":  # a notice (touch your security key): nothing to answer
                    with contextlib.suppress(Exception):
                        sys.stderr.write(text.rstrip() + "\n")
                    connection.sendall(b"null")
                    continue
                try:
                    answer = prompt(f"{said}\n{text}" if said else text, kind == "confirm")
                except Exception as error:
                    connection.sendall(b"null")
                    raise AuthenticationError(
                        f"ssh asked {text.strip()!r}, and the answer could not be read: {error}.",
                        "Connect from a terminal, or open a shared connection there first (see the "
                        "profile's ssh_backend in the README).",
                    ) from error
                connection.sendall(json.dumps(answer).encode())

    def close(self) -> None:
        self._listener.close()
        for path in (self.socket_path, self.script):
            with contextlib.suppress(OSError):
                os.unlink(path)


# -- the ControlMaster's multiplexing protocol (OpenSSH PROTOCOL.mux, version 4) ---------------------------

_MUX_VERSION = 4
_MUX_HELLO = 0x00000001
_MUX_C_ALIVE_CHECK = 0x10000004
_MUX_C_TERMINATE = 0x10000005
_MUX_C_NEW_STDIO_FWD = 0x10000008
_MUX_S_OK = 0x80000001
_MUX_S_PERMISSION_DENIED = 0x80000002
_MUX_S_FAILURE = 0x80000003
_MUX_S_ALIVE = 0x80000005
_MUX_S_SESSION_OPENED = 0x80000006


class _Refused(Exception):
    """The master (or the server behind it) refused a request; the message is its reason."""


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(text: str) -> bytes:
    data = text.encode()
    return _u32(len(data)) + data


def _mux_send(sock: socket.socket, kind: int, *fields: bytes) -> None:
    body = _u32(kind) + b"".join(fields)
    sock.sendall(_u32(len(body)) + body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the ssh master closed its control connection")
        data += chunk
    return data


def _mux_recv(sock: socket.socket) -> tuple[int, bytes]:
    (size,) = struct.unpack(">I", _recv_exactly(sock, 4))
    if not 4 <= size <= 1 << 20:
        raise ConnectionResetError(f"the ssh master sent a message of {size} bytes")
    body = _recv_exactly(sock, size)
    return struct.unpack(">I", body[:4])[0], body[4:]


def _reason(body: bytes) -> str:
    """The reason of a MUX_S_FAILURE or MUX_S_PERMISSION_DENIED (after the request id)."""
    try:
        (size,) = struct.unpack(">I", body[4:8])
        return body[8:8 + size].decode(errors="replace")
    except struct.error:
        return "no reason given"


def _mux_connect(path: str, *, timeout: float, quiet: bool = False) -> socket.socket | None:
    """A control connection to the master at ``path`` after the hello exchange; None if none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        _mux_send(sock, _MUX_HELLO, _u32(_MUX_VERSION))
        kind, body = _mux_recv(sock)
        if kind != _MUX_HELLO or len(body) < 4 or struct.unpack(">I", body[:4])[0] != _MUX_VERSION:
            raise ConnectionResetError(f"the ssh master at {path} speaks another multiplexing protocol")
    except OSError:
        sock.close()
        if quiet:
            return None
        raise
    return sock


def _mux_alive(sock: socket.socket) -> int:
    """The master's process id (MUX_C_ALIVE_CHECK)."""
    _mux_send(sock, _MUX_C_ALIVE_CHECK, _u32(1))
    kind, body = _mux_recv(sock)
    if kind != _MUX_S_ALIVE or len(body) < 8:
        raise ConnectionResetError("the ssh master did not answer its alive check")
    pid: int = struct.unpack(">I", body[4:8])[0]
    return pid


def _open(keeper: socket.socket) -> bool:
    """Whether the master behind an idle control connection (non-blocking: a socket with a timeout would
    wait for data first) still runs. It never writes to an idle one, so readable means EOF: it exited."""
    try:
        return keeper.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _mux_stdio_forward(control: socket.socket, sock: socket.socket, host: str, port: int) -> None:
    """Ask the master for a channel to host:port that it relays to ``sock`` (MUX_C_NEW_STDIO_FWD); returns
    once the server opened it, raises _Refused when it did not."""
    _mux_send(control, _MUX_C_NEW_STDIO_FWD, _u32(2), _string(""), _string(host), _u32(port))
    # The channel's input and output, one message each (as ssh -W passes its stdin and stdout).
    for _ in range(2):
        socket.send_fds(control, [b"\0"], [sock.fileno()])
    kind, body = _mux_recv(control)
    if kind == _MUX_S_SESSION_OPENED:
        control.settimeout(None)
        return
    if kind in (_MUX_S_FAILURE, _MUX_S_PERMISSION_DENIED):
        reason = _reason(body)
        if reason == "Session open refused by peer":
            reason = "the login node refused the connection"
        raise _Refused(reason)
    raise ConnectionResetError(f"the ssh master answered a channel request with message {kind:#x}")


class _ChannelSocket(socket.socket):
    """Our end of a channel the master relays; closing it also ends its control connection."""

    def __init__(self, sock: socket.socket, control: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._control: socket.socket | None = control

    def close(self) -> None:
        try:
            super().close()
        finally:
            control, self._control = self._control, None
            if control is not None:
                control.close()

    def __repr__(self) -> str:
        return f"<hpcllm ssh channel fd={self.fileno()}>"


class _MuxForward:
    """Listen on ``local_host:local_port`` (0: any free port); every accepted connection is handed to the
    master (``OpenSSHTransport._hand_over``), which relays it itself. A thread per connection only waits
    for the end of its control connection. Like PortForward: a context manager, idempotent ``close()``."""

    def __init__(self, transport: OpenSSHTransport, host: str, port: int, *, local_host: str = "127.0.0.1",
                 local_port: int = 0, timeout: float = 10.0) -> None:
        self._transport = transport
        self._host, self._port, self._timeout = host, port, timeout
        self.target = f"{host}:{port}"
        try:
            self._listener = socket.create_server((local_host, local_port), backlog=128)
        except OSError as error:
            raise ForwardError(
                f"Cannot listen on {local_host}:{local_port} for the forward to {self.target}: {error}.",
                "Choose another local port (or 0 for any free one).",
            ) from None
        self.local_host, self.local_port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._controls: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []  # unexpected failures in the forward's threads
        self.last_refusal: str | None = None  # why the last connection could not be relayed
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"hpcllm-forward-{self.target}",
                                               daemon=True)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return f"{self.local_host}:{self.local_port}"

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if not self._closed.is_set():
                    self._record(ForwardError(f"The forward to {self.target} stopped accepting connections."))
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name=f"hpcllm-relay-{self.target}")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        control: socket.socket | None = None
        try:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                control = self._transport._hand_over(client, self._host, self._port, self._timeout)
            except HpcllmError as error:
                # Nothing listens there (yet, or any more): the client sees a closed connection, as it
                # would see a refused one. Normal while the engine loads, so not a failure of the forward.
                self.last_refusal = f"Cannot open a channel to {self.target}: {error}."
                return
            finally:
                client.close()  # the master relays its own copy; ours would keep the connection open
            with self._lock:
                if self._closed.is_set():
                    return
                self._controls.add(control)
            # The master closes the control connection when the channel ends (or when it exits).
            with contextlib.suppress(OSError):
                while control.recv(4096):
                    pass
        except Exception as error:
            self._record(error)
        finally:
            if control is not None:
                with self._lock:
                    self._controls.discard(control)
                control.close()

    def _record(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def raise_if_failed(self) -> None:
        with self._lock:
            first = self.errors[0] if self.errors else None
        if first is not None:
            raise first if isinstance(first, ForwardError) else ForwardError(
                f"The forward to {self.target} failed: {first!r}.") from first

    def close(self, *, raise_errors: bool = False) -> None:
        """Stop listening and end every relayed connection (the master closes them when their control
        connection ends). Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone may not
            self._listener.close()
            with self._lock:
                controls, threads = list(self._controls), list(self._threads)
            for control in controls:
                with contextlib.suppress(OSError):
                    control.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            self._accept_thread.join(timeout=5)
            for thread in threads:
                thread.join(timeout=5)
        if raise_errors:
            self.raise_if_failed()

    def __enter__(self) -> _MuxForward:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(raise_errors=kind is None)


def _release(keeper: socket.socket, path: str, pid: int, owned: bool) -> None:
    """Let go of a master: stop it if we started it (MUX_C_TERMINATE, as ``ssh -O exit``), and wait until
    it is gone; a master of the user's only loses our keeper."""
    try:
        if owned:
            with contextlib.suppress(OSError):
                keeper.settimeout(5.0)
                _mux_send(keeper, _MUX_C_TERMINATE, _u32(2))
                with contextlib.suppress(ConnectionResetError):
                    _mux_recv(keeper)  # MUX_S_OK
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and keeper.recv(4096):
                    pass  # until EOF: every descriptor of the master is closed, so it has exited
            keeper.setblocking(False)
            if _open(keeper) and pid > 1:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
    finally:
        keeper.close()
    if owned:
        _unlink_stale(path)
