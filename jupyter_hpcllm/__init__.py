"""jupyter-hpcllm: a large open LLM on a Slurm GPU cluster, from a notebook.

    import jupyter_hpcllm as hpc
    server = hpc.up("gpt-oss-120b", gpus=4, profile="ebi", on_progress=print)
    client = server.client()           # an openai.OpenAI pointed at the job, key set
    server.down()

The public names are loaded on first use, so ``import jupyter_hpcllm`` does not import paramiko or
openai (a notebook pays for them only when it connects).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .lifecycle import Progress, Server, ServerInfo, Stage, attach, cancel, list_servers, up
    from .plan import LaunchPlan, plan_launch
    from .profiles import Profile, load_profile

__all__ = [
    "LaunchPlan",
    "Profile",
    "Progress",
    "Server",
    "ServerInfo",
    "Stage",
    "__version__",
    "attach",
    "cancel",
    "errors",
    "list_servers",
    "load_ipython_extension",
    "load_profile",
    "plan_launch",
    "up",
]

_LAZY = {
    "Progress": "lifecycle", "Server": "lifecycle", "ServerInfo": "lifecycle", "Stage": "lifecycle",
    "attach": "lifecycle", "cancel": "lifecycle", "list_servers": "lifecycle", "up": "lifecycle",
    "LaunchPlan": "plan", "plan_launch": "plan", "Profile": "profiles", "load_profile": "profiles",
}


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_hpcllm`: register `%hpcllm` and `%%llm`."""
    from .magics import HpcllmMagics

    ipython.register_magics(HpcllmMagics)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
