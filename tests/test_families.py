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
    # The notes' corrections (vLLM 0.33.0 / SGLang 0.5.23) and the families the first table lacked.
    "Qwen3-30B-A3B-Instruct-2507": ("qwen3_moe", "Qwen3MoeForCausalLM", "<tool_call>"),
    "Qwen3-VL-30B-A3B-Instruct": ("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", "<tool_call>"),
    "Qwen3-VL-8B-Thinking": ("qwen3_vl", "Qwen3VLForConditionalGeneration", "<think><tool_call>"),
    "Qwen3.5-35B-A3B": ("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", "<function=f><parameter=p>"),
    "Qwen3.6-27B": ("qwen3_5", "Qwen3_5ForConditionalGeneration", "<function=f><parameter=p>"),
    "DeepSeek-R1-Distill-Qwen-14B": ("qwen2", "Qwen2ForCausalLM", "<think>"),
    "DeepSeek-R1-Distill-Llama-70B": ("llama", "LlamaForCausalLM", "<think>"),
    "DeepSeek-V3.2": ("deepseek_v32", "DeepseekV32ForCausalLM", "<｜DSML｜function_calls>"),
    "DeepSeek-V4": ("deepseek_v4", "DeepseekV4ForCausalLM", ""),
    "DeepSeek-V4.1": ("deepseek_v4", "DeepseekV4ForCausalLM", ""),
    "Kimi-K2.5": ("kimi_k25", "KimiK25ForConditionalGeneration", "<|tool_calls_section_begin|>"),
    "Kimi-K3": ("kimi_k3", "KimiK3ForCausalLM", "<|tool_calls_section_begin|>"),
    "GLM-5": ("glm_moe_dsa", "GlmMoeDsaForCausalLM", "[gMASK]<sop>"),
    "MiniMax-M3": ("minimax_m3", "MiniMaxM3ForCausalLM", "<minimax:tool_call>"),
    "Seed-OSS-36B-Instruct": ("seed_oss", "SeedOssForCausalLM", "<seed:tool_call>"),
    "Hunyuan-A13B-Instruct": ("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", "<tool_calls>"),
    "Hy3-Instruct": ("hy_v3", "HyV3ForCausalLM", ""),
    "Hy4-Instruct": ("hy_v4", "HyV4ForCausalLM", ""),
    "ERNIE-4.5-21B-A3B-PT": ("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", ""),
    "Step-3": ("step3_vl", "Step3VLForConditionalGeneration", ""),
    "Step-3.5-Flash": ("step3p5", "Step3p5ForCausalLM", ""),
    "gemma-4-31b-it": ("gemma4", "Gemma4ForConditionalGeneration", "<start_of_turn>"),
    "Olmo-3-7B-Think": ("olmo3", "Olmo3ForCausalLM", "<think>"),
    "NVIDIA-Nemotron-3-Nano-30B-A3B": ("nemotron_h", "NemotronHForCausalLM", "<think>"),
    "Phi-4-reasoning-plus": ("phi3", "Phi3ForCausalLM", "<think>"),
    "Ministral-3-14B-Reasoning-2512": ("mistral3", "Mistral3ForConditionalGeneration", "[THINK]"),
}


def _row(family: Family | None) -> dict[str, object] | None:
    if family is None:
        return None
    return {"family": family.name, **{
        engine: [family.parsers(engine).tool, family.parsers(engine).reasoning,
                 list(family.parsers(engine).extra_args), family.parsers(engine).tool_chat_template]
        for engine in ("vllm", "sglang")}}


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


