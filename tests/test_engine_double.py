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
        "num_key_value_heads": 8, "max_position_embeddings": 40960, "vocab_size": 151936}))
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


# --- helpers for the stricter checks ---------------------------------------------------------------------


def make_model(root: Path, name: str, architecture: str, heads: int = 32, template: str | None = None,
               tokenizer: dict | None = None, **config: object) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "architectures": [architecture], "num_attention_heads": heads, "max_position_embeddings": 8192,
        "vocab_size": 151936, **config}))
    if template is not None or tokenizer is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({
            **({"chat_template": template} if template is not None else {}), **(tokenizer or {})}))
    return directory


def launch(tmp_path, engine: str, model: Path, *extra: str, env: dict | None = None, **settings):
    port = free_port()
    argv = (vllm_argv if engine == "vllm" else sglang_argv)(model, port, *extra)
    return start(tmp_path, engine, argv, env=env, **settings), port


def refused(tmp_path, engine: str, model: Path, *extra: str, code: int = 1, env: dict | None = None,
            **settings) -> str:
    """Start the double; it must exit with `code` before serving. Its whole output."""
    process, _ = launch(tmp_path, engine, model, *extra, env=env, **settings)
    output = process.communicate(timeout=20)[0]
    assert process.returncode == code, output
    return output


def served(tmp_path, engine: str, model: Path, *extra: str, env: dict | None = None, check=None,
           **settings) -> str:
    """Start the double; it must become ready (then `check(running)` runs). Its whole output, after a SIGTERM."""
    process, port = launch(tmp_path, engine, model, *extra, env=env, **settings)
    try:
        running = wait_ready(process, port)
        if check:
            check(running)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert process.returncode == 0, output
    return output


def container_python(tmp_path, engine: str, code: str, *args: str, **settings) -> subprocess.CompletedProcess:
    """`singularity exec IMAGE python3 -c CODE ARGS...`, as a probe of an image runs it."""
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    return subprocess.run([SINGULARITY, "exec", image(tmp_path, engine, **settings), "python3", "-c", code, *args],
                          env=environment, capture_output=True, text=True, timeout=60)


def probe(tmp_path, engine: str, code: str, *args: str, **settings) -> dict:
    done = container_python(tmp_path, engine, code, *args, **settings)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- the registries, read from Python inside the "container" ---------------------------------------------

VLLM_NEW = """
import json, vllm
from vllm.tool_parsers import ToolParserManager as T
from vllm.reasoning import ReasoningParserManager as R
from vllm.model_executor.models import ModelRegistry as M
print(json.dumps({"version": vllm.__version__, "tool": T.list_registered(), "reasoning": R.list_registered(),
                  "eager": list(T.tool_parsers), "archs": list(M.get_supported_archs()),
                  "top": vllm.ModelRegistry is M}))
"""
VLLM_OLD = """
import json, vllm
from vllm.entrypoints.openai.tool_parsers import ToolParserManager as T
from vllm.reasoning import ReasoningParserManager as R
print(json.dumps({"version": vllm.__version__, "tool": list(T.tool_parsers), "lazy": T.lazy_parsers,
                  "reasoning": list(R.reasoning_parsers),
                  "listing": [hasattr(T, "list_registered"), hasattr(R, "list_registered")]}))
"""
SGLANG_NEW = """
import json, sglang
from sglang.srt.function_call.function_call_parser import FunctionCallParser as F
from sglang.srt.parser.reasoning_parser import ReasoningParser as R
from sglang.srt.models.registry import ModelRegistry as M
print(json.dumps({"version": sglang.__version__, "tool": list(F.ToolCallParserEnum), "reasoning": list(R.DetectorMap),
                  "archs": list(M.get_supported_archs()), "detector": F.ToolCallParserEnum["gpt-oss"].__name__}))
"""
SGLANG_OLD = """
import json
from sglang.srt.function_call.function_call_parser import FunctionCallParser as F
from sglang.srt.reasoning_parser import ReasoningParser as R
print(json.dumps({"tool": list(F.ToolCallParserEnum), "reasoning": list(R.DetectorMap)}))
"""


