"""No open door, no orphaned GPU, on the local cluster: every route of the engine needs the job's key
(another Unix user tries them all), the key stays out of Slurm's output even under `set -x`, one job per
plan however many launch it at once, the job ends itself when idle (a lease keeps it while a client
lives, even one killed with SIGKILL only for the idle timeout), a successor takes over before the
walltime, 64 streams through one forward, and no input text ever runs as shell."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_hpcllm.errors import HpcllmError, SubmitError
from jupyter_hpcllm.lifecycle import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]

NOBODY = pwd.getpwnam("nobody")
ROUTES = [  # every route vLLM serves (the double serves them as vLLM does: most without the key)
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/invocations"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/pooling"),
    ("POST", "/score"), ("POST", "/rerank"), ("POST", "/classify"), ("GET", "/metrics"), ("GET", "/version"),
    ("GET", "/ping"), ("POST", "/ping"), ("GET", "/load"), ("GET", "/docs"), ("GET", "/openapi.json"),
    ("GET", "/hpcllm/status"), ("POST", "/hpcllm/lease"), ("DELETE", "/hpcllm/lease?client=x"),
    ("GET", "/health/../invocations"), ("GET", "//invocations"), ("OPTIONS", "/v1/models"),
]
CHAT = {"model": "MODEL", "messages": [{"role": "user", "content": "whose GPUs?"}], "prompt": "p",
        "text": "t", "tokens": [1, 2], "input": "i", "query": "q", "documents": ["d"]}

# Run as another Unix user: try every route with no key, a wrong key and a malformed header; print statuses.
TRY_ROUTES = textwrap.dedent('''
    import http.client, json, sys
    host, port, routes, body = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    seen = {}
    for method, path in routes:
        for label, headers in (("none", {}), ("wrong", {"Authorization": "Bearer " + "0" * 64}),
                               ("basic", {"Authorization": "Basic eDp4"})):
            connection = http.client.HTTPConnection(host, port, timeout=10)
            try:
                connection.request(method, path, body=body if method == "POST" else None,
                                   headers={"Content-Type": "application/json", **headers})
                response = connection.getresponse()
                seen[f"{label} {method} {path}"] = [response.status, response.read(300).decode(errors="replace")]
            except Exception as error:
                seen[f"{label} {method} {path}"] = [0, repr(error)]
            finally:
                connection.close()
    print(json.dumps(seen))
''')


# Prints the HTTP status of one request (what `curl -w %{http_code}` would; curl is not on every machine).
STATUS_OF = textwrap.dedent('''
    import sys, urllib.error, urllib.request
    method, url, body = sys.argv[1], sys.argv[2], (sys.argv[3].encode() if len(sys.argv) > 3 else None)
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        status = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as error:
        status = error.code
    print(status, end="")
''')


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=120, cwd="/")


def _engine_port(transport, job_id: str) -> int:
    """The engine's own port, from the relay's command line (the job's owner and root can see it)."""
    args = transport.run("ps -eo args", check=False).stdout
    ports = {int(port) for line in args.splitlines() if f"/.hpcllm/jobs/{job_id} " in line
             for port in re.findall(r"--engine-port (\d+)", line)}
    assert len(ports) == 1, args
    return ports.pop()


def test_every_route_needs_the_key_even_for_another_user_on_the_cluster(profile_with, cluster):
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120, **{})
    try:
        # The double really has vLLM's open routes: straight to the engine, /invocations needs no key.
        engine_port = _engine_port(cluster.transport, server.job_id)
        listening = cluster.transport.run(f"ss -Hltn 'sport = :{engine_port}'").stdout
        assert listening.split()[3] == f"127.0.0.1:{engine_port}", listening  # loopback only: not other nodes
        body = json.dumps({**CHAT, "model": server.model})
        direct = subprocess.run([sys.executable, "-c", STATUS_OF, "POST", f"http://127.0.0.1:{engine_port}/invocations",
                                 body], capture_output=True, text=True)
        assert direct.stdout == "200", "the double must answer /invocations without a key, as vLLM does"
        # Another user, at the address every node reaches (the relay): refused on every route but /health.
        tried = _as_nobody(sys.executable, "-c", TRY_ROUTES, server.node, str(server.port), json.dumps(ROUTES), body)
        assert tried.returncode == 0, tried.stderr
        seen = json.loads(tried.stdout)
        assert len(seen) == 3 * len(ROUTES)
        let_through = {what: answer for what, answer in seen.items() if answer[0] != 401}
        assert not let_through, let_through
        health = _as_nobody("/usr/bin/python3", "-c", STATUS_OF, "GET", f"http://{server.node}:{server.port}/health")
        assert health.stdout == "200"  # the one liveness check
        # Nor can they read the key, or anything of the job's.
        job_dir = f"/home/hpcuser/.hpcllm/jobs/{server.job_id}"
        for path in (f"{job_dir}/key", f"{job_dir}/server.json", f"{job_dir}/engine.log"):
            assert _as_nobody("cat", path).returncode != 0
        # With the key, through the forward, it all works.
        answer = server.client(max_retries=0).chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "mine"}])
        assert answer.choices[0].message.content == "Echo: mine"
    finally:
        server.down()


