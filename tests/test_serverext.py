"""The server extension's REST endpoints in a real Jupyter server (pytest-jupyter's `jp_fetch`), over the
shipped FakeTransport: every handler, errors as HTTP statuses with one-paragraph messages, and every route
refusing a request without a token."""

from __future__ import annotations

import json
import re
import time

import pytest
from fake_clusters import recording, shared_clusters
from tornado.httpclient import HTTPClientError

from jupyter_hpcllm.edge.fake import FakeTransport
from jupyter_hpcllm.serverext import manager as manager_module
from jupyter_hpcllm.serverext import models as api
from jupyter_hpcllm.serverext.handlers import ROUTES

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config(request):
    """The extension enabled. A test marked `trusting_server` runs on a server configured to let
    unauthenticated requests through (`allow_unauthenticated_access`): then only our own handlers'
    authentication stands between a request without a token and the cluster."""
    trusting = request.node.get_closest_marker("trusting_server") is not None
    return {"ServerApp": {"jpserver_extensions": {"jupyter_hpcllm": True},
                          "allow_unauthenticated_access": trusting}}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('[profiles.other]\npreset = "ebi"\n')
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    transport = recording(FakeTransport(pending_probes=2))
    cluster_for, clusters = shared_clusters(transport)
    monkeypatch.setattr(manager_module, "cluster_for", cluster_for)
    yield transport
    for cluster in clusters.values():
        cluster.close()


async def fetch(jp_fetch, *parts, method="GET", body=None, **params):
    """(status, JSON) of a request with the server's token; errors are answers too."""
    try:
        response = await jp_fetch(*parts, method=method, params=params,
                                  body=None if body is None else json.dumps(body),
                                  allow_nonstandard_methods=True)
    except HTTPClientError as error:
        return error.code, json.loads(error.response.body) if error.response is not None else {}
    return response.code, json.loads(response.body)


