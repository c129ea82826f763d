"""A map's progress: a bar updated in place in a notebook, one line rewritten in a terminal (a line every
ten seconds in a log), and the summary at the end."""

from __future__ import annotations

import html
import sys
import time
from typing import Any

__all__ = ["BatchProgress"]


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class BatchProgress:
    def __init__(self, total: int | None, *, rich: bool | None = None, stream: Any = None,
                 interval: float | None = None) -> None:
        self.total = total
        self.rich = _in_notebook() if rich is None else rich
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.rich or self.tty else 10.0)
        self._shown = 0.0
        self._handle: Any = None
        self._closed = False

    def update(self, status: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._closed or (not force and now - self._shown < self.interval):
            return
        self._shown = now
        if self.rich:
            self._display(self.html(status), status.line())
        elif self.tty:
            self.stream.write("\r\x1b[K" + status.line())
            self.stream.flush()
        else:
            self.stream.write(status.line() + "\n")
            self.stream.flush()

    def close(self, status: Any) -> None:
        if self._closed:
            return
        self.update(status, force=True)
        self._closed = True
        if self.rich:
            self._display(self.html(status) + f"<div>{html.escape(status.summary())}</div>", status.summary())
        else:
            self.stream.write(("\n" if self.tty else "") + status.summary() + "\n")
            self.stream.flush()

    def html(self, status: Any) -> str:
        finished = status.done + status.failed
        share = finished / status.total if status.total else (1.0 if status.ended else 0.0)
        bar = (f'<progress value="{finished}" max="{status.total}" style="width: 24em"></progress> '
               if status.total else "")
        colour = "#b00" if status.failed else "inherit"
        return (f'<div style="font-family: monospace; color: {colour}">{bar}{share:.0%} · '
                f"{html.escape(status.line())}</div>")

    def _display(self, markup: str, text: str) -> None:
        from IPython.display import display

        bundle = {"text/html": markup, "text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self._handle.update(bundle, raw=True)
