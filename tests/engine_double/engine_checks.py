"""The engine double's stricter start-up checks: custom tokenizer code, data parallel, speculative decoding,
and SGLang's `auto` parsers (detected from the chat template). fake_engine.py calls them; the SGLang stub
`sglang.srt.parser.template_detection` re-exports the detection functions.

Each check raises StartupError with the text the real engine prints (or, where the real text would not
help, a clear one in the engine's style). Stdlib only: it runs under the cluster's python3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

VLLM_SITE = "/usr/local/lib/python3.12/dist-packages/vllm"
SGLANG_SITE = "/sgl-workspace/sglang/python/sglang"
VLLM_SPECULATIVE_METHODS = ("ngram", "eagle", "eagle3", "medusa", "draft_model", "mtp", "suffix")
SGLANG_SPECULATIVE_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")
PYDANTIC_DOCS = "https://errors.pydantic.dev/2.12/v"


class StartupError(Exception):
    """Ends the process with exit code 1 after printing `lines` (as the engine's traceback would)."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[-1])
        self.lines = lines


# --- model directories ----------------------------------------------------------------------------------


def invalid_path(path: str) -> StartupError:
    return StartupError(
        "Traceback (most recent call last):",
        f'  File "{VLLM_SITE}/transformers_utils/config.py", line 512',
        f"ValueError: Invalid repository ID or local directory specified: '{path}'.",
    )


def load_config(path: str) -> dict:
    """A model directory's config.json, or the error both engines give for a path that is not a model."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise invalid_path(path)
    with open(config_path) as handle:
        config = json.load(handle)
    return config if isinstance(config, dict) else {}


def architectures_of(config: dict) -> list[str]:
    return [str(name) for name in config.get("architectures") or []] or ["?"]


def check_supported(config: dict, supported: Iterable[str]) -> None:
    architecture = architectures_of(config)[0]
    supported = list(supported)
    if architecture not in supported:
        raise StartupError(f"ValueError: Model architectures ['{architecture}'] are not supported for now. "
                           f"Supported architectures: {supported}")


def text_value(config: dict, key: str) -> Any:
    """A field of the config, or of its text_config (multimodal and some MoE configs nest it there)."""
    if config.get(key) is not None:
        return config[key]
    text = config.get("text_config")
    return text.get(key) if isinstance(text, dict) else None


def mtp_layers(config: dict) -> int:
    """How many built-in multi-token-prediction layers the model has (DeepSeek-V3/R1, GLM-4.5: 1)."""
    value = text_value(config, "num_nextn_predict_layers") or text_value(config, "mtp_num_hidden_layers")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- --trust-remote-code --------------------------------------------------------------------------------


def check_trust_remote_code(model_path: str, trusted: bool) -> None:
    """A tokenizer that is code from the model repository (tokenizer_config.json `auto_map`, as Kimi-K2 has)
    needs --trust-remote-code: transformers refuses to run it otherwise. A config.json `auto_map` alone does
    not (DeepSeek-V3 ships one, but both engines implement the model natively)."""
    if trusted or not read_json(os.path.join(model_path, "tokenizer_config.json")).get("auto_map"):
        return
    raise StartupError(
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/transformers/dynamic_module_utils.py", line 735, in '
        "resolve_trust_remote_code",
        f"ValueError: The repository for {model_path} contains custom code which must be executed to correctly "
        f"load the model. You can inspect the repository content at {model_path}.",
        "Please pass the argument `trust_remote_code=True` to allow custom code to be run.",
    )


# --- GPUs: tensor, pipeline and data parallel -----------------------------------------------------------


def check_gpus(kind: str, tp: int, pp: int, dp: int, available: int) -> None:
    """Every engine replica (data-parallel rank) takes tp × pp GPUs of its own."""
    world = tp * pp
    if kind == "vllm":
        if world > available:
            raise StartupError(f"ValueError: World size ({world}) is larger than the number of available "
                               f"GPUs ({available}) in this node. If this is intentional, please use Ray.")
        if world * dp > available:
            rank = available // world  # the first data-parallel rank whose GPUs are not there
            raise StartupError(
                f"(EngineCore_DP{rank} pid={os.getpid()}) ERROR [core.py:708] EngineCore failed to start: data "
                f"parallel rank {rank} of data_parallel_size={dp} needs GPUs {rank * world}..{(rank + 1) * world - 1} "
                f"(world size {world} each), but {available} are visible.",
                "Traceback (most recent call last):",
                f'  File "{VLLM_SITE}/v1/engine/utils.py", line 1041, in get_device_indices',
                "IndexError: list index out of range",
                "",
                "The above exception was the direct cause of the following exception:",
                "",
                "Traceback (most recent call last):",
                f'  File "{VLLM_SITE}/v1/engine/utils.py", line 1047, in get_device_indices',
                f"Exception: Error setting CUDA_VISIBLE_DEVICES: local range: [{rank * world}, "
                f"{(rank + 1) * world}) base value: \"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}\"",
            )
        return
    if tp * dp > available:
        detail = f"tp_size={tp}, dp_size={dp}" if dp > 1 else f"tp_size={tp}"
        raise StartupError(f"RuntimeError: CUDA error: invalid device ordinal ({detail}, visible GPUs={available})")


# --- speculative decoding: vLLM -------------------------------------------------------------------------


def json_argument(text: str) -> object:
    """vLLM's argparse type for a JSON-valued flag (--speculative-config): its message on a bad value."""
    import argparse

    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Value {text} cannot be converted to {json.loads}.") from error


def literal_choices(names: Iterable[str]) -> str:
    quoted = [f"'{name}'" for name in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def pydantic_error(model: str, location: str | None, message: str, kind: str, value: object) -> StartupError:
    """pydantic's ValidationError, as vLLM's config classes raise it."""
    shown = repr(value) if not isinstance(value, dict) else f"ArgsKwargs((), {value!r})"
    input_type = "ArgsKwargs" if isinstance(value, dict) and kind == "value_error" else type(value).__name__
    lines = ["Traceback (most recent call last):",
             f'  File "{VLLM_SITE}/engine/arg_utils.py", line 1690, in create_speculative_config',
             f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {model}"]
    if location:
        lines.append(location)
    lines += [f"  {message} [type={kind}, input_value={shown}, input_type={input_type}]",
              f"    For further information visit {PYDANTIC_DOCS}/{kind}"]
    return StartupError(*lines)


def speculative_value_error(spec: dict, message: str) -> StartupError:
    return pydantic_error("SpeculativeConfig", None, f"Value error, {message}", "value_error", spec)


def positive_int(spec: dict, key: str) -> int | None:
    """pydantic's lax int: an int, or a string of one; then Field(gt=0)."""
    value = spec.get(key)
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise pydantic_error("SpeculativeConfig", key, "Input should be a valid integer, unable to parse string "
                                 "as an integer", "int_parsing", value) from None
    elif isinstance(value, bool) or not isinstance(value, int):
        raise pydantic_error("SpeculativeConfig", key, "Input should be a valid integer", "int_type", value)
    if number <= 0:
        raise pydantic_error("SpeculativeConfig", key, "Input should be greater than 0", "greater_than", value)
    return number


def check_draft_kind(engine_name: str, method: str, draft_path: str, draft: dict) -> None:
    """EAGLE-3 wants an EAGLE-3 head; EAGLE an EAGLE (1) head. Their architectures say which."""
    names = architectures_of(draft)
    eagle3 = any("Eagle3" in name for name in names)
    eagle = any("Eagle" in name for name in names) and not eagle3
    if method.lower() == "eagle3" and not eagle3:
        expected = "an EAGLE-3 draft head (architectures such as LlamaForCausalLMEagle3 or Eagle3LlamaForCausalLM)"
    elif method.lower() == "eagle" and not eagle:
        expected = "an EAGLE draft head (architectures such as LlamaForCausalLMEagle or EagleLlamaForCausalLM)"
    else:
        return
    message = f"{engine_name} {method} needs {expected}, but the draft model at {draft_path} has architectures {names}."
    raise StartupError(f"ValueError: {message}")


def check_vocab(target: dict, draft: dict) -> str | None:
    """The vLLM text when the draft's vocabulary differs from the target's; None when they agree."""
    target_size, draft_size = text_value(target, "vocab_size"), text_value(draft, "vocab_size")
    if target_size == draft_size:
        return None
    return (f"Target and draft model should have the same vocabulary size. Target model vocab_size={target_size}. "
            f"Draft model vocab_size={draft_size}. Using models with different tokenizers can cause out-of-bounds "
            "errors during speculative decoding.")


def check_vllm_speculative(spec: object, model_path: str, target: dict, supported: Iterable[str]) -> str | None:
    """--speculative-config, checked as vLLM's SpeculativeConfig checks it. The log line, or None when unset."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise pydantic_error("VllmConfig", "speculative_config", "Input should be a valid dictionary or instance of "
                             "SpeculativeConfig", "model_type", spec)
    method, model = spec.get("method"), spec.get("model")
    if method is not None and method not in VLLM_SPECULATIVE_METHODS:
        raise pydantic_error("SpeculativeConfig", "method",
                             f"Input should be {literal_choices(VLLM_SPECULATIVE_METHODS)}", "literal_error", method)
    if model is not None and not isinstance(model, str):
        raise pydantic_error("SpeculativeConfig", "model", "Input should be a valid string", "string_type", model)
    tokens = positive_int(spec, "num_speculative_tokens")
    if method is None:  # vLLM guesses the method from the draft's name
        lowered = (model or "").lower()
        method = "eagle" if "eagle-" in lowered else "eagle3" if "eagle3" in lowered else "draft_model"
    if method == "mtp":
        layers = mtp_layers(target)
        if model is None and not layers:
            raise speculative_value_error(spec, f"method='mtp' needs a model with built-in multi-token prediction "
                                          f"layers, but {model_path} has none (num_nextn_predict_layers is 0 or "
                                          "missing).")
        model = model or model_path
        tokens = tokens or layers or None
    if method in ("ngram", "suffix"):
        model = None
    elif model is None:
        if tokens is not None:
            raise speculative_value_error(spec, "num_speculative_tokens was provided but without speculative model.")
        raise speculative_value_error(spec, "num_speculative_tokens must be provided with speculative model unless "
                                      "the draft model config contains an n_predict parameter.")
    elif os.path.realpath(model) != os.path.realpath(model_path):
        draft = load_config(model)
        check_supported(draft, supported)
        check_draft_kind("vLLM speculative method", method, model, draft)
        n_predict = draft.get("n_predict")
        if tokens is None and isinstance(n_predict, int) and n_predict > 0:
            tokens = n_predict
        mismatch = check_vocab(target, draft) if method == "draft_model" else None
        if mismatch:
            raise speculative_value_error(spec, mismatch)
    if tokens is None:
        raise speculative_value_error(spec, "num_speculative_tokens must be provided with speculative model unless "
                                      "the draft model config contains an n_predict parameter.")
    return f"Speculative decoding: method={method}, model={model}, num_speculative_tokens={tokens}"


# --- speculative decoding: SGLang -----------------------------------------------------------------------


def sglang_error(message: str) -> StartupError:
    return StartupError(
        "Traceback (most recent call last):",
        f'  File "{SGLANG_SITE}/srt/server_args.py", line 2410, in _handle_speculative_decoding',
        f"ValueError: {message}",
    )


def check_sglang_speculative(args: Any, model_path: str, target: dict, supported: Iterable[str]) -> str | None:
    """--speculative-algorithm and its companions, checked as SGLang's ServerArgs does. The log line, or None."""
    algorithm, draft_path = args.speculative_algorithm, args.speculative_draft_model_path
    if algorithm is None:
        if draft_path is not None:
            raise sglang_error("--speculative-draft-model-path is set but --speculative-algorithm is not: pass "
                               "--speculative-algorithm EAGLE, EAGLE3 or STANDALONE to use a draft model.")
        return None
    for name in ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise sglang_error(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    layers = mtp_layers(target)
    if algorithm == "NEXTN":
        if not layers:
            raise sglang_error(f"NEXTN speculative decoding needs a model with built-in MTP (NextN) layers, but "
                               f"{model_path} has none (num_nextn_predict_layers is 0 or missing).")
        algorithm = "EAGLE"  # SGLang runs NEXTN as EAGLE on the model's own MTP layers
    if algorithm == "NGRAM":
        draft_path = None
    elif draft_path is None:
        if algorithm != "EAGLE":
            raise sglang_error(f"{algorithm} speculative decoding requires setting --speculative-draft-model-path.")
        if not layers:
            raise sglang_error(f"EAGLE speculative decoding requires setting --speculative-draft-model-path: the model "
                               f"at {model_path} has no built-in MTP layers (num_nextn_predict_layers is 0 or "
                               "missing).")
        draft_path = model_path
    elif algorithm == "EAGLE" and os.path.realpath(draft_path) == os.path.realpath(model_path):
        if not layers:
            raise sglang_error(f"EAGLE with the model itself as its draft needs built-in MTP layers, but {model_path} "
                               "has none (num_nextn_predict_layers is 0 or missing).")
    else:
        draft = load_config(draft_path)
        check_supported(draft, supported)
        if algorithm in ("EAGLE", "EAGLE3"):
            check_draft_kind("SGLang speculative algorithm", algorithm, draft_path, draft)
        elif algorithm == "STANDALONE":
            mismatch = check_vocab(target, draft)
            if mismatch:
                raise sglang_error(mismatch)
    return (f"Speculative decoding: algorithm={algorithm}, draft_model_path={draft_path}, "
            f"num_steps={args.speculative_num_steps}, eagle_topk={args.speculative_eagle_topk}, "
            f"num_draft_tokens={args.speculative_num_draft_tokens}")


# --- SGLang `auto` parsers: detection from the chat template --------------------------------------------

# (parser, markers that must all be in the template or the tokenizer's added tokens), first match wins.
TOOL_CALL_RULES = (
    ("gpt-oss", ("<|channel|>",)),
    ("kimi_k2", ("<|tool_calls_section_begin|>",)),
    ("minimax-m2", ("<minimax:tool_call>",)),
    ("deepseekv32", ("<｜DSML｜function_calls>",)),
    ("deepseekv31", ("<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>")),
    ("glm45", ("[gMASK]<sop>",)),
    ("qwen3_coder", ("<function=", "<parameter=")),
    ("qwen", ("enable_thinking",)),
)
REASONING_RULES = (
    ("gpt-oss", ("<|channel|>",)),
    ("kimi_k2", ("<|tool_calls_section_begin|>",)),
    ("glm45", ("[gMASK]<sop>",)),
    ("minimax", ("<minimax:tool_call>",)),
    ("qwen3", ("enable_thinking",)),
    ("deepseek-r1", ("<think>",)),
)


def _vocabulary(tokenizer: object) -> set[str]:
    if tokenizer is None:
        return set()
    if hasattr(tokenizer, "get_vocab"):
        return set(tokenizer.get_vocab())
    return {str(token) for token in tokenizer}  # type: ignore[union-attr]


def _match(rules: tuple, template: str | None, tokenizer: object) -> str | None:
    if template is None:
        return None
    vocabulary = _vocabulary(tokenizer)
    for name, markers in rules:
        if all(marker in template or marker in vocabulary for marker in markers):
            return name
    return None


def detect_tool_call_parser(template: str | None, tokenizer: object = None, reasoning_config: object = None,
                            force_reasoning: bool = False) -> str | None:
    """The tool-call parser the chat template's markers imply (SGLang's rules, shortened), or None."""
    return _match(TOOL_CALL_RULES, template, tokenizer)


def detect_reasoning_parser(template: str | None, tokenizer: object = None, reasoning_config: object = None,
                            force_reasoning: bool = False) -> str | None:
    """The reasoning parser the chat template's markers imply (SGLang's rules, shortened), or None."""
    return _match(REASONING_RULES, template, tokenizer)


def chat_template(model_path: str, explicit: str | None = None) -> tuple[str | None, set[str]]:
    """The template SGLang detects from (an explicit .jinja file, else the tokenizer's), and the added tokens."""
    config = read_json(os.path.join(model_path, "tokenizer_config.json"))
    added = {str(token.get("content")) for token in (config.get("added_tokens_decoder") or {}).values()
             if isinstance(token, dict)}
    if explicit and explicit.endswith(".jinja") and os.path.isfile(explicit):
        with open(explicit) as handle:
            return handle.read(), added
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one, else the first
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str):
        return template, added
    jinja = os.path.join(model_path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as handle:
            return handle.read(), added
    return None, added


def resolve_auto_parsers(args: Any, model_path: str, registered: dict[str, Iterable[str]]) -> list[str]:
    """Replace `auto` in args.tool_call_parser / args.reasoning_parser by the detected parser (or None: off).
    Returns SGLang's log lines about it. `registered` maps "tool_call_parser"/"reasoning_parser" to names."""
    needs = [attr for attr in ("tool_call_parser", "reasoning_parser") if getattr(args, attr) == "auto"]
    if not needs:
        return []
    template, added = chat_template(model_path, args.chat_template)
    lines = []
    for attr in needs:
        detect, label = ((detect_tool_call_parser, "tool-call parser") if attr == "tool_call_parser"
                         else (detect_reasoning_parser, "reasoning parser"))
        found = detect(template, added)
        if found and found not in set(registered[attr]):
            found = None  # this image's engine does not have it
        flag = "--" + attr.replace("_", "-")
        if found:
            lines.append(f"Auto-detected {flag} as '{found}' from chat template")
        else:
            lines.append(f"{flag}=auto specified but could not detect {label} from chat template. "
                         f"Disabling {label}.")
        setattr(args, attr, found)
    return lines
