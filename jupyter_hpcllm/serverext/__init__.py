"""The Jupyter server extension: REST endpoints under /hpcllm/ for the JupyterLab sidebar (a thin face
over the lifecycle core, as the magics and the CLI are). Enabled with `jupyter server extension enable
jupyter_hpcllm` (the package's install enables it)."""

from __future__ import annotations

import atexit
from typing import Any

__all__ = ["load"]


def load(serverapp: Any) -> None:
    """Register the handlers and the manager they share (closed with the server)."""
    from jupyter_server.utils import url_path_join

    from .handlers import ROUTES
    from .manager import LabManager

    manager = LabManager()
    web_app = serverapp.web_app
    web_app.settings["hpcllm_manager"] = manager
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base, path), handler) for path, handler in ROUTES])
    # jupyter_server stops only ExtensionApps; a module extension closes with the process: launches still
    # starting are stopped then (their jobs cancelled), the metrics forwards closed.
    atexit.register(manager.close)
    serverapp.log.info("jupyter-hpcllm: /hpcllm/ endpoints ready")


_load_jupyter_server_extension = load
