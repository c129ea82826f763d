"""Finding the sshd processes that serve one of our connections, for the tests that kill
or stop them (a reset, or a silent drop). Needs ss(8), from iproute2, which the test cluster installs."""

from __future__ import annotations

import re
import subprocess


def sshd_pids(port: int, sshd_port: int = 2222) -> list[int]:
    """The sshd processes serving the TCP connection from our `port` (the monitor and the user's child)."""
    out = subprocess.run(["ss", "-tnpH", f"( sport = :{sshd_port} and dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    pids = sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})
    assert pids, f"no sshd process serves port {port}: {out!r}"
    return pids
