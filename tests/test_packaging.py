"""One install brings both halves of the JupyterLab extension: the prebuilt front end and the server
extension, enabled, with no further step."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _listing(*command: str) -> str:
    done = subprocess.run([str(BIN / "jupyter"), *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # without the colours


def test_the_installed_package_brings_the_lab_extension_and_enables_the_server_extension():
    assert re.search(r"jupyter-hpcllm v\S+ enabled OK \(python, jupyter_hpcllm\)", _listing("labextension", "list"))
    assert re.search(r"jupyter_hpcllm enabled", _listing("server", "extension", "list"))


def test_the_wheel_carries_the_prebuilt_extension_and_the_server_config(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("jupyter_hpcllm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = "jupyter_hpcllm-" + wheel.name.split("-")[1] + ".data/data/"
    assert data + "share/jupyter/labextensions/jupyter-hpcllm/package.json" in names
    assert data + "share/jupyter/labextensions/jupyter-hpcllm/install.json" in names
    assert any(n.startswith(data + "share/jupyter/labextensions/jupyter-hpcllm/static/remoteEntry.") for n in names)
    assert data + "etc/jupyter/jupyter_server_config.d/jupyter_hpcllm.json" in names
    assert "jupyter_hpcllm/node/relay.py" in names and "jupyter_hpcllm/py.typed" in names
    assert not any(n.startswith(("node_modules/", "labextension/src/")) for n in names)  # the sources stay


@pytest.mark.parametrize(("version", "ok"), [("v18.20.4", False), ("v20.18.1", False), ("v20.19.0", True),
                                             ("v22.12.0", True), ("v100.0.0", True), (None, False)])
def test_the_scripts_say_when_node_is_too_old_for_the_build(tmp_path, version, ok):
    """scripts/test and scripts/demo check Node.js first: a machine with Debian 12's Node.js 18 hears why."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    if version is not None:
        (stubs / "node").write_text(f"#!/bin/sh\necho {version}\n")
        (stubs / "node").chmod(0o755)
    done = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "need-node")], capture_output=True, text=True,
                          env={"PATH": f"{stubs}:/usr/bin/env-free-path-for-tests"})
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert "Node.js 20.19 or newer" in done.stderr and (version or "no Node.js") in done.stderr
