"""The engine double is strict like the real engines: checked here without the cluster.

It runs through the singularity stand-in exactly as jobs run it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SINGULARITY = str(HERE / "cluster" / "singularity")
KEY = "sekrit-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def model(tmp_path) -> Path:
    directory = tmp_path / "Qwen3-8B"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 40960}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "<think>{{ m }}"}))
    weight_map = {f"layer{i}": f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def image(tmp_path: Path, engine: str, **settings: object) -> str:
    path = tmp_path / f"{engine}.sif"
    path.write_text(f"engine={engine}\n" + "".join(f"{k}={v}\n" for k, v in {"delay": 0.2, **settings}.items()))
    return str(path)


class Running:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.port = process, port

    def request(self, path: str, body: dict | None = None, key: str | None = KEY, stream: bool = False):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if data:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read().decode()
                return response.status, raw if stream or path == "/metrics" else (json.loads(raw) if raw else "")
        except urllib.error.HTTPError as error:
            raw = error.read().decode()
            return error.code, json.loads(raw) if raw.startswith("{") else raw


def start(tmp_path, engine: str, argv: list[str], env: dict | None = None, **settings) -> subprocess.Popen:
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "4,5,6,7", **(env or {})}
    environment.pop("PYTHONPATH", None)
    return subprocess.Popen([SINGULARITY, "exec", "--nv", "-B", "/srv", image(tmp_path, engine, **settings), *argv],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(process: subprocess.Popen, port: int) -> Running:
    running = Running(process, port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if running.request("/health", key=None)[0] == 200:
                return running
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the double did not become ready")


def vllm_argv(model: Path, port: int, *extra: str) -> list[str]:
    return ["vllm", "serve", str(model), "--served-model-name", "Qwen3-8B", "--host", "127.0.0.1", "--port",
            str(port), "--tensor-parallel-size", "4", *extra]


def sglang_argv(model: Path, port: int, *extra: str) -> list[str]:
    return ["python", "-m", "sglang.launch_server", "--model-path", str(model), "--served-model-name", "Qwen3-8B",
            "--host", "127.0.0.1", "--port", str(port), "--tp-size", "4", "--api-key", KEY, *extra]


@pytest.fixture
def vllm(tmp_path, model):
    port = free_port()
    process = start(tmp_path, "vllm", vllm_argv(model, port, "--enable-auto-tool-choice", "--tool-call-parser",
                                                "hermes", "--reasoning-parser", "qwen3"),
                    env={"VLLM_API_KEY": KEY})
    yield wait_ready(process, port)
    process.terminate()
    process.wait(10)


def chat(text: str, **extra) -> dict:
    return {"model": "Qwen3-8B", "messages": [{"role": "user", "content": text}], **extra}


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}}]


def test_vllm_api_with_key_reasoning_and_tools(vllm):
    assert vllm.request("/v1/models", key=None)[0] == 401
    assert vllm.request("/v1/models", key="wrong") == (401, {"error": "Unauthorized"})
    status, models = vllm.request("/v1/models")
    assert status == 200 and models["data"][0]["id"] == "Qwen3-8B"

    status, reply = vllm.request("/v1/chat/completions", chat("hi there"))
    assert status == 200
    message = reply["choices"][0]["message"]
    assert message["content"] == "Echo: hi there" and message["reasoning"] == message["reasoning_content"]
    assert "hi there" in message["reasoning"]

    status, reply = vllm.request("/v1/chat/completions", chat("use get_weather city=Paris days=3", tools=WEATHER))
    call = reply["choices"][0]["message"]["tool_calls"][0]
    assert reply["choices"][0]["finish_reason"] == "tool_calls"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}

    status, reply = vllm.request("/v1/chat/completions", {"model": "Qwen3-8B", "tools": WEATHER, "messages": [
        {"role": "user", "content": "get_weather city=Paris"}, {"role": "tool", "content": "sunny"}]})
    assert reply["choices"][0]["message"]["content"] == "Result: sunny"

    status, reply = vllm.request("/v1/chat/completions", chat("x", model="other"))
    assert status == 404 and "does not exist" in reply["message"]
    assert vllm.request("/v1/chat/completions", {"model": "Qwen3-8B"})[0] == 400


def test_vllm_guards_only_its_v1_paths_like_the_real_middleware(vllm):
    """vLLM's --api-key covers /v1, /v2 and /inference; every other route answers anyone (the relay's reason)."""
    for path in ("/v1/models", "/v1/nothing", "/v2/anything", "/inference/v1/generate"):
        assert vllm.request(path, key=None)[0] == 401, path
    assert vllm.request("/v1/nothing")[0] == 404  # the key is checked before the route is looked up
    lower = urllib.request.Request(f"http://127.0.0.1:{vllm.port}/v1/models",
                                   headers={"Authorization": f"bearer {KEY}"})
    with urllib.request.urlopen(lower, timeout=10) as response:  # vLLM takes the scheme in any case
        assert response.status == 200

    status, reply = vllm.request("/invocations", chat("no key needed"), key=None)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "Echo: no key needed"
    status, tokens = vllm.request("/tokenize", {"prompt": "to be or not to be"}, key=None)
    assert status == 200 and tokens["count"] == 6 and tokens["max_model_len"] == 40960
    assert tokens["tokens"][0] == tokens["tokens"][4] != tokens["tokens"][1]
    assert vllm.request("/detokenize", {"tokens": tokens["tokens"][:2]}, key=None) == (200, {"prompt": "to be"})
    status, pooled = vllm.request("/pooling", {"input": "some text"}, key=None)
    assert status == 200 and len(pooled["data"][0]["data"]) == 4
    status, scores = vllm.request("/score", {"text_1": "red fox", "text_2": ["red fox", "blue whale"]}, key=None)
    assert [d["score"] for d in scores["data"]] == [1.0, 0.0]
    status, ranked = vllm.request("/rerank", {"query": "fox", "documents": ["whale", "a fox"]}, key=None)
    assert [r["index"] for r in ranked["results"]] == [1, 0]
    status, classes = vllm.request("/classify", {"input": "a great day"}, key=None)
    assert status == 200 and classes["data"][0]["label"] == "positive"
    assert vllm.request("/version", key=None) == (200, {"version": "0.11.0"})
    assert vllm.request("/ping", key=None) == (200, "") and vllm.request("/ping", {}, key=None) == (200, "")
    assert vllm.request("/load", key=None) == (200, {"server_load": 0})
    assert vllm.request("/metrics", key=None)[0] == 200 and vllm.request("/health", key=None)[0] == 200
    assert vllm.request("/tokenize", {"nothing": 1}, key=None)[0] == 400


def test_vllm_streaming_and_metrics(vllm):
    status, raw = vllm.request("/v1/chat/completions", chat("stream me please", stream=True,
                                                            stream_options={"include_usage": True}), stream=True)
    assert status == 200
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning") or "" for c in chunks if c["choices"])
    assert content == "Echo: stream me please" and "stream me please" in reasoning
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    streamed_call = vllm.request("/v1/chat/completions", chat("get_weather city=Oslo", tools=WEATHER, stream=True),
                                 stream=True)[1]
    chunks = [json.loads(line[6:]) for line in streamed_call.splitlines() if line.startswith("data: {")]
    deltas = [c for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    arguments = "".join(d["choices"][0]["delta"]["tool_calls"][0]["function"].get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {"city": "Oslo"} and len(deltas) >= 3
    metrics = vllm.request("/metrics", key=None)[1]
    generated = float(next(line.split()[-1] for line in metrics.splitlines()
                           if line.startswith("vllm:generation_tokens_total")))
    assert generated >= 4


def test_vllm_without_auto_tool_choice_refuses_tools(tmp_path, model):
    port = free_port()
    running = wait_ready(start(tmp_path, "vllm", vllm_argv(model, port), env={"VLLM_API_KEY": KEY}), port)
    try:
        status, reply = running.request("/v1/chat/completions", chat("get_weather", tools=WEATHER))
        assert status == 400 and "--enable-auto-tool-choice" in reply["message"]
        assert "<think>" in running.request("/v1/chat/completions", chat("hi"))[1]["choices"][0]["message"]["content"]
    finally:
        running.process.terminate()
        assert running.process.wait(10) == 0  # SIGTERM: a clean exit


def test_sglang_answers_503_while_loading_and_prints_its_key(tmp_path, model):
    port = free_port()
    process = start(tmp_path, "sglang", sglang_argv(model, port, "--reasoning-parser", "qwen3"), delay=2)
    try:
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status = Running(process, port).request("/health", key=None)[0]
            except OSError:
                time.sleep(0.05)
        assert status == 503
        running = wait_ready(process, port)
        reply = running.request("/v1/chat/completions", chat("hello"))[1]["choices"][0]["message"]
        assert "reasoning" not in reply and "hello" in reply["reasoning_content"]
        assert running.request("/metrics", key=None)[0] == 404  # no --enable-metrics
        # SGLang's key guards everything but /health and /metrics, and it has no /invocations or /tokenize.
        for path in ("/v1/models", "/invocations", "/tokenize", "/get_model_info"):
            assert running.request(path, {}, key=None)[0] == 401, path
        assert running.request("/invocations", chat("x"))[0] == 404
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    # Deliberate: real SGLang prints its arguments, API key included; the job script must redact it.
    assert f"api_key='{KEY}'" in output and "The server is fired up and ready to roll!" in output


@pytest.mark.parametrize("engine, extra, message, code", [
    ("vllm", ["--tool-call-parser", "nope", "--enable-auto-tool-choice"], "invalid tool call parser: nope", 1),
    ("vllm", ["--reasoning-parser", "nope"], "invalid reasoning parser: nope", 1),
    ("vllm", ["--enable-auto-tool-choice"], "--enable-auto-tool-choice requires --tool-call-parser", 1),
    ("vllm", ["--no-such-flag"], "unrecognized arguments: --no-such-flag", 2),
    ("sglang", ["--tool-call-parser", "hermes3"], "invalid choice: 'hermes3'", 2),
])
def test_bad_flags_fail_like_the_engines(tmp_path, model, engine, extra, message, code):
    argv = (vllm_argv if engine == "vllm" else sglang_argv)(model, free_port(), *extra)
    done = start(tmp_path, engine, argv)
    assert done.wait(20) == code
    assert message in done.stdout.read()


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tp_must_divide_the_heads(tmp_path, model, engine):
    argv = (vllm_argv if engine == "vllm" else sglang_argv)(model, free_port())
    argv[argv.index("4", argv.index("--port") + 2)] = "3"
    done = start(tmp_path, engine, argv)
    assert done.wait(20) == 1
    output = done.stdout.read()
    expected = "divisible by tensor parallel size (3)" if engine == "vllm" else "AssertionError"
    assert expected in output


def test_too_few_gpus(tmp_path, model):
    done = start(tmp_path, "vllm", vllm_argv(model, free_port()), env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert done.wait(20) == 1 and "World size (4) is larger than the number of available GPUs (2)" in done.stdout.read()


def test_missing_model(tmp_path):
    done = start(tmp_path, "vllm", vllm_argv(tmp_path / "nothing", free_port()))
    assert done.wait(20) == 1 and "Invalid repository ID or local directory specified" in done.stdout.read()


def test_port_in_use(tmp_path, model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = start(tmp_path, "vllm", vllm_argv(model, taken.getsockname()[1]))
        assert done.wait(20) == 1 and "Address already in use" in done.stdout.read()


def test_missing_image_and_wrong_engine(tmp_path, model):
    done = subprocess.run([SINGULARITY, "exec", "--nv", str(tmp_path / "none.sif"), "true"], capture_output=True,
                          text=True)
    assert done.returncode == 255
    assert f"FATAL:   could not open image {tmp_path}/none.sif" in done.stderr
    # an SGLang image has no vllm, a vLLM image has no sglang module
    assert start(tmp_path, "sglang", vllm_argv(model, free_port())).wait(10) != 0
    no_module = start(tmp_path, "vllm", sglang_argv(model, free_port()))
    assert no_module.wait(10) == 1 and "No module named 'sglang'" in no_module.stdout.read()