def test_the_key_stays_out_of_slurms_output_under_set_x(profile_with):
    profile = replace(profile_with(delay=0.5), prologue="set -x\nexport TRACED_PROLOGUE=1")
    with Cluster(profile) as cluster:
        server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120)
        try:
            out = cluster.transport.run(f"cat .hpcllm/jobs/slurm-{server.job_id}.out").stdout
            assert "TRACED_PROLOGUE" in out  # the trace was on
            files = cluster.transport.run(f"cat .hpcllm/jobs/{server.job_id}/engine.log "
                                          f".hpcllm/jobs/{server.job_id}/activity.json").stdout
            assert server.api_key not in out + files
        finally:
            server.down()


def test_four_launches_of_one_plan_at_once_make_one_job(profile_with):
    profile = profile_with(delay=0.5)
    clusters = [Cluster(profile).connect() for _ in range(4)]  # four notebooks, four connections
    barrier = threading.Barrier(4)
    servers: list[object] = [None] * 4

    def launch(index: int) -> None:
        barrier.wait()
        try:
            servers[index] = clusters[index].up("Qwen3-8B", engine="vllm", gpus=1, timeout=120)
        except BaseException as error:  # reported below
            servers[index] = error

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert all(not isinstance(server, BaseException) for server in servers), servers
        assert len({server.job_id for server in servers}) == 1, [server.job_id for server in servers]
    finally:
        for server in servers:
            if server is not None and not isinstance(server, BaseException):
                server.close()
        if servers[0] is not None and not isinstance(servers[0], BaseException):
            clusters[0].cancel(servers[0].job_id)
        for made in clusters:
            made.close()


def _wait_until_gone(cluster: Cluster, job_id: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not cluster.status(job_id).state.is_active:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still holds its allocation after {seconds} s")


def test_an_idle_job_ends_itself(profile_with, cluster):
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120, idle_timeout=0.1)  # 6 s
    job = server.job_id
    answer = server.client(max_retries=0).chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "once"}])
    assert answer.choices[0].message.content == "Echo: once"
    idle = cluster.status(job).idle or ""
    assert "ends itself in" in idle or "kept by 1 client" in idle, idle
    server.close()  # the lease is given back: nothing holds the job now
    took = _wait_until_gone(cluster, job, 30)
    assert took < 15
    info = cluster.status(job)
    assert info.ended_idle and info.state.value == "COMPLETED", info
    ended = json.loads(cluster.transport.run(f"cat .hpcllm/jobs/{job}/idle_exit").stdout)
    assert ended["idle_seconds"] >= 6


