"""A double of vLLM and SGLang for tests: their command lines, start-up logs, failures and OpenAI API.

Layout (the stand-in `tests/cluster/singularity` puts these on the "container's" paths):
    vllm-bin/vllm                     `vllm serve MODEL ...`           (vLLM images: PATH)
    vllm-py/vllm/                     `import vllm` registries         (vLLM images: PYTHONPATH)
    bin/python                        `python` = python3
    py/sglang/launch_server.py        `python -m sglang.launch_server` (SGLang images: PYTHONPATH)
    py/sglang/                        `import sglang` registries       (SGLang images: PYTHONPATH)
    engine_checks.py                  the stricter start-up checks, and SGLang's chat-template detection

Settings come from the image file named by $HPCLLM_FAKE_IMAGE (key=value lines):
    delay=1.0             seconds the whole start-up takes (weights load one shard at a time within it)
    version=V             version printed at start and in `vllm.__version__` / `sglang.__version__`
                          (default 0.11.0 for vLLM, 0.5.4 for SGLang)
    token_delay=0         seconds per generated token (streamed or not): with the concurrency limit below, throughput
                          grows with the requests in flight up to the limit, as on a real engine
    flaky=K               every K-th chat request fails as an engine under trouble does: alternately a 500
                          (EngineCore's error) and a connection reset with no answer
    request_log=PATH      append each chat request's last user text (a JSON string per line) to PATH
    crash_after_load=1    die with CUDA out of memory after loading the weights
    max_model_len_fits=M  vLLM: fail after loading unless --max-model-len <= M (the real error text)
    tool_parsers=a,b      the tool-call parser names the image registers (replaces the default list)
    reasoning_parsers=a,b the reasoning parser names it registers (replaces the default list)
    architectures=A,B     the model architectures it supports (replaces SUPPORTED_ARCHITECTURES)
    registry_layout=new   `old`: the registries at their older module paths, without list_registered()
    auto_parsers=1        SGLang: `0` refuses `--tool-call-parser auto` / `--reasoning-parser auto` (argparse's
                          invalid choice) and has no sglang.srt.parser.template_detection
The default lists are the names vLLM 0.33.0 and SGLang 0.5.23 register (shared/notes/engines.md). Start-up
checks and the Python registries both use the image's lists (class Registry), so an override applies to both.

Python inside the "container" sees the registries at the engines' module paths:
    vLLM (new layout)   vllm.__version__; vllm.tool_parsers.ToolParserManager.list_registered();
                        vllm.reasoning.ReasoningParserManager.list_registered() (both register lazily:
                        their names are in `lazy_parsers`, not in `tool_parsers` / `reasoning_parsers`);
                        vllm.model_executor.models.ModelRegistry.get_supported_archs() (a dict keys view)
    vLLM (old layout)   no vllm.tool_parsers; vllm.entrypoints.openai.tool_parsers.ToolParserManager.tool_parsers
                        (dict name -> class; `lazy_parsers` empty; no list_registered);
                        vllm.reasoning.ReasoningParserManager.reasoning_parsers (dict only)
    SGLang              sglang.__version__; sglang.srt.function_call.function_call_parser.FunctionCallParser
                        .ToolCallParserEnum (dict name -> detector class); sglang.srt.parser.reasoning_parser
                        .ReasoningParser.DetectorMap (old layout: sglang.srt.reasoning_parser instead);
                        sglang.srt.models.registry.ModelRegistry.get_supported_archs();
                        sglang.srt.parser.template_detection (detect_tool_call_parser, detect_reasoning_parser)
                        only when auto_parsers=1

The concurrency limit is the engines' own flag: vLLM --max-num-seqs, SGLang --max-running-requests (default
256 here). Requests beyond it wait (counted in /metrics as waiting) until a slot frees; a client that hangs
up while its request waits or runs aborts it, as vLLM and SGLang abort a disconnected request. A request's
response_format is honoured: json_schema answers an instance of the schema, json_object a JSON object (the
JSON is split into tokens at its spaces, so max_tokens can cut it, as it cuts a real answer).

Stdlib only: it runs under the cluster's python3. It is strict on purpose: unknown arguments, parser
names, a tensor-parallel size that does not divide the heads, too few GPUs for tp × pp × dp, a missing model,
a tokenizer that is custom code without --trust-remote-code, a malformed speculative-decoding setup (vLLM
--speculative-config, SGLang --speculative-*: method, draft model, draft architecture, vocabulary, token
counts) or a wrong API key fail as the real engines fail. SGLang's `auto` parsers are detected from the chat
template's markers (engine_checks.TOOL_CALL_RULES, REASONING_RULES). A chat answer is deterministic: "Echo:
<last user text>"; `/bench N` answers N words; a tool named in the prompt is called with `key=value`
arguments from it.

The API key is checked where the real engines check it, and only there. vLLM's middleware guards the paths
that start with /v1, /v2 or /inference; its other routes answer anyone: /health, /metrics, /version, /ping,
/load, /tokenize, /detokenize, /pooling, /score, /rerank, /classify, and /invocations, which runs a whole
chat completion. SGLang guards everything but /health and /metrics. (That is why a job puts its relay in
front of the engine: jupyter_hpcllm/node/relay.py.)
"""

from __future__ import annotations

import argparse
import collections
import hmac
import itertools
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.path.dirname(os.path.realpath(__file__)) not in sys.path:  # engine_checks is beside this file
    sys.path.append(os.path.dirname(os.path.realpath(__file__)))
