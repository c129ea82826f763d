"""The system ``ssh`` with a ControlMaster: placeholder until the backend lands (issue 8, in progress)."""

from __future__ import annotations

from ..config.profiles import Profile
from ..errors import ConfigError
from .transport import Prompt

__all__ = ["OpenSSHTransport"]


class OpenSSHTransport:
    def __init__(self, profile: Profile, *, prompt: Prompt | None = None) -> None:
        raise ConfigError("ssh_backend = \"openssh\" is not available yet.", "Use ssh_backend = \"paramiko\".")