def no_module(tmp_path, engine: str, module: str, **settings) -> str:
    done = container_python(tmp_path, engine, f"import {module}", **settings)
    assert done.returncode == 1
    return done.stderr.strip().splitlines()[-1]


def test_vllm_registries_from_python(tmp_path):
    found = probe(tmp_path, "vllm", VLLM_NEW)
    assert found["version"] == "0.11.0" and found["top"]
    assert len(found["tool"]) == len(set(found["tool"])) == 58
    assert {"hermes", "openai", "qwen3_coder", "llama3_json", "minimax_m2", "kimi_k2", "glm47", "apertus"} <= set(
        found["tool"])
    assert len(found["reasoning"]) == len(set(found["reasoning"])) == 42
    assert {"openai_gptoss", "qwen3", "deepseek_r1", "minimax_m2_append_think", "nemotron_v3"} <= set(
        found["reasoning"])
    assert "openai" not in found["reasoning"]
    assert found["eager"] == []  # vLLM registers its parsers lazily: only list_registered() names them all
    assert {"Qwen3ForCausalLM", "DeepseekV32ForCausalLM", "Qwen3VLMoeForConditionalGeneration",
            "GraniteMoeHybridForCausalLM", "LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM"} <= set(found["archs"])
    assert no_module(tmp_path, "vllm", "vllm.entrypoints.openai.tool_parsers") == (
        "ModuleNotFoundError: No module named 'vllm.entrypoints.openai.tool_parsers'")
    assert no_module(tmp_path, "vllm", "sglang") == "ModuleNotFoundError: No module named 'sglang'"


def test_vllm_registries_in_the_old_layout(tmp_path):
    found = probe(tmp_path, "vllm", VLLM_OLD, registry_layout="old", version="0.10.2")
    assert found["version"] == "0.10.2"
    assert len(found["tool"]) == 58 and "hermes" in found["tool"] and found["lazy"] == {}
    assert len(found["reasoning"]) == 42 and "qwen3" in found["reasoning"]
    assert found["listing"] == [False, False]
    assert no_module(tmp_path, "vllm", "vllm.tool_parsers", registry_layout="old") == (
        "ModuleNotFoundError: No module named 'vllm.tool_parsers'")


def test_sglang_registries_from_python(tmp_path):
    found = probe(tmp_path, "sglang", SGLANG_NEW)
    assert found["version"] == "0.5.4" and found["detector"] == "GptOssDetector"
    assert len(found["tool"]) == len(set(found["tool"])) == 44 and "auto" not in found["tool"]
    assert {"gpt-oss", "qwen25", "qwen", "qwen3_coder", "minimax-m2", "deepseekv31", "glm47"} <= set(found["tool"])
    assert len(found["reasoning"]) == len(set(found["reasoning"])) == 36 and "auto" not in found["reasoning"]
    assert {"gpt-oss", "qwen3", "qwen3-thinking", "deepseek-r1", "minimax-append-think"} <= set(found["reasoning"])
    assert "Glm4MoeForCausalLM" in found["archs"] and "Gemma3ForCausalLM" in found["archs"]
    assert no_module(tmp_path, "sglang", "sglang.srt.reasoning_parser") == (
        "ModuleNotFoundError: No module named 'sglang.srt.reasoning_parser'")
    assert no_module(tmp_path, "sglang", "vllm") == "ModuleNotFoundError: No module named 'vllm'"


def test_sglang_registries_in_the_old_layout(tmp_path):
    found = probe(tmp_path, "sglang", SGLANG_OLD, registry_layout="old")
    assert len(found["tool"]) == 44 and len(found["reasoning"]) == 36
    assert no_module(tmp_path, "sglang", "sglang.srt.parser.reasoning_parser", registry_layout="old") == (
        "ModuleNotFoundError: No module named 'sglang.srt.parser.reasoning_parser'")


