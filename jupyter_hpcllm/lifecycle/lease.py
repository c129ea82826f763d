"""A client's lease on a job: while a kernel, the CLI's forward or the lab sidebar lives, it renews a lease
with the job's relay, so the job does not end itself as idle. A client that dies (even by SIGKILL) stops
renewing; its lease runs out, and the job ends itself once nothing has used it for its idle timeout.

The renewals go through the client's own forward to the relay (``POST /hpcllm/lease`` with the job's key).
The relay answers how often to renew (a quarter of the idle timeout, at most a minute); a lease lasts
three such periods, so one lost renewal changes nothing.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

__all__ = ["Lease", "relay_request"]

_log = logging.getLogger(__name__)
_FIRST_TTL = 180.0  # seconds, until the relay has said how often to renew
_TIMEOUT = 10.0


class Lease:
    """Renews a lease on one job from a thread of its own until ``release()``."""

    def __init__(self, address: Callable[[], str], api_key: str, *, client: str | None = None) -> None:
        self._address = address  # the forward's local address now (it stays the same across a renew)
        self._api_key = api_key
        self.client = client or f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.renew_every: float = 60.0
        self.idle_timeout: float | None = None  # seconds, as the relay said (0: never ends itself)
        self.renewals = 0
        self.unsupported = False  # the job has no relay (started by an older jupyter-hpcllm)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcllm-lease", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def renew(self) -> bool:
        """One renewal now; True if the relay took it."""
        ttl = _FIRST_TTL if self.renewals == 0 else 3 * self.renew_every
        answer = self._request("POST", "/hpcllm/lease", {"client": self.client, "ttl": ttl})
        if answer is None:
            return False
        self.renewals += 1
        try:
            self.renew_every = max(0.5, float(str(answer.get("renew_every", self.renew_every))))
            self.idle_timeout = float(str(answer["idle_timeout"])) if "idle_timeout" in answer else None
        except (TypeError, ValueError):
            pass
        return True

    def release(self) -> None:
        """Stop renewing, and give the lease back (the job may then end itself once idle)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(_TIMEOUT + 1)
        if self.renewals and not self.unsupported:
            self._request("DELETE", f"/hpcllm/lease?client={self.client}", None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.renew()
            if self.unsupported:
                return
            # After a failure (the forward reconnecting, the job moving) try again sooner.
            self._stop.wait(self.renew_every if self.renewals else min(5.0, self.renew_every))

    def _request(self, method: str, path: str, body: dict[str, object] | None) -> dict[str, object] | None:
        try:
            status, answer = relay_request(self._address(), self._api_key, method, path, body)
        except (OSError, http.client.HTTPException, ValueError) as error:
            _log.debug("lease renewal failed: %s", error)
            return None
        if status == 404:
            self.unsupported = True  # no relay there (a job of an older jupyter-hpcllm): nothing to renew
        return answer if status == 200 else None


def relay_request(address: str, api_key: str, method: str, path: str, body: dict[str, object] | None = None,
                  timeout: float = _TIMEOUT) -> tuple[int, dict[str, object]]:
    """One request to the job's relay's own routes (/hpcllm/...) through a forward's local address: (HTTP
    status, the JSON answer). Raises OSError, HTTPException or ValueError when there is no answer."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        parsed = json.loads(raw or b"{}") if response.headers.get_content_type() == "application/json" else {}
        return response.status, parsed if isinstance(parsed, dict) else {}
    finally:
        connection.close()
