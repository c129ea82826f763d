"""The family table: every family the project supports, from realistic config.json facts, checked
against a golden file (UPDATE_GOLDEN=1 rewrites it after a deliberate change). tests/golden/families.json
is the one place the table's parser names are asserted: review its diff, it is the table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jupyter_hpcllm.planning.families import FAMILIES, Family, detect_family, family_from_name

GOLDEN = Path(__file__).parent / "golden" / "families.json"

# name: (model_type, architecture, a characteristic piece of the chat template)
MODELS = {
    "gpt-oss-120b": ("gpt_oss", "GptOssForCausalLM", "<|start|>assistant<|channel|>"),
    "Qwen3-8B": ("qwen3", "Qwen3ForCausalLM", "{% if enable_thinking %}<tool_call>"),
    "Qwen3-30B-A3B": ("qwen3_moe", "Qwen3MoeForCausalLM", "enable_thinking <tool_call>"),
    "Qwen3-30B-A3B-Thinking-2507": ("qwen3_moe", "Qwen3MoeForCausalLM", "<think> <tool_call>"),
    "Qwen3-Coder-30B-A3B-Instruct": ("qwen3_moe", "Qwen3MoeForCausalLM", "<tool_call><function=f><parameter=p>"),
    "Qwen3-Next-80B-A3B-Instruct": ("qwen3_next", "Qwen3NextForCausalLM", "<tool_call>"),
    "Qwen3-Next-80B-A3B-Thinking": ("qwen3_next", "Qwen3NextForCausalLM", "<think><tool_call>"),
    "QwQ-32B": ("qwen2", "Qwen2ForCausalLM", "<think> <tool_call>"),
    "Qwen2.5-72B-Instruct": ("qwen2", "Qwen2ForCausalLM", "<tool_call>"),
    "DeepSeek-R1-0528": ("deepseek_v3", "DeepseekV3ForCausalLM", "<｜tool▁calls▁begin｜><think>"),
    "DeepSeek-V3-0324": ("deepseek_v3", "DeepseekV3ForCausalLM", "<｜tool▁calls▁begin｜>"),
    "DeepSeek-V3.1-Terminus": ("deepseek_v3", "DeepseekV3ForCausalLM", "<｜tool▁calls▁begin｜>"),
    "DeepSeek-V3.2-Exp": ("deepseek_v32", "DeepseekV32ForCausalLM", "<｜tool▁calls▁begin｜>"),
    "Llama-3.3-70B-Instruct": ("llama", "LlamaForCausalLM", "<|start_header_id|>"),
    "Llama-4-Scout-17B-16E-Instruct": ("llama4", "Llama4ForConditionalGeneration", "<|header_start|>"),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistral3", "Mistral3ForConditionalGeneration", "[TOOL_CALLS]"),
    "Devstral-Small-2507": ("mistral", "MistralForCausalLM", "[TOOL_CALLS]"),
    "Magistral-Small-2509": ("mistral3", "Mistral3ForConditionalGeneration", "[THINK][TOOL_CALLS]"),
    "Kimi-K2-Instruct-0905": ("kimi_k2", "DeepseekV3ForCausalLM", "<|tool_calls_section_begin|>"),
    "Kimi-K2-Thinking": ("kimi_k2", "DeepseekV3ForCausalLM", "<|tool_calls_section_begin|>"),
    "GLM-4.5-Air": ("glm4_moe", "Glm4MoeForCausalLM", "[gMASK]<sop>"),
    "GLM-4.6": ("glm4_moe", "Glm4MoeForCausalLM", "[gMASK]<sop>"),
    "GLM-4.7": ("glm4_moe", "Glm4MoeForCausalLM", "[gMASK]<sop>"),
    "MiniMax-M2": ("minimax_m2", "MiniMaxM2ForCausalLM", "<minimax:tool_call>"),
    "gemma-3-27b-it": ("gemma3", "Gemma3ForConditionalGeneration", "<start_of_turn>"),
    "phi-4": ("phi3", "Phi3ForCausalLM", "<|im_sep|>"),
    "Phi-4-mini-instruct": ("phi3", "Phi3ForCausalLM", "<|tool|>"),
    "Hermes-3-Llama-3.1-8B": ("llama", "LlamaForCausalLM", "<tool_call>"),
    "granite-3.3-8b-instruct": ("granite", "GraniteForCausalLM", "<|start_of_role|>"),
    "granite-4.0-h-small": ("granitemoehybrid", "GraniteMoeHybridForCausalLM", "<|start_of_role|>"),
}


def _row(family: Family | None) -> dict[str, object] | None:
    if family is None:
        return None
    return {"family": family.name, **{
        engine: [family.parsers(engine).tool, family.parsers(engine).reasoning,
                 list(family.parsers(engine).extra_args)] for engine in ("vllm", "sglang")}}


def _golden() -> dict[str, dict[str, object]]:
    return json.loads(GOLDEN.read_text())


def test_family_table_matches_golden():
    table = {name: _row(detect_family(model_type, (architecture,), template, name))
             for name, (model_type, architecture, template) in MODELS.items()}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    assert table == _golden()


def test_the_name_alone_gives_the_same_table():
    """What `hpcllm script` uses before it has read config.json: the model's directory name."""
    assert {name: _row(family_from_name(name)) for name in MODELS} == _golden()


def test_the_golden_table_covers_every_family():
    assert {family.name for _, family in FAMILIES} <= {row["family"] for row in _golden().values()}


def test_config_beats_a_misleading_name():
    # A fine-tune named after nothing we know, but with a Qwen3 config and a Coder template.
    found = detect_family("qwen3_moe", ("Qwen3MoeForCausalLM",), "<function=x><parameter=y>", "lab-finetune-v2")
    assert found.name == "qwen3-coder"
    assert family_from_name("lab-finetune-v2") is None


def test_template_markers_when_the_config_says_nothing():
    assert detect_family("", (), "<|start|><|channel|>analysis", "my-model").name == "gpt-oss"
    assert detect_family("", (), "<minimax:tool_call>", "my-model").name == "minimax-m2"
    assert detect_family("", (), "plain", "my-model") is None


def test_kimi_needs_trust_remote_code_on_vllm():
    kimi = detect_family("kimi_k2", ("DeepseekV3ForCausalLM",), "", "Kimi-K2-Instruct")
    assert "--trust-remote-code" in kimi.vllm.extra_args


def test_llama_and_gemma_get_vllms_tool_chat_template():
    assert detect_family("llama", ("LlamaForCausalLM",), "", "Llama-3.1-8B-Instruct").vllm.tool_chat_template
    assert detect_family("gemma3", ("Gemma3ForConditionalGeneration",), "", "gemma-3-27b-it").vllm.tool_chat_template
