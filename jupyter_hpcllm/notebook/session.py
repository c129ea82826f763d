"""What a kernel's notebook faces share: the server `%%llm` talks to, its conversation, a background
launch. `%hpcllm up` and the launch panel both adopt a ready server here, so `client` and `%%llm` work
the same whichever started it. One session per IPython shell."""

from __future__ import annotations

import json
import keyword
import logging
import re
import threading
import unicodedata
import weakref
from collections.abc import Callable, Collection
from typing import Any

from ..chat.prompt import Endpoint
from ..errors import AuthenticationError, ConfigError, HpcllmError
from ..lifecycle import LaunchHandle, Server

__all__ = ["NotebookSession", "ask", "attached", "session_for", "variable_problem"]

_log = logging.getLogger(__name__)

# IPython's own names in the namespace: overwriting one breaks the notebook (the output history, `exit`,
# the display hook's `_`). `_N` and `_iN` are the numbered outputs and inputs.
IPYTHON_NAMES = frozenset({"get_ipython", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii",
                           "_oh", "_ih", "_dh", "_sh", "_exit_code"})
# `_N`, `_iN` (numbered outputs and inputs) and `__name__`-style names (`__builtins__`: every later cell
# would fail without it).
_IPYTHON_NUMBERED = re.compile(r"_i?[0-9]+|__\w+__")


class NotebookSession:
    """The notebook's current server (None when `%hpcllm use` points %%llm elsewhere), its endpoint, the
    conversation `%%llm --chat` keeps, and a launch still in progress."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.server: Server | None = None
        self.endpoint: Endpoint | None = None
        self.history: list[dict[str, Any]] = []
        self.launching: LaunchHandle | None = None
        self.warned: str | None = None  # the job whose near time limit was already pointed out
        self.provenance: dict[str, Any] | None = None  # how the last %%llm answer was made
        self.on_stopped: list[Callable[[str], None]] = []  # told of every job a face stops (the panel)
        self._lock = threading.Lock()

    def adopt(self, server: Server, as_name: str) -> str:
        """Make a ready server the default of %%llm and put its client in `as_name`; what to tell."""
        problem = self.variable_problem(as_name)
        if problem:
            raise ConfigError(f"The client variable {as_name!r} {problem}.", "Choose another name, e.g. client.")
        endpoint = Endpoint(server.client(), server.model, f"job {server.job_id}")
        self.server, self.endpoint = server, endpoint
        server.follow_renewals()  # a Renew from the lab sidebar (or another notebook) keeps `client` working
        server.engine_record(wait=False)  # read in the background now: %%llm's provenance, without a wait
        self.shell.user_ns[as_name] = endpoint.client
        return (f"Ready: `{as_name}` talks to {server.model} ({server.engine}, job {server.job_id} on {server.node}); "
                "%%llm uses it.")

    def forget(self, job_id: str) -> None:
        """A face stopped this job: %%llm no longer talks to it, and every face that shows it hears of it."""
        if self.server is not None and self.server.job_id == job_id:
            self.server, self.endpoint = None, None
        for listener in list(self.on_stopped):
            try:
                listener(job_id)
            except Exception:  # one face failing must not keep the others from hearing
                _log.exception("a jupyter-hpcllm face failed to take note of a stopped job")

    def start_launch(self, handle_of: Callable[[], LaunchHandle]) -> LaunchHandle:
        """Run `handle_of()` (which starts a launch) unless another launch of this notebook is still in
        progress: one at a time, so `%hpcllm status` and `%hpcllm down` always reach it."""
        with self._lock:
            if self.launching is not None and not self.launching.done():
                raise HpcllmError(f"A launch is already in progress in this notebook ({self.launching.options.model}).",
                                  "Wait for it, or stop it with `%hpcllm down` (or the panel's Cancel).")
            self.launching = handle = handle_of()
            return handle

    def variable_problem(self, name: str) -> str | None:
        return variable_problem(name, getattr(self.shell, "user_ns_hidden", {}))


_sessions: weakref.WeakKeyDictionary[Any, NotebookSession] = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


def session_for(shell: Any) -> NotebookSession:
    """The session of this IPython shell (made on first use)."""
    with _sessions_lock:
        session = _sessions.get(shell)
        if session is None:
            session = _sessions[shell] = NotebookSession(shell)
        return session


class _JsonText:
    """Shows as its JSON text (a kernel's user_expressions answer is the text/plain of a value)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def attached() -> _JsonText | None:
    """The server this kernel's %%llm talks to, as JSON (job, model, engine, node, profile, seconds left),
    or None: what the JupyterLab status bar asks the kernel, silently, without importing anything."""
    from IPython import get_ipython

    shell = get_ipython()
    with _sessions_lock:
        session = _sessions.get(shell) if shell is not None else None
    server = session.server if session is not None else None
    if server is None or server.closed:
        return None
    return _JsonText(json.dumps({"job_id": server.job_id, "model": server.model, "engine": server.engine,
                                 "node": server.node, "profile": server.profile.name,
                                 "seconds_left": server.seconds_left}))


def variable_problem(name: str, hidden: Collection[str] = ()) -> str | None:
    """Why `name` cannot take a value a face stores (None: it can)."""
    if not name.isidentifier() or unicodedata.normalize("NFKC", name) != name:
        return "is not a Python variable name"
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if name in IPYTHON_NAMES or _IPYTHON_NUMBERED.fullmatch(name) or name in hidden:
        return "is one of Python's or IPython's own names (__builtins__, In, Out, _, _N, _iN, get_ipython, exit, ...)"
    return None


def ask(text: str, echo: bool) -> str:
    """What the login node asks, answered in the notebook: the kernel shows a (password) input under the
    running cell. Only a cell's own thread can ask; a connection made anew in the background (or from a
    widget's button) cannot."""
    if threading.current_thread() is not threading.main_thread():
        raise AuthenticationError(
            f"The login node asks: {text.strip()!r}, which can only be answered while a cell runs.",
            "Run `%hpcllm status` (or any %hpcllm command) in a cell to connect and answer it, then try again.")
    import getpass

    return input(text) if echo else getpass.getpass(text)
