"""Every error jupyter-hpcllm raises, in one small tree.

    HpcllmError                 base: a one-paragraph message that says what to do
    ├── ConfigError             a profile, config file or option is wrong
    │   ├── InvalidOption       one launch option is wrong (``field`` names it, for a form or a JSON body)
    │   └── ModelNotFound       the model is not under the profile's model root
    ├── TransportError          the cluster cannot be reached or a command on it failed
    │   ├── ConnectError        host unreachable, DNS, refused, timed out while connecting
    │   │   └── ConnectionLost      the connection died under a command (which may or may not have run)
    │   ├── AuthenticationError the SSH server refused our keys
    │   ├── HostKeyError        the host key is unknown or changed (we never trust silently)
    │   ├── CommandTimeout      a remote command ran past its timeout
    │   ├── RemoteCommandError  a remote command exited non-zero (command, exit code, stdout, stderr)
    │   └── SlurmOutputError    Slurm printed something we cannot read (never a bare ValueError)
    ├── SubmitError             sbatch refused the job (Slurm's own message attached)
    ├── JobNotFound             no such job of ours in the queue (ended, or a wrong id)
    ├── JobFailed               the job or the engine in it ended before the server was ready
    ├── ServerNotReady          the server did not answer within the time allowed
    ├── LaunchCancelled         the launch was cancelled (its job, if submitted, too)
    ├── ForwardError            the local port forward to the server failed
    └── MapStopped              a map's requests stopped reaching the server (its answers so far are kept)

Faces (CLI, magics, panel) catch ``HpcllmError`` and print ``str(error)``: never a traceback.
``http_status(error)`` is the one mapping from error class to HTTP status, for the server extension.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CommandTimeout",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "ForwardError",
    "HostKeyError",
    "HpcllmError",
    "InvalidOption",
    "JobFailed",
    "JobNotFound",
    "LaunchCancelled",
    "MapStopped",
    "ModelNotFound",
    "RemoteCommandError",
    "ServerNotReady",
    "SlurmOutputError",
    "SubmitError",
    "TransportError",
    "http_status",
]


class HpcllmError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in a notebook instead of a traceback: one paragraph, what went wrong and what
        to do (the call that raised it is the user's own line)."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(HpcllmError):
    """A profile, the config file or an option value is wrong."""


class InvalidOption(ConfigError):
    """One launch option is wrong; ``field`` is its name (``gpus``, ``time``...), for a form to mark."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.field = field


class ModelNotFound(ConfigError):
    """The model directory does not exist on the cluster."""

    def __init__(self, message: str, hint: str = "", candidates: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.candidates = candidates or []


class TransportError(HpcllmError):
    """The cluster could not be reached, or a command on it failed."""


class ConnectError(TransportError):
    """The host is unreachable."""


class ConnectionLost(ConnectError):
    """The connection died while a command ran: it may or may not have run. A command that only reads is
    run once more on a new connection; ``sbatch`` never is without first looking for the job it may have made."""


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


class SlurmOutputError(TransportError):
    """A Slurm command printed something we cannot read."""

    def __init__(self, command: str, output: str) -> None:
        super().__init__(
            f"Cannot read the output of {command} on the cluster: {_short(output) or '(nothing)'}.",
            "Slurm may be misconfigured or a login script may print text; check that the command works in an "
            "ssh session, and report this if it does.",
        )
        self.command = command
        self.output = output


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


class JobNotFound(HpcllmError):
    """No job of ours with that id is pending or running."""

    def __init__(self, job_id: str, hint: str = "") -> None:
        super().__init__(f"Job {job_id} is not one of your pending or running servers.",
                         hint or "`hpcllm list` shows them.")
        self.job_id = job_id


class ServerNotReady(HpcllmError):
    """The server did not answer within the time allowed."""

    def __init__(self, message: str, hint: str = "", *, job_id: str = "") -> None:
        super().__init__(message, hint)
        self.job_id = job_id


class LaunchCancelled(HpcllmError):
    """The launch was cancelled; a job it had submitted was cancelled too."""


class ForwardError(HpcllmError):
    """The local port forward to the server failed."""


class MapStopped(HpcllmError):
    """A map stopped: many requests in a row could not reach the server."""


# The HTTP status a server extension answers with, most specific class first.
_HTTP_STATUS: tuple[tuple[type[HpcllmError], int], ...] = (
    (InvalidOption, 422),
    (ModelNotFound, 404),
    (ConfigError, 400),
    (JobNotFound, 404),
    (AuthenticationError, 502),
    (HostKeyError, 502),
    (CommandTimeout, 504),
    (TransportError, 502),
    (SubmitError, 422),
    (JobFailed, 409),
    (ServerNotReady, 504),
    (LaunchCancelled, 409),
    (ForwardError, 502),
    (MapStopped, 502),
)


def http_status(error: BaseException) -> int:
    """The HTTP status for an error: 4xx for what the request got wrong, 5xx for the cluster's side."""
    for kind, status in _HTTP_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def _short(command: str, limit: int = 120) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 1] + "…"
