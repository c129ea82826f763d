"""The JupyterLab extension's UI tests (Galata, Playwright: ui-tests/) in headless Chromium, against the local
test cluster: `bash scripts/ui-test`, which installs Debian's Chromium and ui-tests' Node.js packages, then
runs `playwright test`; its Jupyter server reads the test cluster's HPCLLM_CONFIG.

Without the cluster, or without Chromium where this test cannot install it (not root), it skips, except
under CI=true, where either is a failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 1200  # s: a first run installs Chromium and the packages (~1.5 min); the tests launch model servers
TAIL = 8000  # characters of the output shown on a failure

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(reason=message)


def test_the_ui_tests_pass_in_chromium(cluster_config: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 and not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing and only root can install it: `sudo apt-get install chromium`")
    if not (ROOT / ".venv" / "bin" / "jupyter").exists():
        _missing(f"{ROOT / '.venv'} has no jupyter: the UI tests run the project's .venv (scripts/test makes it)")
    if shutil.which("node") is None:
        _missing("Node.js is missing: the UI tests (Playwright) run on it")
    env = {**os.environ, "HPCLLM_CONFIG": str(cluster_config), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("HPCLLM_PROFILE", None)
    env.pop("UI_TESTS_REUSE_SERVER", None)  # the test's own Jupyter server, with the cluster's config
    # Its own session, so that a timeout ends the whole tree: bash, Playwright, Chromium and the Jupyter server.
    process = subprocess.Popen(["bash", str(ROOT / "scripts" / "ui-test")], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"scripts/ui-test still ran after {TIMEOUT} s; its output's end:\n{output[-TAIL:]}")
    finally:
        if process.poll() is None:  # an interrupt (Ctrl-C) while it ran
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, (
        f"scripts/ui-test exited {process.returncode} (screenshots and traces: ui-tests/test-results, "
        f"report: ui-tests/playwright-report); its output's end:\n{output[-TAIL:]}"
    )