def test_vllm_overrides_reach_python_and_start_up(tmp_path, model):
    lists = {"tool_parsers": "hermes,my_parser", "reasoning_parsers": "qwen3", "architectures": "Qwen3ForCausalLM"}
    found = probe(tmp_path, "vllm", VLLM_NEW, **lists)
    assert found["tool"] == ["hermes", "my_parser"] and found["reasoning"] == ["qwen3"]
    assert found["archs"] == ["Qwen3ForCausalLM"]
    served(tmp_path, "vllm", model, "--enable-auto-tool-choice", "--tool-call-parser", "my_parser", **lists)
    output = refused(tmp_path, "vllm", model, "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json", **lists)
    assert "invalid tool call parser: llama3_json (chose from { hermes,my_parser })" in output
    output = refused(tmp_path, "vllm", model, architectures="LlamaForCausalLM,MistralForCausalLM")
    assert ("Model architectures ['Qwen3ForCausalLM'] are not supported for now. Supported architectures: "
            "['LlamaForCausalLM', 'MistralForCausalLM']") in output


def test_sglang_overrides_reach_python_and_start_up(tmp_path, model):
    lists = {"tool_parsers": "qwen25", "reasoning_parsers": "qwen3,deepseek-r1"}
    found = probe(tmp_path, "sglang", SGLANG_OLD, registry_layout="old", **lists)
    assert found == {"tool": ["qwen25"], "reasoning": ["qwen3", "deepseek-r1"]}
    output = refused(tmp_path, "sglang", model, "--tool-call-parser", "hermes", code=2, **lists)
    assert "argument --tool-call-parser: invalid choice: 'hermes'" in output


# --- SGLang `auto` ---------------------------------------------------------------------------------------

QWEN3_TEMPLATE = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{%- endfor %}"
                  "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{%- endif %}")
DETECT = """
import json, sys
from sglang.srt.parser.template_detection import detect_reasoning_parser, detect_tool_call_parser
print(json.dumps([detect_tool_call_parser(sys.argv[1], None), detect_reasoning_parser(sys.argv[1], None)]))
"""


@pytest.mark.parametrize("template, tool, reasoning", [
    ("<|start|>assistant<|channel|>final<|message|>", "gpt-oss", "gpt-oss"),
    ("<tool_call>\n<function=f>\n<parameter=p>\nv\n</parameter>\n</function>", "qwen3_coder", None),
    ("<think>x</think><minimax:tool_call><invoke name=f>", "minimax-m2", "minimax"),
    ("<|tool_calls_section_begin|><|tool_call_begin|>", "kimi_k2", "kimi_k2"),
    ("[gMASK]<sop><|system|>{% if enable_thinking %}", "glm45", "glm45"),
    (QWEN3_TEMPLATE, "qwen", "qwen3"),
    ("{{ messages }}", None, None),
])
def test_sglang_template_detection_from_python(tmp_path, template, tool, reasoning):
    assert probe(tmp_path, "sglang", DETECT, template) == [tool, reasoning]


def test_sglang_auto_detects_the_parsers_and_uses_them(tmp_path):
    model = make_model(tmp_path, "Qwen3-8B", "Qwen3ForCausalLM", template=QWEN3_TEMPLATE)

    def check(running: Running) -> None:
        reply = running.request("/v1/chat/completions", chat("get_weather city=Paris", tools=WEATHER))[1]
        assert reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        message = running.request("/v1/chat/completions", chat("hello"))[1]["choices"][0]["message"]
        assert "hello" in message["reasoning_content"]

    output = served(tmp_path, "sglang", model, "--tool-call-parser", "auto", "--reasoning-parser", "auto", check=check)
    assert "Auto-detected --tool-call-parser as 'qwen' from chat template" in output
    assert "Auto-detected --reasoning-parser as 'qwen3' from chat template" in output


def test_sglang_auto_reads_chat_template_jinja(tmp_path):
    model = make_model(tmp_path, "gpt-oss-20b", "GptOssForCausalLM", heads=64)
    (model / "chat_template.jinja").write_text("<|start|>assistant<|channel|>final<|message|>{{ content }}")
    output = served(tmp_path, "sglang", model, "--tool-call-parser", "auto", "--reasoning-parser", "auto")
    assert "Auto-detected --tool-call-parser as 'gpt-oss' from chat template" in output
    assert "Auto-detected --reasoning-parser as 'gpt-oss' from chat template" in output