import engine_checks
from engine_checks import StartupError, check_supported, load_config

# The names each engine registers (vLLM 0.33.0, SGLang 0.5.23; shared/notes/engines.md). SGLang's `auto` is no
# registered name: its --tool-call-parser / --reasoning-parser also accept it (see auto_parsers below).
VLLM_TOOL_PARSERS = (
    "dots", "deepseek_v3", "deepseek_v31", "deepseek_v32", "deepseek_v4", "deepseek_v41", "cohere_command3",
    "cohere_command4", "ernie45", "glm45", "glm47", "ling3", "granite-20b-fc", "granite", "granite4", "hermes", "hf",
    "beam", "poolside_v1", "hunyuan_a13b", "hy_v3", "hy_v4", "internlm", "jamba", "lfm2", "kimi_k2", "kimi_k3",
    "k2_horizon", "llama3_json", "llama4_json", "llama4_pythonic", "longcat", "mimo", "minimax_m2", "minimax_m3",
    "minicpm5", "mistral", "olmo3", "plamo3", "muse", "muse_glimmer", "musespark1x", "openai", "phi4_mini_json",
    "pythonic", "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5", "step5", "inkling", "xlam",
    "gigachat3", "functiongemma", "gemma4", "apertus",
)
VLLM_REASONING_PARSERS = (
    "deepseek_r1", "deepseek_v3", "deepseek_v4", "deepseek_v41", "poolside_v1", "cohere_command3", "cohere_command4",
    "ernie45", "gemma4", "glm45", "glm47", "ling3", "openai_gptoss", "granite", "granite_thinking_parser", "hf",
    "beam", "holo2", "hunyuan_a13b", "hy_v3", "hy_v4", "kimi_k2", "kimi_k3", "k2_horizon", "mimo", "minicpmv",
    "minimax_m2", "minimax_m2_append_think", "minimax_m3", "mistral", "nemotron_v3", "olmo3", "plamo3", "muse",
    "muse_glimmer", "musespark1x", "qwen3", "seed_oss", "step3", "step3p5", "step5", "inkling",
)
SGLANG_TOOL_PARSERS = (
    "apertus2509", "beam", "cohere_command4", "deepseekv3", "deepseekv31", "deepseekv32", "deepseekv4", "deepseekv41",
    "dots", "glm", "glm45", "glm47", "gpt-oss", "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3", "mimo",
    "minicpm5", "mistral", "muse", "poolside_v1", "pythonic", "qwen", "qwen25", "qwen3_coder", "spark25", "step3",
    "step3p5", "minimax-m2", "minimax-m3", "nanbeige", "trinity", "interns1", "hermes", "hunyuan", "gigachat3",
    "gigachat35", "gemma4", "inkling", "iquest_q1", "response_template",
)
SGLANG_REASONING_PARSERS = (
    "apertus2509", "beam", "deepseek-r1", "deepseek-v3", "deepseek-v4", "deepseek-v41", "dots", "glm45", "ling3",
    "hunyuan", "gpt-oss", "k2_horizon", "kimi", "kimi_k2", "kimi_k3", "mimo", "muse", "poolside_v1", "qwen3",
    "qwen3-thinking", "minimax", "minimax-append-think", "minimax-m3", "nanbeige", "step3", "step3p5", "mistral",
    "nemotron_3", "granite_thinking_parser", "interns1", "gemma4", "inkling", "iquest_q1", "cohere_command4",
    "gigachat35", "response_template",
)
SUPPORTED_ARCHITECTURES = (
    "GptOssForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM", "Qwen2ForCausalLM",
    "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration", "LlamaForCausalLM",
    "Llama4ForConditionalGeneration", "MistralForCausalLM", "Mistral3ForConditionalGeneration",
    "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM", "Gemma3ForConditionalGeneration", "Gemma3ForCausalLM",
    "Phi3ForCausalLM", "Glm4MoeForCausalLM", "MiniMaxM2ForCausalLM", "GraniteForCausalLM",
    "GraniteMoeHybridForCausalLM",
    # speculative-decoding draft heads (EAGLE-3 and EAGLE, in vLLM's and SGLang's spellings)
    "LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM", "LlamaForCausalLMEagle", "EagleLlamaForCausalLM",
)
BENCH_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "tempor")


def read_settings() -> dict[str, str]:
    settings = {"delay": "1.0", "token_delay": "0"}
    path = os.environ.get("HPCLLM_FAKE_IMAGE")
    if path and os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    settings[key.strip()] = value.strip()
    return settings


