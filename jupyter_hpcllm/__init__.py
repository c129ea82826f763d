"""jupyter-hpcllm: a large open LLM on a Slurm GPU cluster, from a notebook.

    import jupyter_hpcllm as hpc
    server = hpc.up("gpt-oss-120b", gpus=4, profile="ebi", on_progress=print)
    client = server.client()           # an openai.OpenAI pointed at the job, key set
    labels = hpc.map(abstracts, server, template="Label this abstract: {item}")  # at full throughput
    server.down()

    hpc.panel()                        # in a notebook: the launch panel (a form that knows the cluster)

    cluster = hpc.Cluster("ebi")       # the same, with the transport in your hands
    handle = cluster.launch("gpt-oss-120b", gpus=4)   # at once: handle.progress, handle.cancel()
    server = handle.result()

The public names are loaded on first use, so ``import jupyter_hpcllm`` does not import paramiko or
openai (a notebook pays for them only when it connects). Everything not listed in ``__all__`` is
internal and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .chat.batch import imap
    from .chat.batch import map as map  # public as hpc.map, kept out of __all__
    from .config.options import LaunchOptions
    from .config.profiles import Profile, load_profile
    from .edge.fake import FakeTransport
    from .lifecycle import (
        Cluster,
        JobState,
        LaunchHandle,
        Progress,
        Server,
        ServerInfo,
        Stage,
        attach,
        cancel,
        launch,
        list_servers,
        up,
    )
    from .notebook.panel import panel
    from .planning.plan import LaunchPlan

__all__ = [
    "Cluster",
    "FakeTransport",
    "JobState",
    "LaunchHandle",
    "LaunchOptions",
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
    "imap",
    "launch",
    "list_servers",
    "load_ipython_extension",
    "load_profile",
    "panel",
    "up",
]

_LAZY = {
    **dict.fromkeys(["Cluster", "JobState", "LaunchHandle", "Progress", "Server", "ServerInfo", "Stage", "attach",
                     "cancel", "launch", "list_servers", "up"], "lifecycle"),
    "LaunchOptions": "config.options",
    "map": "chat.batch",  # public (hpc.map), not in __all__: `import *` must not hide the builtin map
    "imap": "chat.batch",
    "Profile": "config.profiles",
    "load_profile": "config.profiles",
    "FakeTransport": "edge.fake",
    "LaunchPlan": "planning.plan",
    "panel": "notebook.panel",
}


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_hpcllm`: register `%hpcllm` and `%%llm`."""
    from .notebook.magics import HpcllmMagics

    ipython.register_magics(HpcllmMagics)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension (the "HPC LLM" sidebar), inside the package."""
    return [{"src": "labextension", "dest": "jupyter-hpcllm"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter server extension (REST endpoints under /hpcllm/ for the JupyterLab sidebar)."""
    return [{"module": "jupyter_hpcllm.serverext"}]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