# The corrections the notes list (shared/notes/engines.md, "Checked against the engines' own code"), written
# out by hand from the notes, not from the table: (engine, model, tool, reasoning).
CORRECTIONS = [
    ("vllm", "Qwen3-30B-A3B-Instruct-2507", "hermes", None),
    ("sglang", "Qwen3-30B-A3B-Instruct-2507", "qwen25", None),
    ("vllm", "Qwen3-VL-30B-A3B-Instruct", "hermes", None),
    ("sglang", "Qwen3-VL-8B-Thinking", "qwen", "qwen3"),
    ("sglang", "Qwen3-Next-80B-A3B-Instruct", "qwen", None),
    ("vllm", "Qwen3.5-35B-A3B", "qwen3_coder", "qwen3"),
    ("sglang", "Qwen3.6-27B", "qwen3_coder", "qwen3"),
    ("sglang", "GLM-4.7", "glm47", "glm45"),
    ("vllm", "DeepSeek-R1-Distill-Qwen-14B", None, "deepseek_r1"),
    ("sglang", "DeepSeek-R1-Distill-Llama-70B", None, "deepseek-r1"),
    ("vllm", "GLM-5", "glm47", "glm45"),
    ("sglang", "MiniMax-M3", "minimax-m3", "minimax-m3"),
    ("vllm", "Seed-OSS-36B-Instruct", "seed_oss", "seed_oss"),
    ("sglang", "Seed-OSS-36B-Instruct", None, None),
    ("vllm", "Hunyuan-A13B-Instruct", "hunyuan_a13b", "hunyuan_a13b"),
    ("sglang", "Hy3-Instruct", "hunyuan", "hunyuan"),
    ("vllm", "ERNIE-4.5-21B-A3B-PT", "ernie45", "ernie45"),
    ("sglang", "Step-3.5-Flash", "step3p5", "step3p5"),
    ("vllm", "gemma-4-31b-it", "gemma4", "gemma4"),
    ("vllm", "Olmo-3-7B-Think", "olmo3", "olmo3"),
    ("vllm", "NVIDIA-Nemotron-3-Nano-30B-A3B", None, "nemotron_v3"),
    ("sglang", "NVIDIA-Nemotron-3-Nano-30B-A3B", None, "nemotron_3"),
    ("sglang", "Phi-4-reasoning-plus", None, "deepseek-r1"),
    ("vllm", "Ministral-3-14B-Reasoning-2512", "mistral", "mistral"),
    ("vllm", "DeepSeek-V4.1", "deepseek_v41", "deepseek_v41"),
    ("sglang", "DeepSeek-V4", "deepseekv4", "deepseek-v4"),
    ("vllm", "Kimi-K3", "kimi_k3", "kimi_k3"),
    ("sglang", "Kimi-K2.5", "kimi_k2", "kimi_k2"),
]


def test_the_notes_corrections_hold():
    wrong = []
    for engine, name, tool, reasoning in CORRECTIONS:
        model_type, architecture, template = MODELS[name]
        parsers = detect_family(model_type, (architecture,), template, name).parsers(engine)
        if (parsers.tool, parsers.reasoning) != (tool, reasoning):
            wrong.append((engine, name, parsers.tool, parsers.reasoning))
    assert wrong == []


def test_flags_and_templates_the_notes_ask_for():
    def parsers(name, engine):
        model_type, architecture, template = MODELS[name]
        return detect_family(model_type, (architecture,), template, name).parsers(engine)

    assert "--trust-remote-code" in parsers("Kimi-K2-Instruct-0905", "sglang").extra_args
    assert "--trust-remote-code" in parsers("MiniMax-M2", "sglang").extra_args
    assert parsers("DeepSeek-R1-0528", "vllm").tool_chat_template == "tool_chat_template_deepseekr1.jinja"
    assert parsers("DeepSeek-V3-0324", "vllm").tool_chat_template == "tool_chat_template_deepseekv3.jinja"
    assert parsers("DeepSeek-V3.1-Terminus", "vllm").tool_chat_template == "tool_chat_template_deepseekv31.jinja"
    assert (parsers("DeepSeek-V3.2-Exp", "sglang").tool, parsers("DeepSeek-V3.2-Exp", "sglang").tool_chat_template) \
        == ("deepseekv31", "tool_chat_template_deepseekv32.jinja")
    assert parsers("Llama-4-Scout-17B-16E-Instruct", "sglang").tool_chat_template
    assert parsers("gemma-3-27b-it", "sglang").tool_chat_template


def test_every_name_the_table_uses_is_one_the_engines_register():
    """The names the engine double registers: vLLM 0.33.0's and SGLang 0.5.23's, as the notes list them."""
    import importlib.util

    path = Path(__file__).parent / "engine_double" / "fake_engine.py"
    spec = importlib.util.spec_from_file_location("fake_engine", path)
    double = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(double)
    registered = {("vllm", "tool"): double.VLLM_TOOL_PARSERS, ("vllm", "reasoning"): double.VLLM_REASONING_PARSERS,
                  ("sglang", "tool"): double.SGLANG_TOOL_PARSERS,
                  ("sglang", "reasoning"): double.SGLANG_REASONING_PARSERS}
    missing = [(engine, kind, name) for _, family in FAMILIES for engine in ("vllm", "sglang")
               for kind, name in (("tool", family.parsers(engine).tool),
                                  ("reasoning", family.parsers(engine).reasoning))
               if name and name not in registered[engine, kind]]
    assert missing == []