def listed(settings: dict[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list setting (it replaces the default list), or the default."""
    if key not in settings:
        return default
    return tuple(name.strip() for name in settings[key].split(",") if name.strip())


class Registry:
    """What one image's engine registers, from the image's settings (defaults: the engines' own lists).
    The start-up checks and the Python stubs (vllm-py/, py/sglang/) both read it, so overrides apply to both."""

    def __init__(self, kind: str, settings: dict[str, str] | None = None) -> None:
        settings = read_settings() if settings is None else settings
        vllm = kind == "vllm"
        self.kind = kind
        self.tool_parsers = listed(settings, "tool_parsers", VLLM_TOOL_PARSERS if vllm else SGLANG_TOOL_PARSERS)
        self.reasoning_parsers = listed(settings, "reasoning_parsers",
                                        VLLM_REASONING_PARSERS if vllm else SGLANG_REASONING_PARSERS)
        self.architectures = listed(settings, "architectures", SUPPORTED_ARCHITECTURES)
        self.layout = "old" if settings.get("registry_layout") == "old" else "new"
        self.auto_parsers = not vllm and settings.get("auto_parsers", "1") == "1"
        self.version = settings.get("version", "0.11.0" if vllm else "0.5.4")


# --- command lines --------------------------------------------------------------------------------------


def vllm_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    registry = registry or Registry("vllm")
    parser = argparse.ArgumentParser(prog="vllm serve")
    parser.add_argument("model")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    parser.add_argument("--enable-expert-parallel", action="store_true")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    # Like vLLM: the names are listed in --help, but checked only at start-up (a plugin may add more).
    parser.add_argument("--tool-call-parser", metavar="{" + ",".join(registry.tool_parsers) + "} or name registered "
                        "in --tool-parser-plugin")
    parser.add_argument("--reasoning-parser", metavar="{" + ",".join(registry.reasoning_parsers) + "}")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--chat-template")
    parser.add_argument("--tokenizer-mode", choices=("auto", "slow", "mistral", "custom"), default="auto")
    parser.add_argument("--config-format", choices=("auto", "hf", "mistral"), default="auto")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--speculative-config", type=engine_checks.json_argument)
    parser.add_argument("--api-key")
    parser.add_argument("--download-dir")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", "-q")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int)
    return parser


def vllm_argv(argv: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser takes `--snake_case` flags for `--kebab-case` ones."""
    flags = []
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg.partition("=")
            arg = key.replace("_", "-") + sep + value
        flags.append(arg)
    return flags


SGLANG_LOAD_FORMATS = ("auto", "pt", "safetensors", "npcache", "dummy", "sharded_state", "gguf", "bitsandbytes",
                       "mistral", "layered", "remote", "remote_instance", "fastsafetensors", "runai_streamer")


def sglang_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    registry = registry or Registry("sglang")
    auto = ("auto",) if registry.auto_parsers else ()
    parser = argparse.ArgumentParser(prog="launch_server.py")
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--tp-size", "--tp", type=int, default=1)
    parser.add_argument("--dp-size", "--dp", type=int, default=1)
    parser.add_argument("--ep-size", "--ep", type=int, default=1)
    parser.add_argument("--served-model-name")
    parser.add_argument("--tool-call-parser", choices=registry.tool_parsers + auto)
    parser.add_argument("--reasoning-parser", choices=registry.reasoning_parsers + auto)
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--tokenizer-mode", choices=("auto", "slow"), default="auto")
    parser.add_argument("--load-format", choices=SGLANG_LOAD_FORMATS, default="auto")
    parser.add_argument("--api-key")
    parser.add_argument("--enable-metrics", action="store_true")
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--chat-template")
    parser.add_argument("--speculative-algorithm", choices=engine_checks.SGLANG_SPECULATIVE_ALGORITHMS)
    parser.add_argument("--speculative-draft-model-path", "--speculative-draft-model")
    parser.add_argument("--speculative-num-steps", type=int)
    parser.add_argument("--speculative-eagle-topk", type=int)
    parser.add_argument("--speculative-num-draft-tokens", type=int)
    return parser


class Engine:
    """What one server instance knows: its options and counters."""

    def __init__(self, kind: str, args: argparse.Namespace, settings: dict[str, str]) -> None:
        self.kind = kind
        self.settings = settings
        self.model_path = args.model if kind == "vllm" else args.model_path
        served = args.served_model_name
        self.served_name = (served[0] if isinstance(served, list) else served) or self.model_path
        self.host = args.host or "0.0.0.0"
        self.port = args.port
        self.tp = args.tensor_parallel_size if kind == "vllm" else args.tp_size
        self.pp = args.pipeline_parallel_size if kind == "vllm" else 1
        self.dp = args.data_parallel_size if kind == "vllm" else args.dp_size
        self.tool_parser = args.tool_call_parser
        self.auto_tool_choice = getattr(args, "enable_auto_tool_choice", False)
        self.reasoning_parser = args.reasoning_parser
        self.metrics_enabled = kind == "vllm" or args.enable_metrics
        self.api_key = args.api_key or (os.environ.get("VLLM_API_KEY") if kind == "vllm" else None)
        self.max_model_len = (args.max_model_len if kind == "vllm" else args.context_length) or 0
        self.args = args
        self.registry = Registry(kind, settings)
        self.version = self.registry.version
        self.vocabulary: dict[str, int] = {}  # /tokenize's word ids, so /detokenize can give the words back
        self.config: dict = {}
        self.inline_thinking = False
        self.ready = False
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests = 0  # chat requests received
        self.succeeded = 0  # ... and answered to the end
        self.max_running = (args.max_num_seqs if kind == "vllm" else args.max_running_requests) or 256
        self.queue: collections.deque[threading.Event] = collections.deque()  # waiting requests, first come first
        self.token_delay = float(settings.get("token_delay", "0"))
        self.flaky = int(settings.get("flaky", "0"))
        self.request_log = settings.get("request_log")

    def free_slot(self) -> None:
        """A request ended: its slot goes to the first one waiting, if any."""
        with self.lock:
            if self.queue:
                self.waiting -= 1
                self.queue.popleft().set()  # `running` stays: the slot changes hands
            else:
                self.running -= 1

    # Log lines in each engine's own format.
    def log(self, message: str, end: str = "\n") -> None:
        if self.kind == "vllm":
            prefix = time.strftime("INFO %m-%d %H:%M:%S [api_server.py:1830] ")
        else:
            prefix = time.strftime("[%Y-%m-%d %H:%M:%S] ")
        sys.stdout.write(prefix + message + end)
        sys.stdout.flush()


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([g for g in visible.split(",") if g.strip()]) if visible else 0


def check_model(engine: Engine) -> None:
    """The model directory (a missing one fails as both engines fail), its architecture, and its custom code."""
    engine.config = load_config(engine.model_path)
    tokenizer_config = engine_checks.read_json(os.path.join(engine.model_path, "tokenizer_config.json"))
    engine.inline_thinking = "think" in str(tokenizer_config.get("chat_template", ""))
    check_supported(engine.config, engine.registry.architectures)
    engine_checks.check_trust_remote_code(engine.model_path, engine.args.trust_remote_code)
    if not engine.max_model_len:
        engine.max_model_len = int(engine.config.get("max_position_embeddings") or 4096)


def heads(config: dict) -> int:
    text = config.get("text_config") or {}
    return int(config.get("num_attention_heads") or text.get("num_attention_heads") or 1)


def check_vllm_parsers(engine: Engine) -> None:
    tools, reasoning = engine.registry.tool_parsers, engine.registry.reasoning_parsers
    if engine.auto_tool_choice and not engine.tool_parser:
        raise StartupError("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")
    if engine.tool_parser and engine.tool_parser not in tools:
        raise StartupError(
            "Traceback (most recent call last):",
            '  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/openai/cli_args.py", line 297',
            f"KeyError: 'invalid tool call parser: {engine.tool_parser} (chose from {{ {','.join(tools)} }})'",
        )
    if engine.reasoning_parser and engine.reasoning_parser not in reasoning:
        raise StartupError(
            f"KeyError: 'invalid reasoning parser: {engine.reasoning_parser} (chose from "
            f"{{ {','.join(reasoning)} }})'",
        )


def check_speculative(engine: Engine) -> None:
    """Speculative decoding (vLLM --speculative-config, SGLang --speculative-*): strict, as each engine is."""
    architectures = engine.registry.architectures
    if engine.kind == "vllm":
        line = engine_checks.check_vllm_speculative(engine.args.speculative_config, engine.model_path, engine.config,
                                                    architectures)
    else:
        line = engine_checks.check_sglang_speculative(engine.args, engine.model_path, engine.config, architectures)
    if line:
        engine.log(line)


def resolve_auto_parsers(engine: Engine) -> None:
    """SGLang `auto`: the parsers the chat template implies, or none (then that feature is off)."""
    registered = {"tool_call_parser": engine.registry.tool_parsers,
                  "reasoning_parser": engine.registry.reasoning_parsers}
    for line in engine_checks.resolve_auto_parsers(engine.args, engine.model_path, registered):
        engine.log(line)
    engine.tool_parser, engine.reasoning_parser = engine.args.tool_call_parser, engine.args.reasoning_parser


def check_parallelism(engine: Engine) -> None:
    total_heads = heads(engine.config)
    engine_checks.check_gpus(engine.kind, engine.tp, engine.pp, engine.dp, gpu_count())
    if total_heads % engine.tp:
        if engine.kind == "vllm":
            raise StartupError(f"ValueError: Total number of attention heads ({total_heads}) must be divisible "
                               f"by tensor parallel size ({engine.tp}).")
        raise StartupError(
            "Traceback (most recent call last):",
            '  File "/sgl-workspace/sglang/python/sglang/srt/layers/attention/base.py", line 88, in __init__',
            "    assert self.total_num_heads % tp_size == 0",
            "AssertionError",
        )


def shard_count(model_path: str) -> int:
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as handle:
            return max(1, len(set(json.load(handle).get("weight_map", {}).values())))
    shards = [name for name in os.listdir(model_path) if name.endswith(".safetensors")]
    return max(1, len(shards))


def load_weights(engine: Engine, seconds: float) -> None:
    """tqdm-style progress, one update per shard, separated by carriage returns as tqdm writes a file."""
    total = shard_count(engine.model_path)
    started = time.monotonic()
    out = sys.stderr
    for done in range(total + 1):
        percent = int(100 * done / total)
        elapsed = time.monotonic() - started
        out.write(f"\rLoading safetensors checkpoint shards: {percent:3d}% Completed | {done}/{total} "
                  f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}<00:00, {seconds / total:5.2f}s/it]")
        out.flush()
        if done < total:
            time.sleep(seconds / total)
    out.write("\n")
    out.flush()


def fail_after_load(engine: Engine) -> None:
    if engine.settings.get("crash_after_load") == "1":
        raise StartupError(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
            "capacity of 79.15 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process has "
            "78.07 GiB memory in use.",
        )
    fits = engine.settings.get("max_model_len_fits")
    if engine.kind == "vllm" and fits and engine.max_model_len > int(fits):
        raise StartupError(
            f"ValueError: To serve at least one request with the models's max seq len ({engine.max_model_len}), "
            f"(12.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.00 GiB). "
            f"Based on the available memory, the estimated maximum model length is {fits}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
        )


# --- start-up -------------------------------------------------------------------------------------------


def bind(engine: Engine) -> ThreadingHTTPServer:
    try:
        server = Server((engine.host, engine.port), Handler)
    except OSError as error:
        raise StartupError(f"OSError: [Errno {error.errno}] {error.strerror}") from None
    server.engine = engine
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(engine: Engine) -> int:
    delay = float(engine.settings.get("delay", "1.0"))
    version = engine.version
    server = None
    try:
        if engine.kind == "vllm":
            engine.log(f"vLLM API server version {version}")
            defaults = vars(vllm_parser(engine.registry).parse_args([engine.model_path]))
            shown = {k: v for k, v in vars(engine.args).items()
                     if (k == "model" or v != defaults.get(k)) and k != "api_key"}
            engine.log(f"non-default args: {shown}")
            check_vllm_parsers(engine)
            check_model(engine)
            check_speculative(engine)
            if engine.dp > 1:
                engine.log(f"Started DP Coordinator process (PID: {os.getpid() + 1})")  # (args: data_parallel_size)
            check_parallelism(engine)
            time.sleep(delay * 0.2)
            load_weights(engine, delay * 0.6)
            engine.log(f"Model loading took 12.34 GiB and {delay * 0.6:.2f} seconds")
            fail_after_load(engine)
            engine.log("GPU KV cache size: 123,456 tokens")
            engine.log(f"Maximum concurrency for {engine.max_model_len or 40960:,} tokens per request: 3.52x")
            time.sleep(delay * 0.2)
            # vLLM refuses connections until here.
            server = bind(engine)
            engine.log(f"Starting vLLM API server 0 on http://{engine.host}:{engine.port}")
            engine.ready = True
            sys.stdout.write("INFO:     Application startup complete.\n")
            sys.stdout.flush()
        else:
            # The real SGLang prints all its arguments, the API key included: the launcher must redact.
            fields = ", ".join(f"{k}={v!r}" for k, v in vars(engine.args).items())
            engine.log(f"server_args=ServerArgs({fields})")
            check_model(engine)
            resolve_auto_parsers(engine)
            check_speculative(engine)
            server = bind(engine)  # SGLang listens early and answers /health with 503 while starting
            time.sleep(delay * 0.2)
            check_parallelism(engine)
            load_weights(engine, delay * 0.6)
            engine.log("Load weight end. type=Qwen3ForCausalLM, dtype=torch.bfloat16, avail mem=60.12 GB")
            fail_after_load(engine)
            engine.log("KV Cache is allocated. #tokens: 123456, K size: 9.42 GB, V size: 9.42 GB")
            engine.log(f"max_total_num_tokens=123456, chunked_prefill_size=8192, max_prefill_tokens=16384, "
                       f"max_running_requests={engine.max_running}, context_len={engine.max_model_len or 40960}")
            time.sleep(delay * 0.2)
            engine.log("Capture cuda graph end. Time elapsed: 1.00 s")
            engine.ready = True
            engine.log("The server is fired up and ready to roll!")
    except StartupError as error:
        for line in error.lines:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return 1
    stop = threading.Event()

    def terminate(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    stop.wait()
    sys.stdout.write("INFO:     Shutting down\n" if engine.kind == "vllm" else "Received sigterm, shutting down\n")
    sys.stdout.flush()
    if server is not None:
        server.shutdown()
    return 0


def main_vllm(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        sys.stderr.write("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...\n")
        return 2
    settings = read_settings()
    args = vllm_parser(Registry("vllm", settings)).parse_args(vllm_argv(argv[1:]))
    return run(Engine("vllm", args, settings))


def main_sglang(argv: list[str]) -> int:
    settings = read_settings()
    args = sglang_parser(Registry("sglang", settings)).parse_args(argv)
    return run(Engine("sglang", args, settings))


# --- the OpenAI API -------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128
    engine: Engine

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up mid-answer (a probe, a closed forward) is not an error to log: uvicorn, under
        vLLM and SGLang, logs nothing then. Anything else is, with its traceback, as before."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def message_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def tool_arguments(tool: dict, text: str) -> dict:
    """Arguments for a call: `key=value` words in the prompt, coerced to the schema's types."""
    properties = tool.get("function", {}).get("parameters", {}).get("properties", {})
    found = dict(word.split("=", 1) for word in text.replace(",", " ").split() if "=" in word)
    arguments = {}
    for name, schema in properties.items():
        kind = schema.get("type", "string")
        raw = found.get(name)
        if raw is None:
            continue
        try:
            if kind == "integer":
                arguments[name] = int(raw)
            elif kind == "number":
                arguments[name] = float(raw)
            elif kind == "boolean":
                arguments[name] = raw.lower() in ("true", "1", "yes")
            else:
                arguments[name] = raw
        except ValueError:
            arguments[name] = raw
    return arguments


class Answer:
    def __init__(self) -> None:
        self.reasoning: str | None = None
        self.words: list[str] = []
        self.tool_call: dict | None = None
        self.finish = "stop"
        self.prompt_tokens = 0


_bench_cache: dict[int, list[str]] = {}


def bench_words(count: int) -> list[str]:
    if count not in _bench_cache:
        _bench_cache.clear()
        _bench_cache[count] = list(itertools.islice(itertools.cycle(BENCH_WORDS), count))
    return _bench_cache[count]


class BadRequest(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def openai_error(message: str, status: int = 400, kind: str = "BadRequestError") -> BadRequest:
    return BadRequest(status, {"object": "error", "message": message, "type": kind, "param": None, "code": status})


def plan_answer(engine: Engine, request: dict) -> Answer:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise openai_error("messages: Field required (a non-empty list of messages)")
    if request.get("model") != engine.served_name:
        raise openai_error(f"The model `{request.get('model')}` does not exist.", 404, "NotFoundError")
    answer = Answer()
    answer.prompt_tokens = sum(len(message_text(m).split()) for m in messages if isinstance(m, dict))
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    user_text = next((message_text(m) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
                     "")
    tools = request.get("tools") or []
    choice = request.get("tool_choice")
    use_tools = bool(tools) and choice != "none"
    if use_tools and engine.kind == "vllm" and choice in (None, "auto") and not (
            engine.auto_tool_choice and engine.tool_parser):
        raise openai_error('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    if use_tools and engine.kind == "sglang" and not engine.tool_parser:
        use_tools = False
    kwargs = request.get("chat_template_kwargs") or {}
    thinking = kwargs.get("enable_thinking", True) is not False
    if thinking and engine.reasoning_parser:
        answer.reasoning = f"Thinking about: {user_text}"
    if use_tools and last.get("role") == "tool":
        text = f"Result: {message_text(last)}"
    elif use_tools:
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools if t.get("function", {}).get("name") == wanted), None) if wanted else \
            next((t for t in tools if t.get("function", {}).get("name", "\0") in user_text), None)
        if tool is not None:
            answer.tool_call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                "function": {"name": tool["function"]["name"],
                                             "arguments": json.dumps(tool_arguments(tool, user_text))}}
            answer.finish = "tool_calls"
            return answer
        text = f"Echo: {user_text}"
    elif user_text.startswith("/bench ") and user_text[7:].strip().isdigit():
        answer.words = bench_words(int(user_text[7:].strip()))
        return answer
    else:
        text = json_answer(request.get("response_format"), user_text) or f"Echo: {user_text}"
    if thinking and not engine.reasoning_parser and engine.inline_thinking:
        text = f"<think>Thinking about: {user_text}</think> {text}"
    answer.words = text.split(" ")
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    if isinstance(limit, int) and 0 < limit < len(answer.words):
        answer.words = answer.words[:limit]
        answer.finish = "length"
    return answer


def instance_of(schema: object, text: str, depth: int = 0) -> object:
    """A value the JSON schema accepts, made from the prompt's text (what guided decoding would force)."""
    if not isinstance(schema, dict) or depth > 8:
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance_of(schema[key][0], text, depth + 1)
    kind = schema.get("type", "string")
    kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: instance_of(sub, text, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [instance_of(schema.get("items") or {}, text, depth + 1)]
    if kind == "integer":
        return len(text.split())
    if kind == "number":
        return len(text.split()) / 2
    if kind == "boolean":
        return True
    return text


def json_answer(response_format: object, user_text: str) -> str | None:
    """The answer's text under a response_format (None: free text)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise openai_error("response_format.json_schema.schema: Field required")
        return json.dumps(instance_of(spec["schema"], user_text))
    if kind == "json_object":
        return json.dumps({"answer": f"Echo: {user_text}"})
    if kind not in (None, "text"):
        raise openai_error("response_format.type: Input should be 'text', 'json_object' or 'json_schema'")
    return None


# --- vLLM's routes outside /v1: plausible small answers (each would run on the GPUs) -------------------


def words_of(request: dict, *fields: str) -> list[str]:
    """The whitespace words of the first field present (a string, or a list of strings), or of the messages."""
    for field in fields:
        value = request.get(field)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return " ".join(v for v in value if isinstance(v, str)).split()
    messages = request.get("messages")
    if isinstance(messages, list):
        return " ".join(message_text(m) for m in messages if isinstance(m, dict)).split()
    raise openai_error(f"one of {', '.join(fields)} is required")


def tokenize(engine: Engine, request: dict) -> dict:
    with engine.lock:
        tokens = [engine.vocabulary.setdefault(word, len(engine.vocabulary) + 1000) for word in
                  words_of(request, "prompt")]
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_model_len}


def detokenize(engine: Engine, request: dict) -> dict:
    tokens = request.get("tokens")
    if not isinstance(tokens, list):
        raise openai_error("tokens: Field required (a list of token ids)")
    with engine.lock:
        words = {token: word for word, token in engine.vocabulary.items()}
    return {"prompt": " ".join(words.get(token, "<unk>") for token in tokens)}


def similarity(a: str, b: str) -> float:
    left, right = set(a.lower().split()), set(b.lower().split())
    return round(len(left & right) / len(left | right), 4) if left | right else 0.0


def list_answer(engine: Engine, kind: str, data: list, tokens: int) -> dict:
    return {"id": f"{kind}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": engine.served_name, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}


def pooling(engine: Engine, request: dict) -> dict:
    words = words_of(request, "input")
    vector = [round(len(words) / 100, 4), round(sum(map(len, words)) / 1000, 4), 0.5, -0.25]
    return list_answer(engine, "pool", [{"index": 0, "object": "pooling", "data": vector}], len(words))


def score(engine: Engine, request: dict) -> dict:
    first, second = request.get("text_1") or request.get("queries"), request.get("text_2") or request.get("documents")
    if not isinstance(first, str) or not isinstance(second, (str, list)):
        raise openai_error("text_1 (a string) and text_2 (a string or a list) are required")
    seconds = [second] if isinstance(second, str) else [str(text) for text in second]
    data = [{"index": i, "object": "score", "score": similarity(first, text)} for i, text in enumerate(seconds)]
    return list_answer(engine, "score", data, len(first.split()) + sum(len(t.split()) for t in seconds))


def rerank(engine: Engine, request: dict) -> dict:
    query, documents = request.get("query"), request.get("documents")
    if not isinstance(query, str) or not isinstance(documents, list):
        raise openai_error("query (a string) and documents (a list) are required")
    results = [{"index": i, "document": {"text": str(text)}, "relevance_score": similarity(query, str(text))}
               for i, text in enumerate(documents)]
    results.sort(key=lambda result: -result["relevance_score"])
    top = request.get("top_n")
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": engine.served_name,
            "usage": {"total_tokens": len(query.split()) + sum(len(str(d).split()) for d in documents)},
            "results": results[:top] if isinstance(top, int) and top > 0 else results}


def classify(engine: Engine, request: dict) -> dict:
    words = words_of(request, "input")
    positive = round(min(0.99, 0.5 + 0.1 * sum(w.lower() in ("good", "great", "fine") for w in words)), 4)
    data = [{"index": 0, "label": "positive" if positive > 0.5 else "negative",
             "probs": [round(1 - positive, 4), positive], "num_classes": 2}]
    return list_answer(engine, "classify", data, len(words))


OPEN_VLLM_ROUTES = {"/tokenize": tokenize, "/detokenize": detokenize, "/pooling": pooling, "/score": score,
                    "/rerank": rerank, "/classify": classify}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every keep-alive response waits ~40 ms for a delayed ACK
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log: it would only show the requests, never the headers

    # -- plumbing
    def send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self, path: str) -> bool:
        """The engine's own check, where it makes it (see the module's docstring); else a 401."""
        engine = self.server.engine
        key = engine.api_key
        if not key:
            return True
        given = self.headers.get("Authorization") or ""
        if engine.kind == "vllm":
            if not path.startswith(("/v1", "/v2", "/inference")):
                return True
            scheme, _, token = given.partition(" ")  # vLLM: the scheme in any case
            if scheme.lower() == "bearer" and hmac.compare_digest(token.encode("latin-1"), key.encode()):
                return True
        elif path.startswith(("/health", "/metrics")) or given == f"Bearer {key}":
            return True
        self.send_json(401, {"error": "Unauthorized"})
        return False

    # -- routes
    def do_HEAD(self) -> None:
        health = self.path.split("?")[0] == "/health"
        self.send_response((200 if self.server.engine.ready else 503) if health else 405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        engine = self.server.engine
        path = self.path.split("?")[0]
        if not self.authorized(path):
            return
        vllm = engine.kind == "vllm"
        if path == "/health":
            self.send_text(200 if engine.ready else 503, "")
        elif path == "/metrics":
            if not engine.metrics_enabled:
                self.send_json(404, {"detail": "Not Found"})
            else:
                self.send_text(200, self.metrics(), "text/plain; version=0.0.4")
        elif path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{
                "id": engine.served_name, "object": "model", "created": int(time.time()),
                "owned_by": engine.kind, "root": engine.model_path, "max_model_len": engine.max_model_len}]})
        elif vllm and path == "/version":
            self.send_json(200, {"version": engine.version})
        elif vllm and path == "/ping":
            self.send_text(200, "")
        elif vllm and path == "/load":
            self.send_json(200, {"server_load": engine.running})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        engine = self.server.engine
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if not self.authorized(path):
            return
        if path == "/v1/chat/completions" or (engine.kind == "vllm" and path == "/invocations"):
            self.chat(engine, raw)  # /invocations: the same completion, and vLLM asks no key for it
        elif engine.kind == "vllm" and path == "/ping":
            self.send_text(200, "")
        elif engine.kind == "vllm" and path in OPEN_VLLM_ROUTES:
            try:
                request = json.loads(raw or b"{}")
                if not isinstance(request, dict):
                    raise openai_error("The request body must be a JSON object")
                self.send_json(200, OPEN_VLLM_ROUTES[path](engine, request))
            except json.JSONDecodeError as error:
                self.send_json(400, {"object": "error", "message": f"Invalid JSON: {error}", "code": 400})
            except BadRequest as error:
                self.send_json(error.status, error.body)
        else:
            self.send_json(404, {"detail": "Not Found"})

    def chat(self, engine: Engine, raw: bytes) -> None:
        if not engine.ready:
            self.send_json(503, {"object": "error", "message": "The server is starting", "code": 503})
            return
        try:
            request = json.loads(raw or b"null")
            if not isinstance(request, dict):
                raise openai_error("The request body must be a JSON object")
            answer = plan_answer(engine, request)
        except json.JSONDecodeError as error:
            self.send_json(400, {"object": "error", "message": f"Invalid JSON: {error}", "code": 400})
            return
        except BadRequest as error:
            self.send_json(error.status, error.body)
            return
        with engine.lock:
            engine.requests += 1
            engine.waiting += 1
            number = engine.requests
            if engine.request_log:
                last_user = next((message_text(m) for m in reversed(request["messages"])
                                  if isinstance(m, dict) and m.get("role") == "user"), "")
                with open(engine.request_log, "a") as log:
                    log.write(json.dumps(last_user) + "\n")
        if not self.take_slot(engine):
            return  # the client hung up while its request waited
        try:
            with engine.lock:
                engine.prompt_tokens += answer.prompt_tokens
            if engine.flaky and number % engine.flaky == 0:
                self.fail(number // engine.flaky)
                return
            done = self.stream(engine, request, answer) if request.get("stream") else self.complete(engine, answer)
            if done:
                with engine.lock:
                    engine.succeeded += 1
        finally:
            engine.free_slot()

    def take_slot(self, engine: Engine) -> bool:
        """Wait for one of the engine's --max-num-seqs slots, first come first served (the engines'
        scheduling); False if the client left meanwhile."""
        turn = threading.Event()
        with engine.lock:
            if engine.running < engine.max_running and not engine.queue:
                engine.waiting -= 1
                engine.running += 1
                return True
            engine.queue.append(turn)
        while not turn.wait(0.02):
            if self.client_gone():
                with engine.lock:
                    if not turn.is_set():  # else the slot was just handed over: give it on
                        engine.queue.remove(turn)
                        engine.waiting -= 1
                        return False
                engine.free_slot()
                return False
        return True

    def client_gone(self) -> bool:
        """The client closed its connection (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def generate(self, engine: Engine, tokens: int) -> bool:
        """The time `tokens` take at token_delay each; False if the client left meanwhile (aborted)."""
        if not engine.token_delay:
            return True
        end = time.monotonic() + tokens * engine.token_delay
        while (left := end - time.monotonic()) > 0:
            if self.client_gone():
                return False
            time.sleep(min(left, 0.01))
        return not self.client_gone()

    def fail(self, failure: int) -> None:
        """An engine in trouble: a 500 from its engine core, or the connection dropped without an answer."""
        if failure % 2:
            self.send_json(500, {"object": "error", "message": "EngineCore encountered an issue. See stack trace "
                                 "(above) for the root cause.", "type": "InternalServerError", "param": None,
                                 "code": 500})
            return
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        self.close_connection = True
        self.connection.close()

    def reasoning_fields(self, engine: Engine, text: str) -> dict:
        if engine.kind == "vllm":
            return {"reasoning": text, "reasoning_content": text}
        return {"reasoning_content": text}

    def complete(self, engine: Engine, answer: Answer) -> bool:
        if not self.generate(engine, len(answer.words) + (1 if answer.tool_call else 0)):
            return False
        message: dict = {"role": "assistant", "content": " ".join(answer.words) if answer.words else None}
        if answer.reasoning:
            message.update(self.reasoning_fields(engine, answer.reasoning))
        if answer.tool_call:
            message["tool_calls"] = [answer.tool_call]
        completion = len(answer.words) + (1 if answer.tool_call else 0)
        with engine.lock:
            engine.generation_tokens += completion
        self.send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": engine.served_name,
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": answer.prompt_tokens + completion},
        })
        return True

    def stream(self, engine: Engine, request: dict, answer: Answer) -> bool:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": engine.served_name}
        token_delay = engine.token_delay
        prefix = json.dumps(head)[:-1] + ', "choices": [{"index": 0, "delta": '
        write = self.wfile.write

        def send(delta: dict, finish: str | None = None) -> None:
            payload = (f"data: {prefix}{json.dumps(delta)}, \"logprobs\": null, \"finish_reason\": "
                       f"{json.dumps(finish)}}}]}}\n\n").encode()
            write(b"%x\r\n%s\r\n" % (len(payload), payload))

        send({"role": "assistant", "content": ""})
        sent = 0
        if answer.reasoning:
            for word in answer.reasoning.split(" "):
                send(self.reasoning_fields(engine, word + " "))
        if answer.tool_call:
            call = answer.tool_call
            send({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                  "function": {"name": call["function"]["name"], "arguments": ""}}]})
            arguments = call["function"]["arguments"]
            middle = max(1, len(arguments) // 2)
            for part in (arguments[:middle], arguments[middle:]):
                send({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            sent = 1
        last = len(answer.words) - 1
        for i, word in enumerate(answer.words):
            send({"content": word if i == last else word + " "})
            sent += 1
            if token_delay and not self.generate(engine, 1):
                return False
        send({}, answer.finish)
        with engine.lock:
            engine.generation_tokens += sent
        options = request.get("stream_options") or {}
        if options.get("include_usage"):
            usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": sent,
                     "total_tokens": answer.prompt_tokens + sent}
            payload = f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode()
            write(b"%x\r\n%s\r\n" % (len(payload), payload))
        write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        return True

    def metrics(self) -> str:
        engine = self.server.engine
        label = f'{{model_name="{engine.served_name}"}}'
        with engine.lock:
            if engine.kind == "vllm":
                rows = [("vllm:num_requests_running", "gauge", engine.running),
                        ("vllm:num_requests_waiting", "gauge", engine.waiting),
                        ("vllm:kv_cache_usage_perc", "gauge", min(1.0, engine.running * 0.05)),
                        ("vllm:prompt_tokens_total", "counter", engine.prompt_tokens),
                        ("vllm:generation_tokens_total", "counter", engine.generation_tokens),
                        ("vllm:request_success_total", "counter", engine.succeeded)]
            else:
                rows = [("sglang:num_running_reqs", "gauge", engine.running),
                        ("sglang:num_queue_reqs", "gauge", engine.waiting),
                        ("sglang:token_usage", "gauge", min(1.0, engine.running * 0.05)),
                        ("sglang:gen_throughput", "gauge", 0.0),
                        ("sglang:prompt_tokens_total", "counter", engine.prompt_tokens),
                        ("sglang:generation_tokens_total", "counter", engine.generation_tokens)]
        lines = []
        for name, kind, value in rows:
            lines += [f"# HELP {name} {name}", f"# TYPE {name} {kind}", f"{name}{label} {value}"]
        return "\n".join(lines) + "\n"


if __name__ == "__main__":  # `python fake_engine.py vllm serve ...` / `... sglang ...` for manual runs
    kind, rest = sys.argv[1], sys.argv[2:]
    sys.exit(main_vllm(rest) if kind == "vllm" else main_sglang(rest))
