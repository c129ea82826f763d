"""Every error jupyter-hpcllm raises, in one small tree.

    HpcllmError                 base: a one-paragraph message that says what to do
    ├── ConfigError             a profile, config file or option is wrong
    │   └── ModelNotFound       the model is not under the profile's model root
    ├── TransportError          the cluster cannot be reached or a command on it failed
    │   ├── ConnectError        host unreachable, DNS, refused, timed out while connecting
    │   ├── AuthenticationError the SSH server refused our keys
    │   ├── HostKeyError        the host key is unknown or changed (we never trust silently)
    │   ├── CommandTimeout      a remote command ran past its timeout
    │   └── RemoteCommandError  a remote command exited non-zero (command, exit code, stdout, stderr)
    ├── SubmitError             sbatch refused the job (Slurm's own message attached)
    ├── JobFailed               the job or the engine in it ended before the server was ready
    └── ForwardError            the local port forward to the server failed

Faces (CLI, magics, panel) catch ``HpcllmError`` and print ``str(error)``: never a traceback.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CommandTimeout",
    "ConfigError",
    "ConnectError",
    "ForwardError",
    "HostKeyError",
    "HpcllmError",
    "JobFailed",
    "ModelNotFound",
    "RemoteCommandError",
    "SubmitError",
    "TransportError",
]


class HpcllmError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ConfigError(HpcllmError):
    """A profile, the config file or an option value is wrong."""


class ModelNotFound(ConfigError):
    """The model directory does not exist on the cluster."""

    def __init__(self, message: str, hint: str = "", candidates: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.candidates = candidates or []


class TransportError(HpcllmError):
    """The cluster could not be reached, or a command on it failed."""


class ConnectError(TransportError):
    """The host is unreachable."""


class AuthenticationError(TransportError):
    """The SSH server refused authentication."""


class HostKeyError(TransportError):
    """The server's host key is not in known_hosts (or does not match it)."""


class CommandTimeout(TransportError):
    """A remote command did not finish within its timeout."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(
            f"The command `{_short(command)}` on the cluster did not finish within {timeout:g} s.",
            "The login node or the Slurm controller may be overloaded or down; try again in a minute.",
        )
        self.command = command
        self.timeout = timeout


class RemoteCommandError(TransportError):
    """A remote command exited with a non-zero status."""

    def __init__(self, command: str, exit_status: int, stdout: str, stderr: str) -> None:
        detail = (stderr.strip() or stdout.strip() or "(no output)").splitlines()[-1]
        super().__init__(f"The command `{_short(command)}` failed with exit code {exit_status}: {detail}")
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class SubmitError(HpcllmError):
    """sbatch rejected the job."""

    def __init__(self, slurm_message: str, hint: str = "") -> None:
        super().__init__(f"Slurm refused the job: {slurm_message.strip()}", hint)
        self.slurm_message = slurm_message


class JobFailed(HpcllmError):
    """The job, or the engine inside it, ended before the server became ready."""

    def __init__(self, message: str, *, job_id: str, state: str, log_tail: str = "", hint: str = "") -> None:
        super().__init__(message, hint)
        self.job_id = job_id
        self.state = state
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail.strip():
            text += "\nLast lines of the engine log:\n" + self.log_tail.rstrip()
        return text


class ForwardError(HpcllmError):
    """The local port forward to the server failed."""


def _short(command: str, limit: int = 120) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 1] + "…"