def test_sglang_auto_without_markers_disables_tools(tmp_path):
    model = make_model(tmp_path, "Plain", "LlamaForCausalLM", template="{{ messages }}")

    def check(running: Running) -> None:
        message = running.request("/v1/chat/completions",
                                  chat("get_weather city=Paris", tools=WEATHER))[1]["choices"][0]["message"]
        assert message["content"] == "Echo: get_weather city=Paris" and "tool_calls" not in message
        assert "reasoning_content" not in message

    output = served(tmp_path, "sglang", model, "--tool-call-parser", "auto", "--reasoning-parser", "auto", check=check)
    assert ("--tool-call-parser=auto specified but could not detect tool-call parser from chat template. "
            "Disabling tool-call parser.") in output
    assert "--reasoning-parser=auto specified but could not detect reasoning parser from chat template." in output


def test_sglang_auto_refused_where_the_image_lacks_it(tmp_path, model):
    output = refused(tmp_path, "sglang", model, "--tool-call-parser", "auto", code=2, auto_parsers=0)
    assert "argument --tool-call-parser: invalid choice: 'auto' (choose from 'apertus2509'," in output
    output = refused(tmp_path, "sglang", model, "--reasoning-parser", "auto", code=2, auto_parsers=0)
    assert "argument --reasoning-parser: invalid choice: 'auto'" in output
    assert no_module(tmp_path, "sglang", "sglang.srt.parser.template_detection", auto_parsers=0) == (
        "ModuleNotFoundError: No module named 'sglang.srt.parser.template_detection'")


# --- data parallel ---------------------------------------------------------------------------------------


