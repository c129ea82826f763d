"""The launch panel's cost to the kernel: how long it holds the main thread, and how soon a plan follows.

    python benchmarks/bench_panel.py [--changes 41]

In a real InteractiveShell over the shipped FakeTransport (no cluster, no SSH; model facts come from the
fake, cached after the first read as on a real cluster), for `--changes` edits of the time field:

- main thread per change: how long setting a widget's value (what a front end's edit makes the kernel
  do) takes before the kernel is free again; the planning itself runs in a thread. Target: ≤ 5 ms.
- change → plan shown: from the edit to the plan box showing the plan of that edit, with the default
  debounce (400 ms) and with none (the planning's own cost).
- opening: `Panel(...)` on the main thread (the models, parser names and servers load in threads).

Prints a Markdown table of medians (and the maximum).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=41)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="hpcllm-bench-panel-")
    (Path(folder) / "c.toml").write_text("")
    os.environ.update(HPCLLM_CONFIG=f"{folder}/c.toml", XDG_CACHE_HOME=f"{folder}/cache")
    os.environ.pop("HPCLLM_PROFILE", None)

    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_hpcllm.config.profiles import load_profile
    from jupyter_hpcllm.edge.fake import FakeTransport
    from jupyter_hpcllm.lifecycle import Cluster
    from jupyter_hpcllm.notebook.panel import Panel

    shell = InteractiveShell.instance()
    cluster = Cluster(load_profile("ebi"), transport=FakeTransport())
    rows = []
    for label, delay in (("default debounce (400 ms)", 0.4), ("no debounce", 0.0)):
        started = time.perf_counter()
        panel = Panel(shell, "ebi", clusters=lambda _: cluster, replan_delay=delay)
        opened = time.perf_counter() - started
        panel.settle()
        panel.form.model.value = "Qwen3-8B"
        panel.settle()
        held, shown = [], []
        for i in range(args.changes):
            value = f"{1 + i % 9}:00:00"
            started = time.perf_counter()
            panel.form.text["time"].value = value
            held.append(time.perf_counter() - started)
            while not (panel.view and panel.view.ok and f"up to {value} " in panel.view.cost
                       and panel._plan_revision == panel._revision):
                time.sleep(0.0005)
            shown.append(time.perf_counter() - started)
        panel.close()
        rows.append((label, opened, held, shown))
    cluster.close()
    print(f"| the panel, {args.changes} edits (`bench_panel.py`) | main thread per edit, ms (max) | "
          "edit → plan shown, ms (max) | opening, main thread, ms |")
    print("|---|---|---|---|")
    for label, opened, held, shown in rows:
        print(f"| {label} | {statistics.median(held) * 1000:.2f} ({max(held) * 1000:.2f}) | "
              f"{statistics.median(shown) * 1000:.0f} ({max(shown) * 1000:.0f}) | {opened * 1000:.0f} |")


if __name__ == "__main__":
    main()
