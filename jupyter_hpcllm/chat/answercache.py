"""Answers kept on disk as they arrive, per (model, messages, parameters): a map that was interrupted, or
whose kernel restarted, sends again only what has no answer yet.

One SQLite file (WAL: a reader never blocks the writer), mode 0600 in a 0700 directory: prompts and
answers can be private data. Each answer is committed when it arrives, so at most the requests in flight
are lost to a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["AnswerCache", "answer_key", "default_cache_path"]


def default_cache_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-hpcllm")) / "answers.sqlite3"


def answer_key(model: str, messages: list[dict[str, Any]], parameters: dict[str, Any]) -> str:
    """The same model, messages and parameters (sampling, max tokens, response format, tools) give the
    same key, whatever the order of a dict's keys."""
    text = json.dumps({"model": model, "messages": messages, "parameters": parameters}, sort_keys=True,
                      ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    """get(key) / put(key, answer), answers being JSON-able dicts. Used from one thread at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            with contextlib.suppress(sqlite3.OperationalError):  # WAL where the file system allows it (not all NFS)
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a commit survives the process, not a power cut
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, "
                             "created REAL NOT NULL)")
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"The answer cache {self.path} cannot be used: {error}.",
                              "Give another place (cache='/path/answers.sqlite3'), or run without it (cache=False, "
                              "%%llm --no-cache): an interrupted run then starts over.") from None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                         (key, json.dumps(answer, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