def test_vllm_data_parallel_needs_tp_times_dp_gpus(tmp_path, model):
    output = refused(tmp_path, "vllm", model, "--data-parallel-size", "2")
    assert 'Exception: Error setting CUDA_VISIBLE_DEVICES: local range: [4, 8) base value: "4,5,6,7"' in output
    assert "data_parallel_size=2 needs GPUs 4..7" in output
    output = served(tmp_path, "vllm", model, "-dp", "2", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert "'data_parallel_size': 2" in output and "Started DP Coordinator process" in output


def test_sglang_data_parallel_needs_tp_times_dp_gpus(tmp_path, model):
    output = refused(tmp_path, "sglang", model, "--dp-size", "2")
    assert "RuntimeError: CUDA error: invalid device ordinal (tp_size=4, dp_size=2, visible GPUs=4)" in output
    output = served(tmp_path, "sglang", model, "--dp", "2", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert "dp_size=2" in output


# --- speculative decoding --------------------------------------------------------------------------------


@pytest.fixture
def drafts(tmp_path) -> dict[str, str]:
    root = tmp_path / "drafts"
    root.mkdir()
    return {
        "@eagle3": str(make_model(root, "EAGLE3-Qwen3-8B", "LlamaForCausalLMEagle3")),
        "@eagle": str(make_model(root, "EAGLE-Qwen3-8B", "LlamaForCausalLMEagle")),
        "@small": str(make_model(root, "Qwen3-0.6B", "Qwen3ForCausalLM", heads=16)),
        "@othervocab": str(make_model(root, "Llama-3.2-1B", "LlamaForCausalLM", vocab_size=128256)),
        "@unsupported": str(make_model(root, "Foo-1B", "FooForCausalLM")),
        "@missing": str(root / "nothing"),
    }


def resolve(items: list[str], drafts: dict[str, str]) -> list[str]:
    for name, path in drafts.items():
        items = [item.replace(name, path) for item in items]
    return items


@pytest.mark.parametrize("spec, message, code", [
    ('{"method": "eagle3"', 'argument --speculative-config: Value {"method": "eagle3" cannot be converted to '
                            '<function loads at 0x', 2),
    ("[1, 2]", "Input should be a valid dictionary or instance of SpeculativeConfig", 1),
    ('{"method": "medusa2", "num_speculative_tokens": 3}',
     "Input should be 'ngram', 'eagle', 'eagle3', 'medusa', 'draft_model', 'mtp' or 'suffix' [type=literal_error, "
     "input_value='medusa2'", 1),
    ('{"method": "eagle3", "num_speculative_tokens": 3}',
     "Value error, num_speculative_tokens was provided but without speculative model.", 1),
    ('{"method": "eagle3", "model": "@missing", "num_speculative_tokens": 3}',
     "Invalid repository ID or local directory specified: '@missing'.", 1),
    ('{"method": "eagle3", "model": "@eagle3"}', "Value error, num_speculative_tokens must be provided with "
                                                "speculative model unless the draft model config contains an "
                                                "n_predict parameter.", 1),
    ('{"method": "ngram"}', "num_speculative_tokens must be provided with speculative model", 1),
    ('{"method": "ngram", "num_speculative_tokens": 0}', "num_speculative_tokens\n  Input should be greater than 0", 1),
    ('{"method": "ngram", "num_speculative_tokens": "many"}', "Input should be a valid integer", 1),
    ('{"method": "eagle3", "model": "@eagle", "num_speculative_tokens": 3}',
     "vLLM speculative method eagle3 needs an EAGLE-3 draft head", 1),
    ('{"method": "eagle", "model": "@eagle3", "num_speculative_tokens": 3}',
     "vLLM speculative method eagle needs an EAGLE draft head", 1),
    ('{"method": "draft_model", "model": "@othervocab", "num_speculative_tokens": 3}',
     "Target and draft model should have the same vocabulary size. Target model vocab_size=151936. Draft model "
     "vocab_size=128256.", 1),
    ('{"method": "draft_model", "model": "@unsupported", "num_speculative_tokens": 3}',
     "Model architectures ['FooForCausalLM'] are not supported for now.", 1),
    ('{"method": "mtp", "num_speculative_tokens": 1}', "method='mtp' needs a model with built-in multi-token "
                                                      "prediction layers", 1),
])
def test_vllm_speculative_config_refused(tmp_path, model, drafts, spec, message, code):
    spec, message = resolve([spec, message], drafts)
    output = refused(tmp_path, "vllm", model, "--speculative-config", spec, code=code)
    assert message in output


@pytest.mark.parametrize("spec, logged", [
    ('{"method": "eagle3", "model": "@eagle3", "num_speculative_tokens": 3}',
     "Speculative decoding: method=eagle3, model=@eagle3, num_speculative_tokens=3"),
    ('{"model": "@small", "num_speculative_tokens": 4}',
     "Speculative decoding: method=draft_model, model=@small, num_speculative_tokens=4"),
    ('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 4}',
     "Speculative decoding: method=ngram, model=None, num_speculative_tokens=2"),
])
def test_vllm_speculative_config_accepted(tmp_path, model, drafts, spec, logged):
    spec, logged = resolve([spec, logged], drafts)
    output = served(tmp_path, "vllm", model, "--speculative_config", spec)  # vLLM takes snake_case flags too
    assert logged in output


def test_vllm_mtp_on_a_model_with_mtp_layers(tmp_path):
    model = make_model(tmp_path, "GLM-4.5-Air", "Glm4MoeForCausalLM", heads=96, num_nextn_predict_layers=1)
    output = served(tmp_path, "vllm", model, "--speculative-config", '{"method": "mtp"}')
    assert f"Speculative decoding: method=mtp, model={model}, num_speculative_tokens=1" in output


@pytest.mark.parametrize("extra, message, code", [
    (["--speculative-algorithm", "MEDUSA"], "argument --speculative-algorithm: invalid choice: 'MEDUSA'", 2),
    (["--speculative-algorithm", "EAGLE3", "--speculative-num-steps", "two"],
     "argument --speculative-num-steps: invalid int value: 'two'", 2),
    (["--speculative-draft-model-path", "@eagle3"],
     "ValueError: --speculative-draft-model-path is set but --speculative-algorithm is not", 1),
    (["--speculative-algorithm", "EAGLE3"],
     "ValueError: EAGLE3 speculative decoding requires setting --speculative-draft-model-path.", 1),
    (["--speculative-algorithm", "STANDALONE"],
     "ValueError: STANDALONE speculative decoding requires setting --speculative-draft-model-path.", 1),
    (["--speculative-algorithm", "EAGLE"], "ValueError: EAGLE speculative decoding requires setting "
                                           "--speculative-draft-model-path: the model at", 1),
    (["--speculative-algorithm", "NEXTN"], "ValueError: NEXTN speculative decoding needs a model with built-in MTP", 1),
    (["--speculative-algorithm", "EAGLE3", "--speculative-draft-model", "@missing"],
     "Invalid repository ID or local directory specified: '@missing'.", 1),
    (["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "@eagle"],
     "SGLang speculative algorithm EAGLE3 needs an EAGLE-3 draft head", 1),
    (["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", "@eagle3"],
     "SGLang speculative algorithm EAGLE needs an EAGLE draft head", 1),
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "@othervocab"],
     "Target model vocab_size=151936. Draft model vocab_size=128256.", 1),
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "@unsupported"],
     "Model architectures ['FooForCausalLM'] are not supported for now.", 1),
    (["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "@eagle3", "--speculative-eagle-topk",
      "0"], "ValueError: --speculative-eagle-topk must be at least 1, got 0.", 1),
])
def test_sglang_speculative_refused(tmp_path, model, drafts, extra, message, code):
    extra, [message] = resolve(extra, drafts), resolve([message], drafts)
    assert message in refused(tmp_path, "sglang", model, *extra, code=code)


