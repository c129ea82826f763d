"""``OpenSSHTransport``: the system ssh with one ControlMaster per transport, shared by every command, file
read and tunnel, and started anew when it dies.

- The master (``master``): started on first use, or reused, never stopped by us, if one already runs at
  the user's own ControlPath (~/.ssh/config) or at the path our error message suggests. Only a master
  that runs as us (``mux``), in our private directory (``options``) but for the user's own ControlPath.
- A *keeper*: one idle control connection to the master, held while the transport lives. It tells at
  once (EOF) that the master died, so the next call starts a new one; and as ssh counts it as an open
  client, the master outlives idle periods, yet exits ControlPersist seconds after our process does,
  however that process ends.
- Commands: ``ssh -S PATH -o ControlMaster=no -o BatchMode=yes -T -- HOST COMMAND`` (argv, no local
  shell). A master that dies under a running command makes it ConnectionLost. One that is dead before
  the session opens (or refuses it: sshd's MaxSessions) makes ssh itself fall back to a direct
  connection with the same options, so the command still runs exactly once (or fails as a login without
  a terminal would).
- Channels to host:port (``open_channel``, ``forward``): a socket handed to the master over the
  multiplexing protocol (``mux``), which relays it itself; a refused port is a ConnectError at once.
- Files: shell commands over ``run_bytes`` (``files``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from typing import TYPE_CHECKING

from ...config.profiles import Profile
from ...errors import CommandTimeout, ConfigError, ConnectError, ConnectionLost, TransportError
from ..transport import REACH_HINT, CommandResult, Forward, Prompt, Stream, check_result
from .files import ShellFiles
from .forward import MuxForward
from .master import attach, release, start_error, start_master, unlink_stale
from .mux import ChannelSocket, MuxRefused, master_still_runs, mux_connect, mux_stdio_forward
from .options import ensure_private_dir, escape_tokens, resolve_route

if TYPE_CHECKING:
    from ..files import Files

__all__ = ["OpenSSHTransport"]


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
        self._route = resolve_route(profile, ssh)
        self.description = self._route.description
        with OpenSSHTransport._count_lock:
            OpenSSHTransport._count += 1
            number = OpenSSHTransport._count
        # Where our master lives: next to the shared path (where a master opened by hand is looked for).
        self._own_path = f"{self._route.shared_path}-{os.getpid()}-{number}"
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
            return self._keeper is not None and master_still_runs(self._keeper)

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
                raise ConnectError(f"The connection to {self.description} was closed.", REACH_HINT)
            if self._keeper is not None:
                if master_still_runs(self._keeper):
                    return self._path
                keeper, path, owned = self._keeper, self._path, self._owned
                self._keeper, self._path, self._pid, self._owned = None, None, 0, False
            else:
                return None
        keeper.close()
        if owned and path:
            unlink_stale(path)  # a master killed with SIGKILL leaves its socket behind
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
                release(keeper, path, pid, owned)
                raise ConnectError(f"The connection to {self.description} was closed.", REACH_HINT)
            return path

    def _attach_or_start(self) -> tuple[socket.socket, str, int, bool]:
        # Each control connection checks that the master runs as us (mux_connect: ForeignMaster), and our
        # directory is checked before any path in it is touched: another user could have made it first.
        for path in (self._route.user_control_path, self._route.shared_path):
            if path == self._route.shared_path:
                ensure_private_dir(self._route.socket_dir)
            if path and len(path.encode()) < 104 and (found := attach(path, 5.0)) is not None:
                return found[0], path, found[1], False
        path = self._own_path
        unlink_stale(path)
        error = self._start_master(path)
        if error is not None:
            raise start_error(self._route, error, path, asked=self._prompt is not None,
                              known_hosts=self.profile.known_hosts)
        found = attach(path, self.profile.connect_timeout)
        if found is None:
            raise ConnectError(f"ssh connected to {self.description} but its control socket {path} does not "
                               "answer.", REACH_HINT)
        return found[0], path, found[1], True

    def _start_master(self, path: str) -> str | None:
        """Start our master at ``path``: None once it runs, else ssh's complaint (``master.start_master``)."""
        return start_master(self._route, path, prompt=self._prompt, connect_timeout=self.profile.connect_timeout)

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
        argv = [self._route.program, *self._route.options, "-S", escape_tokens(path), "-o", "ControlMaster=no",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-T", "--", self._route.destination, command]
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
            raise ConnectError(f"Cannot run {self._route.program}: {error}.", REACH_HINT) from None
        if done.returncode == 255:
            # 255 is ssh's own failure, or the remote command's status: the master and ssh's words tell.
            text = done.stderr.decode(errors="replace").strip()
            why = text.splitlines()[-1] if text else ""
            word = command.split()[0] if command.split() else command
            keeper = self._keeper
            if keeper is not None:
                master_still_runs(keeper, wait=0.5)  # a master that just ended the session: until it exits
            if self._live() is None:  # the master died under the command: it may or may not have run
                raise ConnectionLost(
                    f"The SSH connection to {self.description} broke while running `{word}`"
                    f"{f' ({why})' if why else ''}; the next command connects anew.", REACH_HINT)
            if "mux_client_" in text or "Control socket" in text:
                raise TransportError(f"Cannot open a session on {self.description}: {why}.", REACH_HINT)
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
        return ChannelSocket(ours, control)

    def _hand_over(self, sock: socket.socket, host: str, port: int, timeout: float) -> socket.socket:
        """Have the master relay ``sock`` to host:port (MUX_C_NEW_STDIO_FWD); the control connection that
        keeps the channel open (closing it ends the channel; the master closes it when the channel ends)."""
        for attempt in (1, 2):
            path = self._master()
            control = mux_connect(path, timeout=timeout, quiet=True)
            if control is None:
                self._live()  # the master died since: forget it, and start another once
                if attempt == 1:
                    continue
                raise ConnectError(f"The SSH connection to {self.description} was lost.", REACH_HINT)
            try:
                mux_stdio_forward(control, sock, host, port)
                return control
            except MuxRefused as refused:
                control.close()
                raise ConnectError(
                    f"Cannot connect to {host}:{port} through {self.description}: {refused}.",
                    "Nothing may listen there (yet), or the login node does not allow forwarding to it.",
                ) from None
            except OSError as error:
                control.close()
                if isinstance(error, TimeoutError):
                    raise ConnectError(f"The login node did not open a connection to {host}:{port} within "
                                       f"{timeout:g} s.", REACH_HINT) from None
                self._live()
                if attempt == 1:
                    continue  # nothing was opened: safe to ask a new master once
                raise ConnectError(f"The SSH connection to {self.description} broke while connecting to "
                                   f"{host}:{port}: {error}.", REACH_HINT) from None
        raise AssertionError("unreachable")

    def forward(self, host: str, port: int, *, local_port: int = 0) -> Forward:
        """A local port relayed to host:port. Each accepted connection is handed to the master in use at
        the time, which relays it itself (as fast as ``ssh -O forward``, no copy in Python); unlike a
        forward of the master's own, it outlives a master that died and was replaced."""
        return MuxForward(self._hand_over, host, port, local_port=local_port)

    def files(self) -> Files:
        return ShellFiles(self)

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
            release(keeper, path, pid, owned)
        # The socket directory stays (as tmux's does): removed, another user could make it anew, between our
        # check and a bind of ssh's, for a transport of ours that starts a master at that time.

    def __enter__(self) -> OpenSSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
