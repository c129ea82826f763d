"""Processes the tests look at: the sshd processes serving one of our connections (for the tests that
kill or stop them: a reset, a silent drop; needs ss(8), from iproute2, which the test cluster installs),
and zombies left by this process (a child started and never waited for)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def sshd_pids(port: int, sshd_port: int = 2222) -> list[int]:
    """The sshd processes serving the TCP connection from our `port` (the monitor and the user's child)."""
    out = subprocess.run(["ss", "-tnpH", f"( sport = :{sshd_port} and dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    pids = sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})
    assert pids, f"no sshd process serves port {port}: {out!r}"
    return pids


def zombie_children() -> list[int]:
    """Children of this process that exited and were never waited for."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                pids.append(int(entry.name))
    return pids
