"""The REST handlers under /hpcllm/: thin, authenticated, JSON in and out. Each runs the manager's blocking
work in its thread pool and maps errors to HTTP statuses with the same one-paragraph messages as every
other face (`errors.http_status`)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import ConfigError, HpcllmError, http_status
from .manager import LabManager

__all__ = ["ROUTES"]

_log = logging.getLogger(__name__)
_JOB = r"(?P<job>\d+(?:_\d+)?)"


class _Handler(APIHandler):
    auth_resource = "hpcllm"  # jupyter_server's authorizer decides who may read, write or execute

    @property
    def manager(self) -> LabManager:
        return self.settings["hpcllm_manager"]  # type: ignore[no-any-return]

    @property
    def profile(self) -> str | None:
        return self.get_query_argument("profile", None) or None

    def body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise ConfigError("The request body is not JSON.") from None
        if not isinstance(body, dict):
            raise ConfigError("The request body must be a JSON object.")
        return body

    async def answer(self, work: Callable[..., Any], *args: Any, status: int = 200) -> None:
        """Run `work(*args)` in the manager's pool; its JSON, or the error as {"error", "field"}."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.manager.pool,
                                                                      functools.partial(work, *args))
        except HpcllmError as error:
            self.set_status(http_status(error))
            self.finish(json.dumps({"error": str(error), "field": getattr(error, "field", None)}))
            return
        except Exception as error:  # a bug of ours: say what, as one paragraph; the log has the traceback
            _log.exception("jupyter-hpcllm: %s %s failed", self.request.method, self.request.path)
            self.set_status(500)
            self.finish(json.dumps({"error": f"Unexpected error: {type(error).__name__}: {error}", "field": None}))
            return
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))


class ProfilesHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, name: str | None = None) -> None:
        if name:
            await self.answer(self.manager.profile, name)
        else:
            await self.answer(self.manager.profiles)


class ModelsHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(self.manager.models, self.profile)


class PlansHandler(_Handler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.manager.plan(self.body()))


class ServersHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(self.manager.servers, self.profile)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.answer(lambda: self.manager.launch(self.body()), status=202)


class ServerHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, job: str) -> None:
        await self.answer(self.manager.server, self.profile, job)

    @web.authenticated
    @authorized
    async def delete(self, job: str) -> None:
        await self.answer(self.manager.stop, self.profile, job)


class RenewHandler(_Handler):
    @web.authenticated
    @authorized
    async def post(self, job: str) -> None:
        await self.answer(self.manager.renew, self.profile, job, status=202)


class OptionsHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(self.manager.options)


class ParsersHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(self.manager.parsers, self.profile, self.get_query_argument("engine", None) or None)


class LogsHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, job: str) -> None:
        lines = self.get_query_argument("lines", "100")
        if not re.fullmatch(r"[0-9]{1,6}", lines):
            self.set_status(400)
            self.finish(json.dumps({"error": f"lines must be a whole number, not {lines!r}.", "field": None}))
            return
        await self.answer(self.manager.logs, self.profile, job, int(lines))


class MetricsHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, job: str) -> None:
        await self.answer(self.manager.metrics, self.profile, job)


class LaunchHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, launch: str) -> None:
        await self.answer(self.manager.progress, launch)

    @web.authenticated
    @authorized
    async def delete(self, launch: str) -> None:
        await self.answer(self.manager.cancel_launch, launch)


# (path under the base URL, handler): every route of the extension, and the tests' list of what must
# refuse a request without a token.
ROUTES: list[tuple[str, type[_Handler]]] = [
    (r"hpcllm/profiles", ProfilesHandler),
    (r"hpcllm/profiles/(?P<name>[^/]+)", ProfilesHandler),
    (r"hpcllm/options", OptionsHandler),
    (r"hpcllm/parsers", ParsersHandler),
    (r"hpcllm/models", ModelsHandler),
    (r"hpcllm/plans", PlansHandler),
    (r"hpcllm/servers", ServersHandler),
    (rf"hpcllm/servers/{_JOB}", ServerHandler),
    (rf"hpcllm/servers/{_JOB}/renew", RenewHandler),
    (rf"hpcllm/servers/{_JOB}/logs", LogsHandler),
    (rf"hpcllm/servers/{_JOB}/metrics", MetricsHandler),
    (r"hpcllm/launches/(?P<launch>[0-9a-f]{16})", LaunchHandler),
]
