"""The notebook faces' costs: import time, and %%llm against the bare openai client.

    python benchmarks/bench_notebook.py [--repeats 7] [--tokens 4000] [--jupyter-ai-python PATH]

1. Import time: `import jupyter_hpcllm` and `%load_ext jupyter_hpcllm` (in a fresh interpreter each
   time, minus the interpreter's own start), beside jupyter-ai's magics (`import jupyter_ai_magics`) when
   a Python that has it is given (its own venv: it brings LangChain). Target ≤ 150 ms.
2. %%llm overhead: a `--tokens` streamed answer from the engine double on 127.0.0.1 (no Slurm, no forward:
   the same server for both), through %%llm in a real InteractiveShell — terminal mode, and notebook mode
   with Markdown re-renders serialized as a kernel would — against a bare `openai` streaming loop.
   Time to the first chunk shown and total time; target ≤ 5 % total overhead.
Prints Markdown tables of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import bench_forward  # noqa: E402  (reuses its engine-double launcher)


def interpreter_ms(python: str, code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def import_times(repeats: int, jupyter_ai_python: str | None) -> list[tuple[str, float]]:
    python = sys.executable
    bare = interpreter_ms(python, "pass", repeats)
    ipython_base = interpreter_ms(python, "from IPython.core.interactiveshell import InteractiveShell; "
                                          "InteractiveShell.instance()", repeats)
    rows = [
        ("import jupyter_hpcllm", interpreter_ms(python, "import jupyter_hpcllm", repeats) - bare),
        ("%load_ext jupyter_hpcllm (beyond starting IPython)", interpreter_ms(
            python, "from IPython.core.interactiveshell import InteractiveShell; "
                    "InteractiveShell.instance().run_line_magic('load_ext', 'jupyter_hpcllm')",
            repeats) - ipython_base),
    ]
    if jupyter_ai_python:
        jai_bare = interpreter_ms(jupyter_ai_python, "pass", repeats)
        rows.append(("import jupyter_ai_magics (jupyter-ai)",
                     interpreter_ms(jupyter_ai_python, "import jupyter_ai_magics", repeats) - jai_bare))
    return rows


class SerializingDisplay:
    """Stands in for ipykernel's display: serializes every Markdown update as the kernel would."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.renders = 0

    def __call__(self, obj: object, display_id: bool = False, raw: bool = False) -> SerializingDisplay:
        self.update(obj, raw=raw)
        return self

    def update(self, obj: object, raw: bool = False) -> None:
        # The renderer sends a raw MIME bundle (Markdown plus the answer as text/plain).
        json.dumps(obj if raw else {"text/markdown": obj._repr_markdown_()})  # type: ignore[attr-defined]
        self.renders += 1
        if self.first is None:
            self.first = time.perf_counter()


def bench_llm(port: int, tokens: int, repeats: int) -> dict[str, list[float]]:
    import openai
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_hpcllm.notebook import render as llmcell

    url = f"http://127.0.0.1:{port}/v1"
    os.environ["BENCH_KEY"] = bench_forward.KEY
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_hpcllm")
    with contextlib.redirect_stdout(io.StringIO()):
        shell.run_line_magic("hpcllm", f"use {url} --key-env BENCH_KEY --model {bench_forward.MODEL}")
    prompt = f"/bench {tokens}"
    client = openai.OpenAI(base_url=url, api_key=bench_forward.KEY)
    results: dict[str, list[float]] = {}

    def record(name: str, first: float, total: float) -> None:
        results.setdefault(f"{name} first", []).append(first * 1000)
        results.setdefault(f"{name} total", []).append(total * 1000)

    for _ in range(repeats):
        # bare openai client
        started = time.perf_counter()
        first = None
        text = []
        for chunk in client.chat.completions.create(model=bench_forward.MODEL, stream=True,
                                                    messages=[{"role": "user", "content": prompt}]):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                text.append(chunk.choices[0].delta.content)
        record("bare openai client", (first or 0) - started, time.perf_counter() - started)

        # %%llm in a terminal: the text is written as it arrives
        sink = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(sink):
            shell.run_cell_magic("llm", "", prompt)
        total = time.perf_counter() - started
        record("%%llm, terminal", total / max(1, len(sink.getvalue().split())), total)  # first: not observable

        # %%llm in a notebook: Markdown display updated in place
        display = SerializingDisplay()
        original = llmcell.Renderer.__init__

        def rich_init(self: llmcell.Renderer, rich: bool, original: Any = original, display: Any = display,
                      **kwargs: object) -> None:
            original(self, True, **{**kwargs, "display": display})

        llmcell.Renderer.__init__ = rich_init  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            shell.run_cell_magic("llm", "", prompt)
            record("%%llm, notebook (Markdown)", (display.first or 0) - started, time.perf_counter() - started)
            results.setdefault("renders", []).append(display.renders)
        finally:
            llmcell.Renderer.__init__ = original  # type: ignore[method-assign]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--jupyter-ai-python", help="a python with jupyter-ai-magics installed")
    args = parser.parse_args()

    print(f"| import (median of {args.repeats} fresh interpreters) | ms |")
    print("|---|---|")
    for label, ms in import_times(args.repeats, args.jupyter_ai_python):
        print(f"| {label} | {ms:.0f} |")

    with tempfile.TemporaryDirectory() as workdir:
        double, port = bench_forward.start_double(Path(workdir))
        try:
            results = bench_llm(port, args.tokens, args.repeats)
        finally:
            double.terminate()
    median = {k: statistics.median(v) for k, v in results.items()}
    bare = median["bare openai client total"]
    print(f"\n| {args.tokens}-token streamed answer ({args.repeats} runs, medians) | first chunk shown | total | "
          "overhead vs bare |")
    print("|---|---|---|---|")
    print(f"| bare openai client | {median['bare openai client first']:.1f} ms | {bare:.0f} ms | — |")
    for name in ("%%llm, terminal", "%%llm, notebook (Markdown)"):
        total = median[f"{name} total"]
        first = "—" if "terminal" in name else f"{median[f'{name} first']:.1f} ms"
        print(f"| {name} | {first} | {total:.0f} ms | {100 * (total - bare) / bare:+.1f} % |")
    print(f"\nMarkdown re-renders per answer (median): {median['renders']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