async def until(jp_fetch, launch_id, done, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        status, progress = await fetch(jp_fetch, "hpcllm", "launches", launch_id)
        assert status == 200, progress
        if done(progress):
            return progress
        assert time.monotonic() < deadline, progress
        await _sleep(0.02)


async def _sleep(seconds):
    import asyncio

    await asyncio.sleep(seconds)


async def test_profiles_models_and_plans(fake, jp_fetch):
    assert await fetch(jp_fetch, "hpcllm", "profiles") == (200, {"profiles": ["ebi", "other"], "default": "ebi"})
    status, ebi = await fetch(jp_fetch, "hpcllm", "profiles", "ebi")
    assert status == 200 and [g["name"] for g in ebi["gpu_types"]] == ["a100", "h200"]
    assert ebi["gpu_types"][0]["counts"] == [1, 2, 3, 4] and ebi["defaults"]["time"] == "4:00:00"
    status, models = await fetch(jp_fetch, "hpcllm", "models", profile="ebi")
    assert status == 200 and {m["name"] for m in models} == {"Qwen3-8B", "gpt-oss-20b"}
    qwen = next(m for m in models if m["name"] == "Qwen3-8B")
    assert qwen["family"] == "qwen3" and qwen["size_gb"] > 0 and qwen["suggestion"].startswith("1 × a100")
    status, plan = await fetch(jp_fetch, "hpcllm", "plans", method="POST",
                               body={"profile": "ebi", "options": {"model": "Qwen3-8B", "time": "2:00:00"}})
    assert status == 200 and plan["ok"] and plan["headline"].endswith("1 × a100, tensor-parallel 1")
    assert plan["gpu_hours"] == 2.0 and "#SBATCH --time=2:00:00" in plan["script"]
    # The sidebar shows each choice with its source: the engine auto picked, the parsers and what the image said.
    assert ebi["default_engine"] == "auto" and ebi["engines"] == ["vllm", "sglang"]
    assert any(d.startswith("engine: vllm (auto: the vllm image") for d in plan["details"]), plan["details"]
    assert "parsers: tool-call parser hermes (qwen3 in the family table)" in plan["details"]
    assert any(d.startswith("image: vllm image") for d in plan["details"])
    status, replicas = await fetch(jp_fetch, "hpcllm", "plans", method="POST",
                                   body={"profile": "ebi", "options": {"model": "Qwen3-8B", "gpus": 2, "replicas": 2}})
    assert replicas["ok"] and replicas["headline"].endswith("tensor-parallel 1 (2 replicas)"), replicas
    assert set(plan) == set(api.PlanModel.__annotations__) and set(ebi) == set(api.ProfileModel.__annotations__)
    status, refused = await fetch(jp_fetch, "hpcllm", "plans", method="POST",
                                  body={"profile": "ebi", "options": {"model": "Qwen3-8B", "gpus": 9}})
    assert status == 200 and not refused["ok"] and refused["field"] == "gpus" and "allows 1–4" in refused["problem"]


async def test_launch_follow_metrics_logs_and_stop(fake, jp_fetch):
    status, launch = await fetch(jp_fetch, "hpcllm", "servers", method="POST",
                                 body={"profile": "ebi", "options": {"model": "Qwen3-8B"}})
    assert status == 202 and re.fullmatch(r"[0-9a-f]{16}", launch["id"]), launch
    ready = await until(jp_fetch, launch["id"], lambda p: p["done"])
    assert ready["stage"] == "ready" and ready["error"] is None and ready["node"] == "gpu01"
    job = ready["job_id"]
    status, servers = await fetch(jp_fetch, "hpcllm", "servers", profile="ebi")
    assert status == 200 and [(s["job_id"], s["state"], s["model"], s["gpus"]) for s in servers] == \
        [(job, "RUNNING", "Qwen3-8B", "1 × a100")]
    status, server = await fetch(jp_fetch, "hpcllm", "servers", job, profile="ebi")
    assert status == 200 and server["state"] == "RUNNING" and server["walltime_warning"] is None
    assert set(server) == set(api.ServerModel.__annotations__)  # the model models.ts mirrors
    assert set(ready) == set(api.LaunchModel.__annotations__)
    status, metrics = await fetch(jp_fetch, "hpcllm", "servers", job, "metrics", profile="ebi")
    assert status == 200 and metrics["running"] == 0 and metrics["kv_cache"] == 0.25
    assert ["requests", "0 running, 0 waiting"] in metrics["rows"]
    assert set(metrics) == set(api.MetricsModel.__annotations__)
    status, logs = await fetch(jp_fetch, "hpcllm", "servers", job, "logs", profile="ebi", lines="5")
    assert status == 200 and logs["job_id"] == job and isinstance(logs["text"], str)
    # The sidebar holds no lease: a server nobody attaches to can still end itself when idle.
    deadline = time.monotonic() + 5
    while fake.jobs[job].run.leases and time.monotonic() < deadline:  # given back once ready
        await _sleep(0.02)
    assert fake.jobs[job].run.leases == {}
    status, stopped = await fetch(jp_fetch, "hpcllm", "servers", job, method="DELETE", profile="ebi")
    assert status == 200 and stopped["state"] == "CANCELLED" and "its GPUs are free" in stopped["message"]
    assert await fetch(jp_fetch, "hpcllm", "servers", profile="ebi") == (200, [])
    assert "MainThread" not in fake.threads  # no SSH on the server's event loop


async def test_cancel_a_launch_while_pending(fake, jp_fetch):
    fake.pending_probes = 10_000
    status, launch = await fetch(jp_fetch, "hpcllm", "servers", method="POST",
                                 body={"options": {"model": "gpt-oss-20b"}})
    pending = await until(jp_fetch, launch["id"], lambda p: p["stage"] == "pending")
    assert pending["reason"] == "Priority"
    status, cancelled = await fetch(jp_fetch, "hpcllm", "launches", launch["id"], method="DELETE")
    assert status == 200 and cancelled["stage"] == "cancelled" and "its GPUs are free" in cancelled["error"]
    assert fake.jobs[pending["job_id"]].state == "CANCELLED"


@pytest.mark.parametrize(("parts", "method", "body", "params", "code", "says"), [
    (("models",), "GET", None, {"profile": "nope"}, 400, "Unknown profile 'nope'"),
    (("plans",), "POST", {"options": "x"}, {}, 400, '"options"'),
    (("servers",), "POST", {"options": {"model": "Qwen3-8B", "time": "99:99"}}, {}, 422, "not a Slurm time limit"),
    (("servers", "4242"), "GET", None, {}, 404, "4242"),
    (("servers", "4242", "logs"), "GET", None, {"lines": "many"}, 400, "whole number"),
    (("launches", "0123456789abcdef"), "GET", None, {}, 404, "No launch"),
])
async def test_errors_are_statuses_with_one_paragraph(fake, jp_fetch, parts, method, body, params, code, says):
    status, answer = await fetch(jp_fetch, "hpcllm", *parts, method=method, body=body, **params)
    assert status == code and says in answer["error"], answer
    assert set(answer) == set(api.ErrorModel.__annotations__)
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    if says == "not a Slurm time limit":
        assert answer["field"] == "time"


async def test_a_bad_body_is_400(fake, jp_fetch):
    try:
        await jp_fetch("hpcllm", "plans", method="POST", body="{not json")
    except HTTPClientError as error:
        assert error.code == 400 and "not JSON" in json.loads(error.response.body)["error"]
    else:
        raise AssertionError("a body that is not JSON was taken")


def _example_path(pattern: str) -> str:
    """A path the route matches (its named groups filled in)."""
    examples = {"job": "1000", "name": "ebi", "launch": "0123456789abcdef"}
    path, groups = pattern, re.compile(r"\(\?P<(\w+)>")
    while (found := groups.search(path)) is not None:  # the group's end: its parentheses balanced
        depth, end = 0, found.start()
        for end in range(found.start(), len(path)):
            depth += {"(": 1, ")": -1}.get(path[end], 0)
            if depth == 0:
                break
        path = path[:found.start()] + examples[found.group(1)] + path[end + 1:]
    assert re.fullmatch(pattern, path), (pattern, path)
    return path


@pytest.mark.trusting_server
async def test_every_route_refuses_a_request_without_a_token(fake, jp_fetch, http_server_client, jp_base_url):
    """Walks every route the extension registers and every method its handler has, on a server that would
    let unauthenticated requests through: a handler added without authentication fails here."""
    seen = 0
    for pattern, handler in ROUTES:
        for method in ("GET", "POST", "DELETE", "PUT", "PATCH"):
            if getattr(handler, method.lower()) is getattr(handler.__mro__[-2], method.lower(), None):
                continue  # tornado's default: 405 for anyone
            url = jp_base_url.rstrip("/") + "/" + _example_path(pattern)
            response = await http_server_client.fetch(url, method=method, raise_error=False,
                                                      body=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                                      allow_nonstandard_methods=True)
            assert response.code == 403, (method, url, response.code)
            seen += 1
    assert seen >= 11  # every handler's methods were tried
    assert not [j for j in fake.jobs]  # and nothing ran


def test_jupyter_server_finds_every_handler_method_authenticated(jp_serverapp):
    """jupyter_server's own check (it warns about extension endpoints without @web.authenticated)."""
    app = jp_serverapp.web_app
    undecorated = [method for pattern, handler in ROUTES for method in app._check_handler_auth(pattern, handler)]
    assert undecorated == []


# --- what a review found -----------------------------------------------------------------------------------


async def test_watching_metrics_is_never_use_and_attaches_once(fake, jp_fetch, jp_serverapp):
    import asyncio

    _, launch = await fetch(jp_fetch, "hpcllm", "servers", method="POST", body={"options": {"model": "Qwen3-8B"}})
    job = (await until(jp_fetch, launch["id"], lambda p: p["done"]))["job_id"]
    run = fake.jobs[job].run
    used, forwards = run.used, len(fake.forwards)
    answers = await asyncio.gather(*(fetch(jp_fetch, "hpcllm", "servers", job, "metrics") for _ in range(6)))
    assert all(status == 200 for status, _ in answers), answers
    assert len(fake.forwards) == forwards + 1  # six tabs at once: one forward
    assert run.used == used  # neither the attach nor the readings reached the engine as use
    manager = jp_serverapp.web_app.settings["hpcllm_manager"]
    manager_module.WATCH_SECONDS = -1.0
    try:
        manager._sweep()  # unused for long: its forward is closed
    finally:
        manager_module.WATCH_SECONDS = 600.0
    assert fake.forwards[forwards].closed and manager._watched == {}


async def test_metrics_of_a_job_not_running_yet_answer_at_once(fake, jp_fetch):
    fake.pending_probes = 10_000
    _, launch = await fetch(jp_fetch, "hpcllm", "servers", method="POST", body={"options": {"model": "Qwen3-8B"}})
    job = (await until(jp_fetch, launch["id"], lambda p: p["stage"] == "pending"))["job_id"]
    started = time.monotonic()
    status, answer = await fetch(jp_fetch, "hpcllm", "servers", job, "metrics")
    assert status == 504 and "PENDING" in answer["error"] and time.monotonic() - started < 3
    await fetch(jp_fetch, "hpcllm", "launches", launch["id"], method="DELETE")


async def test_a_line_count_that_is_not_ascii_digits_is_400(fake, jp_fetch):
    status, answer = await fetch(jp_fetch, "hpcllm", "servers", "1000", "logs", lines="²")
    assert status == 400 and "whole number" in answer["error"]


async def test_options_and_parser_names_for_the_form(fake, jp_fetch):
    status, options = await fetch(jp_fetch, "hpcllm", "options")
    assert status == 200 and options[0]["name"] == "model" and options[0]["kind"] == "text"
    by_name = {option["name"]: option for option in options}
    assert by_name["gpus"]["kind"] == "integer" and by_name["gpus"]["minimum"] == 1
    assert by_name["engine"]["choices"] == ["vllm", "sglang", "auto"] and by_name["engine_args"]["kind"] == "arguments"
    assert by_name["renew"]["kind"] == "boolean" and by_name["renew"]["group"] == "launch"
    assert by_name["idle_timeout"]["kind"] == "number" and all(set(o) == set(api.OptionModel.__annotations__)
                                                             for o in options)
    status, names = await fetch(jp_fetch, "hpcllm", "parsers", profile="ebi", engine="sglang")
    assert status == 200 and names["engine"] == "sglang" and names["problem"] is None
    assert "qwen25" in names["tool"] and "qwen3" in names["reasoning"]
    status, auto = await fetch(jp_fetch, "hpcllm", "parsers", profile="ebi", engine="auto")
    assert status == 200 and auto["engine"] == "auto" and "hermes" in auto["tool"]  # the default engine's image
    status, wrong = await fetch(jp_fetch, "hpcllm", "parsers", profile="ebi", engine="ollama")
    assert status == 422 and wrong["field"] == "engine" and "vllm, sglang" in wrong["error"]
    fake.drop("stat -L", times=10)  # the image cannot be asked: why, and no names (automatic still works)
    status, unknown = await fetch(jp_fetch, "hpcllm", "parsers", profile="ebi", engine="vllm")
    assert status == 200 and unknown["tool"] == [] and unknown["problem"], unknown


async def test_renew_near_the_time_limit_moves_to_a_successor(fake, jp_fetch, monkeypatch):
    monkeypatch.setattr("jupyter_hpcllm.lifecycle.cluster.RENEW_GRACE_SECONDS", 0.05)
    status, launch = await fetch(jp_fetch, "hpcllm", "servers", method="POST",
                                 body={"profile": "ebi", "options": {"model": "Qwen3-8B", "time": "1:00:00"}})
    old = (await until(jp_fetch, launch["id"], lambda p: p["done"]))["job_id"]
    status, refused = await fetch(jp_fetch, "hpcllm", "servers", old, "renew", method="POST", profile="ebi")
    assert status == 400 and "not near its time limit" in refused["error"] and "last 10 minutes" in refused["error"]
    fake.jobs[old].sbatch["time"] = "0:05:00"  # now five minutes are left
    status, renewal = await fetch(jp_fetch, "hpcllm", "servers", old, "renew", method="POST", profile="ebi")
    assert status == 202 and renewal["model"] == "Qwen3-8B", renewal
    done = await until(jp_fetch, renewal["id"], lambda p: p["done"])
    assert done["stage"] == "ready" and done["error"] is None and done["job_id"] not in (None, old), done
    new = done["job_id"]
    assert fake.jobs[new].sbatch["time"] == "1:00:00"  # the same plan, from the job's own script copy
    status, servers = await fetch(jp_fetch, "hpcllm", "servers", profile="ebi")
    assert [s["job_id"] for s in servers] == [new]  # the old job stopped after the grace
    status, unknown = await fetch(jp_fetch, "hpcllm", "servers", "999", "renew", method="POST", profile="ebi")
    assert status == 404 and "999" in unknown["error"]
