"""Starting and stopping a ControlMaster: ``ssh -M -N -f`` with the profile's options, ssh's complaint
turned into one of our errors with advice, and letting go of a master again.

What ssh asks while it logs in goes to the face's prompt (``askpass``), else to the terminal, else
nowhere: BatchMode=yes makes a question an error that says how to open a master from a terminal, never a
hang. Our masters run with ControlPersist=``_GRACE``: they outlive their last client (the transport's
keeper) only briefly, so a process killed without close() leaves no master behind for long.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time

from ...errors import AuthenticationError, ConnectError, HostKeyError
from ..transport import REACH_HINT, Prompt
from .askpass import AskpassBridge, StderrCollector, has_terminal
from .mux import ForeignMaster, master_still_runs, mux_alive, mux_connect, mux_terminate
from .options import LoginRoute, escape_tokens, shown_options

__all__ = ["REACH_HINT", "attach", "release", "start_error", "start_master", "unlink_stale"]

# Seconds a master we started outlives its last client (our keeper): only matters when our process ended
# without close() (killed), so it is short.
_GRACE = 30
# How long a person at a terminal may take to answer ssh's questions (an MFA code, a key touch).
_INTERACTIVE_TIMEOUT = 300.0


def attach(path: str, timeout: float) -> tuple[socket.socket, int] | None:
    """A keeper connection to the master at ``path`` and its process id; None if none answers there,
    ForeignMaster if one of another user does."""
    keeper = mux_connect(path, timeout=timeout, quiet=True)
    if keeper is None:
        return None
    try:
        pid = mux_alive(keeper)
    except OSError:
        keeper.close()
        return None
    keeper.setblocking(False)  # see master_still_runs
    return keeper, pid


def start_master(route: LoginRoute, path: str, *, prompt: Prompt | None, connect_timeout: float) -> str | None:
    """Run ``ssh -M -N -f``: None once it is authenticated and in the background, else ssh's stderr.

    ssh's questions go to the face's prompt (SSH_ASKPASS, answered in this thread: a notebook's input
    works only in the cell's own thread), else to the terminal, else nowhere (BatchMode)."""
    asking = prompt is not None
    interactive = not asking and has_terminal()
    argv = [route.program, *route.options, "-M", "-S", escape_tokens(path), "-o", f"ControlPersist={_GRACE}",
            "-N", "-f"]
    if not asking and not interactive:
        argv += ["-o", "BatchMode=yes"]
    argv += ["--", route.destination]
    timeout = connect_timeout + (_INTERACTIVE_TIMEOUT if asking or interactive else 30.0)
    bridge = AskpassBridge(route.socket_dir) if asking else None
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
            raise ConnectError(f"Cannot run {route.program}: {error}.", REACH_HINT) from None
        assert process.stderr is not None
        errors = StderrCollector(process.stderr, echo=interactive)
        try:
            if bridge is not None:
                assert prompt is not None
                bridge.serve(process, prompt, errors, time.monotonic() + timeout)
            status = process.wait(max(0.1, timeout if bridge is None else 5.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ConnectError(f"SSH to {route.description} did not finish connecting within {timeout:g} s.",
                               REACH_HINT) from None
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


def start_error(route: LoginRoute, text: str, path: str, *, asked: bool, known_hosts: str | None) -> Exception:
    """ssh's complaint about a master that did not start, as one of our errors with advice."""
    display = route.description.removesuffix(" (OpenSSH)")
    name = route.hostname if route.port == 22 else f"[{route.hostname}]:{route.port}"
    known_file = shlex.quote(os.path.expanduser(known_hosts)) if known_hosts else "~/.ssh/known_hosts"
    last = text.strip().splitlines()[-1] if text.strip() else text
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested" in text:
        found = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
        fingerprint = found.group(1).rstrip(".") if found else "unknown"
        remove = f"ssh-keygen -f {known_file} -R '{name}'" if known_hosts else f"ssh-keygen -R '{name}'"
        return HostKeyError(
            f"The host key of {route.hostname} does not match known_hosts: it changed, or someone is "
            "intercepting the connection.",
            f"Ask your cluster's admins whether the key changed (fingerprint now {fingerprint}); if it "
            f"did, remove the old line with `{remove}` and connect again.",
        )
    if "Host key verification failed" in text or "host key is known for" in text:
        return HostKeyError(
            f"The host {name} is not in your known_hosts, so jupyter-hpcllm will not connect to it.",
            "Check its fingerprint with your cluster's documentation, then trust it with "
            f"`ssh-keyscan -p {route.port} {route.hostname} >> {known_file}` (or connect once with "
            f"`ssh {route.destination}` and answer yes).",
        )
    if "Permission denied" in text or "Too many authentication failures" in text:
        methods = re.search(r"Permission denied \(([^)]*)\)", text)
        methods_text = methods.group(1) if methods else ""
        command = " ".join(shlex.quote(a) for a in [
            "ssh", *shown_options(route.options), "-M", "-S", route.shared_path, "-fN", "--",
            route.destination])
        typed = any(m in methods_text for m in ("keyboard-interactive", "password"))
        if typed and asked:
            return AuthenticationError(
                f"{display} refused the password or code you entered.",
                f"Connect again to retry; check that `ssh {route.destination}` works from a terminal.",
            )
        if typed and not has_terminal():
            return AuthenticationError(
                f"SSH to {display} needs an answer typed at a terminal ({methods_text}), and there is none "
                "here.",
                f"Open a shared connection once from a terminal: `mkdir -p -m 700 {shlex.quote(route.socket_dir)} "
                f"&& {command}`, and jupyter-hpcllm will use it until it ends; or set ControlMaster auto, "
                f"ControlPath and ControlPersist for {route.destination} in ~/.ssh/config and run "
                f"`ssh {route.destination}` once.",
            )
        return AuthenticationError(
            f"SSH to {display} refused our keys ({methods_text or last}).",
            f"Check that `ssh {route.destination}` works from a terminal; load your key with `ssh-add`, or "
            "set identity_file in the profile (`hpcllm config show` prints what is used). If the cluster "
            f"asks for a code, open a shared connection once from a terminal: `{command}`.",
        )
    if "ControlSocket" in text or "unix_listener" in text or "control socket" in text.lower():
        return ConnectError(f"ssh cannot make its control socket {path}: {last}.",
                            "Check that the directory is writable and not full.")
    return ConnectError(f"Cannot reach {display}: {last.removeprefix('ssh: ')}.", REACH_HINT)


def release(keeper: socket.socket, path: str, pid: int, owned: bool) -> None:
    """Let go of a master: stop it if we started it (MUX_C_TERMINATE, as ``ssh -O exit``), and wait until
    it is gone; a master of the user's only loses our keeper."""
    try:
        if owned:
            with contextlib.suppress(OSError):
                keeper.settimeout(5.0)
                mux_terminate(keeper)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and keeper.recv(4096):
                    pass  # until EOF: every descriptor of the master is closed, so it has exited
            keeper.setblocking(False)
            if master_still_runs(keeper) and pid > 1:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
    finally:
        keeper.close()
    if owned:
        unlink_stale(path)


def unlink_stale(path: str) -> None:
    """Remove a control socket of ours (in our private directory) that no master of ours answers on (left
    by a master killed with SIGKILL)."""
    try:
        stale = os.path.exists(path) and mux_connect(path, timeout=2.0, quiet=True) is None
    except ForeignMaster:
        stale = True
    if stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
