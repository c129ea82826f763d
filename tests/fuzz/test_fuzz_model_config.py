"""Property: whatever a model directory's config.json (and chat template) holds, reading the model's facts,
summarising it (`hpcllm models`) and planning a launch from it (`hpcllm plan`) give facts, a summary and
a plan, or a clean HpcllmError: never another exception."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import FUZZ, below
from hypothesis import given
from hypothesis import strategies as st

from jupyter_hpcllm import views
from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.discovery.models import list_models, model_facts, summarize
from jupyter_hpcllm.edge.files import FileInfo
from jupyter_hpcllm.errors import HpcllmError
from jupyter_hpcllm.planning.plan import plan_launch

pytestmark = pytest.mark.fuzz

ROOT = "/models"
SIZING_KEYS = ["num_attention_heads", "num_key_value_heads", "hidden_size", "num_hidden_layers",
               "max_position_embeddings", "head_dim", "vocab_size", "intermediate_size", "kv_lora_rank",
               "qk_rope_head_dim", "num_local_experts", "num_experts_per_tok"]
OTHER_KEYS = ["architectures", "model_type", "torch_dtype", "quantization_config", "text_config", "chat_template",
              "rope_scaling", "tie_word_embeddings"]


class DictFiles:
    """A model root in memory: {directory: {file name: bytes or a size}} (the Files protocol)."""

    def __init__(self, tree: dict[str, dict[str, bytes | int]]) -> None:
        self.tree = tree

    def list(self, path: str) -> list[FileInfo]:
        path = path.rstrip("/")
        if path == ROOT:
            return [FileInfo(name, 4096, 1.0, True, False) for name in self.tree]
        parent, _, name = path.rpartition("/")
        if parent != ROOT or name not in self.tree:
            raise FileNotFoundError(path)
        return [FileInfo(f, len(data) if isinstance(data, bytes) else data, 1.0, False, False)
                for f, data in self.tree[name].items()]

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        directory, _, file = path.rpartition("/")
        _, _, name = directory.rpartition("/")
        data = self.tree.get(name, {}).get(file)
        if not isinstance(data, bytes):
            raise FileNotFoundError(path)
        return data[:limit]


# --- config.json -------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-10, 200), st.integers(),
    st.sampled_from([0, 1, 8, 32, 64, 128, 4096, 131072, 10**18, 10**400, -(10**400), 2**63]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.5, 32.0, -0.0]),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=10),
                         st.sampled_from(["32", "", "1e3", "bfloat16", "NaN", "qwen3", "gpt_oss", "deepseek_v3"]))
JSON_ANY = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(SIZING_KEYS + OTHER_KEYS + ["x"]), inner,
                                                  max_size=3)), max_leaves=4)


@functools.cache
def _value(key: str) -> st.SearchStrategy[Any]:
    """Mostly what the key should hold (at any magnitude), now and then anything."""
    right = {
        "architectures": st.lists(st.sampled_from(["Qwen3ForCausalLM", "GptOssForCausalLM", "LlamaForCausalLM",
                                                   "DeepseekV3ForCausalLM", "Llama4ForConditionalGeneration", ""]),
                                  max_size=2),
        "model_type": st.sampled_from(["qwen3", "gpt_oss", "llama", "deepseek_v3", "kimi_k2", "qwen3_moe", "", "x"]),
        "torch_dtype": st.sampled_from(["bfloat16", "float16", "float32", "auto", "int4"]),
        "quantization_config": st.dictionaries(st.sampled_from(["quant_method", "bits", "group_size"]),
                                               JSON_SCALARS, max_size=3),
        "text_config": st.dictionaries(st.sampled_from(SIZING_KEYS), NUMBERS, max_size=5),
    }.get(key, NUMBERS)
    return st.one_of(right, right, right, JSON_ANY)


CONFIG_KEYS = st.lists(st.sampled_from(SIZING_KEYS + OTHER_KEYS), max_size=9, unique=True)
NOT_AN_OBJECT = st.one_of(
    JSON_ANY.map(json.dumps), st.text(max_size=20),
    st.sampled_from(["", "{", "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                     '{"num_attention_heads": NaN}', '{"hidden_size": Infinity}', "\ufeff{}", "\x00"]))


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    kind = draw(below(20))
    if kind == 0:  # not an object, or not JSON
        return draw(NOT_AN_OBJECT)
    keys = draw(CONFIG_KEYS)
    config = {key: draw(_value(key)) for key in keys}
    return json.dumps(config)


TEMPLATES = st.one_of(st.none(), st.text(max_size=20), JSON_ANY, st.sampled_from([
    "<think>", "<|start|>assistant<|channel|>final<|message|>", [{"name": "default", "template": "<think>"}],
    [{"name": "x"}], ["not a dict"], [], [{"name": "default", "template": 5}]]))


MODEL_NAMES = st.sampled_from(["Qwen3-8B", "gpt-oss-120b", "Kimi-K2-Instruct", "Llama-3.1-8B", "my-finetune"])
SIZES = st.one_of(st.integers(0, 10**12), st.sampled_from([0, 1, 80_000_000_000, 10**15, 10**30]))
CONFIGS = config_texts()


@st.composite
def model_dirs(draw: st.DrawFn) -> tuple[str, dict[str, bytes | int]]:
    name = draw(MODEL_NAMES)
    files: dict[str, bytes | int] = {}
    if draw(below(10)):
        files["config.json"] = draw(CONFIGS).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        files["tokenizer_config.json"] = json.dumps({"chat_template": draw(TEMPLATES)}).encode("utf-8",
                                                                                                "surrogatepass")
    for i in range(draw(below(4))):
        files[f"model-{i:05d}.safetensors"] = draw(SIZES)
    return name, files


def _no_other_error(call: Any) -> Any:
    try:
        return call()
    except HpcllmError as error:
        assert str(error).strip()
        return None


@FUZZ
@given(model=model_dirs(), gpus=st.one_of(st.none(), st.integers(1, 8)),
       gpu_type=st.sampled_from([None, "a100", "h200"]), engine=st.sampled_from(["vllm", "sglang"]),
       context=st.sampled_from([None, "4096", "131072", "99999999999999999999999"]))
def test_any_config_json_gives_facts_a_summary_and_a_plan_or_a_clean_error(
        sandbox: Path, model: tuple[str, dict[str, bytes | int]], gpus: int | None, gpu_type: str | None,
        engine: str, context: str | None) -> None:
    name, files = model
    profile = load_profile("ebi", path=sandbox / "config.toml")
    from dataclasses import replace

    profile = replace(profile, model_root=ROOT)
    tree = DictFiles({name: files})
    facts = _no_other_error(lambda: model_facts(profile, tree, name, refresh=True))
    rows = _no_other_error(lambda: views.models_rows([summarize(profile, f) for f in list_models(profile, tree)]))
    assert rows is None or rows[0][0] == "MODEL"
    if facts is None:
        return
    summary = _no_other_error(lambda: summarize(profile, facts))
    assert summary is None or summary.facts is facts
    options = LaunchOptions(name, gpus=gpus, gpu_type=gpu_type, engine=engine,
                            engine_args=("--max-model-len", context) if context else ())
    plan = _no_other_error(lambda: plan_launch(profile, options, facts=facts))
    if plan is not None:
        assert views.plan_text(plan).startswith(plan.model)
        assert plan.script.startswith("#!/bin/bash\n")