def test_a_lease_keeps_the_job_and_a_killed_kernel_frees_it(profile_with, cluster, profile, tmp_path: Path):
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120, idle_timeout=0.2)  # 12 s
    job = server.job_id
    server.close()
    # A kernel attaches (its Server renews a lease), then dies by SIGKILL: nothing gives the lease back.
    kernel = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time, jupyter_hpcllm as hpc
            server = hpc.attach({job!r}, profile="testcluster")
            print("attached", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "HPCLLM_CONFIG": os.environ["HPCLLM_CONFIG"]})
    try:
        assert kernel.stdout is not None and kernel.stdout.readline().strip() == "attached"
        time.sleep(20)  # longer than the idle timeout: the lease keeps it
        info = cluster.status(job)
        assert info.state.value == "RUNNING" and "kept by 1 client" in (info.idle or ""), info
    finally:
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(10)
    took = _wait_until_gone(cluster, job, 60)
    assert took < 12 + 3 * 3 + 5  # the idle timeout, once the lease (three renewal periods) has run out
    assert cluster.status(job).ended_idle


def test_renew_hands_the_address_and_key_to_a_successor(profile_with, cluster):
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120, time="10")
    client = server.client(max_retries=1)
    old, url, key = server.job_id, server.base_url, server.api_key
    assert server.seconds_left is not None and 0 < server.seconds_left <= 600
    assert server.walltime_warning(threshold_minutes=11) is not None
    try:
        cluster.renew(server, grace=0.5)
        assert server.job_id != old and server.base_url == url and server.api_key == key
        answer = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "moved"}])
        assert answer.choices[0].message.content == "Echo: moved"
        assert _wait_until_gone(cluster, old, 30) < 30
    finally:
        server.down()


def test_slurm_refuses_a_user_raising_the_time_limit_and_says_what_to_do(cluster):
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120)
    try:
        with pytest.raises(SubmitError, match="refused to raise the time limit") as refused:
            cluster.extend(server.job_id, 30)
        assert f"hpcllm renew {server.job_id}" in refused.value.hint
    finally:
        server.down()


def test_64_streams_through_one_forward_for_10_s(profile_with):
    profile = profile_with(delay=0.5, token_delay=0.002)
    with Cluster(profile) as cluster:
        server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=120)
        errors: list[str] = []
        done = [0] * 64
        deadline = time.monotonic() + 10

        def stream(index: int) -> None:
            client = server.client(max_retries=0, timeout=60)
            while time.monotonic() < deadline:
                prompt = f"stream {index} request {done[index]} {uuid.uuid4().hex}"
                try:
                    chunks = client.chat.completions.create(
                        model=server.model, stream=True, messages=[{"role": "user", "content": prompt}])
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                except Exception as error:  # counted: the test asserts there are none
                    errors.append(f"{index}: {error!r}")
                    continue
                if text != f"Echo: {prompt}":
                    errors.append(f"{index}: mixed-up stream: {text[:80]!r}")
                done[index] += 1

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(64)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            assert not errors, errors[:5]
            assert all(count >= 1 for count in done), done
        finally:
            server.down()


def test_no_input_text_runs_as_shell_on_the_cluster(profile_with, cluster):
    canary = f"/tmp/hpcllm-canary-{uuid.uuid4().hex[:8]}"
    hostile = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"\ntouch {canary}",
               f"'$(touch {canary})'", f'"; touch {canary}; "']
    attempts = [
        lambda text: cluster.plan("Qwen3-8B", engine="vllm", gpus=1, engine_args=("--max-model-len", text)),
        lambda text: cluster.plan(text, gpus=1),
        lambda text: cluster.plan("Qwen3-8B", gpus=1, partition=text),
        cluster.status, cluster.cancel, cluster.logs,
    ]
    for text in hostile:
        for attempt in attempts:
            with contextlib.suppress(HpcllmError):  # refused with a clear message is fine: nothing may run
                attempt(text)
    # One job really runs with a hostile engine argument: the engine gets it as one literal word.
    hostile_arg = f"$(touch {canary})`touch {canary}`;touch {canary}"
    server = cluster.up("Qwen3-8B", engine="vllm", gpus=1, timeout=60, engine_args=("--download-dir", hostile_arg))
    try:
        args = cluster.transport.run("ps -eo args").stdout
        assert f"--download-dir {hostile_arg}" in args  # one argument, as typed
    finally:
        server.down()
    assert not Path(canary).exists()