def test_sglang_speculative_accepted(tmp_path, model, drafts):
    output = served(tmp_path, "sglang", model, "--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path",
                    drafts["@eagle3"], "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                    "--speculative-num-draft-tokens", "4")
    assert (f"Speculative decoding: algorithm=EAGLE3, draft_model_path={drafts['@eagle3']}, num_steps=3, "
            "eagle_topk=1, num_draft_tokens=4") in output
    glm = make_model(tmp_path, "GLM-4.5-Air", "Glm4MoeForCausalLM", heads=96, num_nextn_predict_layers=1)
    for algorithm in ("EAGLE", "NEXTN"):  # built-in MTP: no draft path needed
        output = served(tmp_path, "sglang", glm, "--speculative-algorithm", algorithm)
        assert f"Speculative decoding: algorithm=EAGLE, draft_model_path={glm}," in output


# --- --trust-remote-code ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_custom_tokenizer_code_needs_trust_remote_code(tmp_path, engine):
    kimi = make_model(tmp_path, "Kimi-K2-Instruct", "DeepseekV3ForCausalLM", heads=64, template="{{ messages }}",
                      tokenizer={"auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}},
                      auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config"})
    output = refused(tmp_path, engine, kimi)
    assert (f"ValueError: The repository for {kimi} contains custom code which must be executed to correctly load "
            f"the model. You can inspect the repository content at {kimi}.\nPlease pass the argument "
            "`trust_remote_code=True` to allow custom code to be run.") in output
    served(tmp_path, engine, kimi, "--trust-remote-code")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_config_auto_map_alone_needs_no_trust(tmp_path, engine):
    deepseek = make_model(tmp_path, "DeepSeek-R1", "DeepseekV3ForCausalLM", heads=128, template="{{ messages }}",
                          auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config"})
    assert "contains custom code" not in served(tmp_path, engine, deepseek)  # served: it became ready


# --- flags model cards pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine, extra", [
    ("vllm", ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral",
              "--chat-template", "/x/tool_chat_template.jinja"]),
    ("sglang", ["--tokenizer-mode", "slow", "--load-format", "safetensors", "--chat-template", "chatml"]),
])
def test_model_card_flags_accepted(tmp_path, model, engine, extra):
    served(tmp_path, engine, model, *extra)


@pytest.mark.parametrize("engine, extra, message", [
    ("vllm", ["--tokenizer-mode", "fast"], "argument --tokenizer-mode: invalid choice: 'fast'"),
    ("vllm", ["--config-format", "gguf"], "argument --config-format: invalid choice: 'gguf'"),
    ("sglang", ["--tokenizer-mode", "mistral"], "argument --tokenizer-mode: invalid choice: 'mistral'"),
    ("sglang", ["--load-format", "tensors"], "argument --load-format: invalid choice: 'tensors'"),
])
def test_model_card_flags_checked(tmp_path, model, engine, extra, message):
    assert message in refused(tmp_path, engine, model, *extra, code=2)
