"""A real Jupyter kernel (ipykernel, started by jupyter_client) that a test sends cells to: what a
notebook front end does, without the browser."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager


class CellFailed(AssertionError):
    pass


class KernelSession:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env={**os.environ, **env}, cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 300) -> str:
        """Run a cell; its stdout, stderr and results as text. A cell that fails raises with its error."""
        texts: list[str] = []
        errors: list[dict[str, Any]] = []

        def output(message: dict[str, Any]) -> None:
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                texts.append(content["text"])
            elif kind in ("execute_result", "display_data", "update_display_data"):
                data = content["data"]
                texts.append(data.get("text/markdown") or data.get("text/plain", ""))
            elif kind == "error":
                errors.append(content)

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=output)
        if errors or reply["content"]["status"] != "ok":
            shown = errors[0] if errors else reply["content"]
            raise CellFailed(f"{shown.get('ename')}: {shown.get('evalue')}\n" + "\n".join(shown.get("traceback", []))
                             + "\n--- output ---\n" + "".join(texts))
        return "".join(texts)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def run_notebook(path: Path, env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    """Execute a notebook with nbclient in a real kernel (with `env` set); every output's text, joined. A
    cell that fails fails the test, with its error."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            texts.append(output.get("text", "") + str(output.get("data", {})))
    return "\n".join(texts)
