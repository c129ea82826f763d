"""Model families and the tool-call / reasoning parsers each engine needs for them: the last of the
three sources of parser choices (the model card and the engine image come first, see
``planning.parsers``).

The table follows ``shared/notes/engines.md``, checked against vLLM 0.33.0's and SGLang 0.5.23's own
registries. vLLM spells parser names with underscores (``deepseek_v3``), SGLang without or with hyphens
(``deepseekv3``, ``deepseek-r1``). A family is recognised from config.json's ``model_type``, refined by
the model's name and chat template where one model_type covers several families; from the name alone
when nothing else is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "Parsers", "detect_family", "family_from_name"]


@dataclass(frozen=True)
class Parsers:
    """What one engine needs for a family: parser names (None: no parser), required extra flags, and
    the tool chat template the engine's image ships for it (a file name in its examples directory)."""

    tool: str | None = None
    reasoning: str | None = None
    extra_args: tuple[str, ...] = ()
    tool_chat_template: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    vllm: Parsers
    sglang: Parsers

    def parsers(self, engine: str) -> Parsers:
        return self.vllm if engine == "vllm" else self.sglang


_TRUST = ("--trust-remote-code",)


def _family(name: str, vllm: tuple[str | None, str | None], sglang: tuple[str | None, str | None], *,
            extra: tuple[str, ...] = (), sglang_extra: tuple[str, ...] = (), vllm_template: str | None = None,
            sglang_template: str | None = None) -> Family:
    return Family(name, Parsers(*vllm, extra_args=extra, tool_chat_template=vllm_template),
                  Parsers(*sglang, extra_args=extra + sglang_extra, tool_chat_template=sglang_template))


_NONE = (None, None)

# Order matters: the first pattern that matches the lower-cased name wins (Coder before Qwen3, ...).
FAMILIES: tuple[tuple[str, Family], ...] = (
    (r"gpt-oss", _family("gpt-oss", ("openai", "openai_gptoss"), ("gpt-oss", "gpt-oss"))),
    # Distills think like R1 whatever their base (Qwen2.5, Llama), and have no tool-call format.
    (r"deepseek-r1-distill", _family("deepseek-r1-distill", (None, "deepseek_r1"), (None, "deepseek-r1"))),
    # Hermes fine-tunes of Llama or Qwen speak Hermes' tool format, whatever their base.
    (r"hermes", _family("hermes", ("hermes", None), ("hermes", None))),
    (r"qwen3-coder", _family("qwen3-coder", ("qwen3_coder", None), ("qwen3_coder", None))),
    # Qwen3.5 and 3.6 speak the XML tool format of the Coder models.
    (r"qwen3\.[56]", _family("qwen3.5", ("qwen3_coder", "qwen3"), ("qwen3_coder", "qwen3"))),
    # Instruct models that never emit <think>: a qwen3 reasoning parser would take the whole answer.
    (r"qwen3-vl.*thinking", _family("qwen3-vl-thinking", ("hermes", "qwen3"), ("qwen", "qwen3"))),
    (r"qwen3-vl", _family("qwen3-vl", ("hermes", None), ("qwen", None))),
    (r"qwen3-next.*thinking", _family("qwen3-next-thinking", ("hermes", "qwen3"), ("qwen", "qwen3"))),
    (r"qwen3-next", _family("qwen3-next", ("hermes", None), ("qwen", None))),
    (r"qwen3-.*thinking-2507", _family("qwen3-thinking-2507", ("hermes", "qwen3"), ("qwen25", "qwen3-thinking"))),
    (r"qwen3-.*instruct-2507", _family("qwen3-instruct-2507", ("hermes", None), ("qwen25", None))),
    (r"qwen3", _family("qwen3", ("hermes", "qwen3"), ("qwen25", "qwen3"))),
    (r"qwq", _family("qwq", ("hermes", "deepseek_r1"), ("qwen25", "deepseek-r1"))),
    (r"qwen2\.5", _family("qwen2.5", ("hermes", None), ("qwen25", None))),
    (r"deepseek-v4\.1", _family("deepseek-v4.1", ("deepseek_v41", "deepseek_v41"), ("deepseekv41", "deepseek-v41"))),
    (r"deepseek-v4", _family("deepseek-v4", ("deepseek_v4", "deepseek_v4"), ("deepseekv4", "deepseek-v4"))),
    (r"deepseek-r1", _family("deepseek-r1", ("deepseek_v3", "deepseek_r1"), ("deepseekv3", "deepseek-r1"),
                             vllm_template="tool_chat_template_deepseekr1.jinja")),
    (r"deepseek-v3\.2-exp", _family("deepseek-v3.2-exp", ("deepseek_v32", "deepseek_v3"),
                                    ("deepseekv31", "deepseek-v3"),
                                    sglang_template="tool_chat_template_deepseekv32.jinja")),
    (r"deepseek-v3\.2", _family("deepseek-v3.2", ("deepseek_v32", "deepseek_v3"), ("deepseekv32", "deepseek-v3"))),
    (r"deepseek-v3\.1", _family("deepseek-v3.1", ("deepseek_v31", "deepseek_v3"), ("deepseekv31", "deepseek-v3"),
                                vllm_template="tool_chat_template_deepseekv31.jinja")),
    (r"deepseek-v3", _family("deepseek-v3", ("deepseek_v3", None), ("deepseekv3", None),
                             vllm_template="tool_chat_template_deepseekv3.jinja")),
    # The models' own templates ask for JSON or ignore tools: each engine's pythonic template fixes that.
    (r"llama-?4", _family("llama4", ("llama4_pythonic", None), ("pythonic", None),
                          vllm_template="tool_chat_template_llama4_pythonic.jinja",
                          sglang_template="tool_chat_template_llama4_pythonic.jinja")),
    (r"llama-?3", _family("llama3", ("llama3_json", None), ("llama3", None),
                          vllm_template="tool_chat_template_llama3.1_json.jinja")),
    (r"ministral.*reasoning", _family("ministral-reasoning", ("mistral", "mistral"), ("mistral", "mistral"))),
    (r"magistral", _family("magistral", ("mistral", "mistral"), ("mistral", "mistral"))),
    (r"mistral|devstral|ministral", _family("mistral", ("mistral", None), ("mistral", None))),
    # Kimi's tokenizer is code from the model repository: both engines need --trust-remote-code.
    (r"kimi-k3", _family("kimi-k3", ("kimi_k3", "kimi_k3"), ("kimi_k3", "kimi_k3"), extra=_TRUST)),
    (r"kimi-k2\.5", _family("kimi-k2.5", ("kimi_k2", "kimi_k2"), ("kimi_k2", "kimi_k2"), extra=_TRUST)),
    (r"kimi-k2.*thinking", _family("kimi-k2-thinking", ("kimi_k2", "kimi_k2"), ("kimi_k2", "kimi_k2"), extra=_TRUST)),
    (r"kimi-k2", _family("kimi-k2", ("kimi_k2", None), ("kimi_k2", None), extra=_TRUST)),
    (r"glm-5", _family("glm-5", ("glm47", "glm45"), ("glm47", "glm45"))),
    # SGLang has no glm47 reasoning parser: glm45 reads GLM-4.7's thinking.
    (r"glm-4\.7", _family("glm-4.7", ("glm47", "glm47"), ("glm47", "glm45"))),
    (r"glm-4\.[56]", _family("glm-4.5", ("glm45", "glm45"), ("glm45", "glm45"))),
    (r"minimax-m3", _family("minimax-m3", ("minimax_m3", "minimax_m3"), ("minimax-m3", "minimax-m3"))),
    (r"minimax-m2", _family("minimax-m2", ("minimax_m2", "minimax_m2_append_think"),
                            ("minimax-m2", "minimax-append-think"), sglang_extra=_TRUST)),
    (r"seed-oss", _family("seed-oss", ("seed_oss", "seed_oss"), _NONE)),
    (r"hunyuan-a13b", _family("hunyuan-a13b", ("hunyuan_a13b", "hunyuan_a13b"), _NONE)),
    (r"(?:^|[^a-z])hy-?4|hunyuan-?4", _family("hy4", ("hy_v4", "hy_v4"), ("hunyuan", "hunyuan"))),
    (r"(?:^|[^a-z])hy-?3|hunyuan-?3", _family("hy3", ("hy_v3", "hy_v3"), ("hunyuan", "hunyuan"))),
    (r"ernie-?4\.5", _family("ernie-4.5", ("ernie45", "ernie45"), _NONE)),
    (r"step-?3\.5", _family("step-3.5", ("step3p5", "step3p5"), ("step3p5", "step3p5"))),
    (r"step-?3", _family("step-3", ("step3", "step3"), ("step3", "step3"))),
    (r"gemma-?4", _family("gemma4", ("gemma4", "gemma4"), ("gemma4", "gemma4"))),
    (r"gemma-?3", _family("gemma3", ("pythonic", None), ("pythonic", None),
                          vllm_template="tool_chat_template_gemma3_pythonic.jinja",
                          sglang_template="tool_chat_template_gemma3_pythonic.jinja")),
    (r"olmo-?3", _family("olmo3", ("olmo3", "olmo3"), _NONE)),
    (r"nemotron-?3", _family("nemotron-3", (None, "nemotron_v3"), (None, "nemotron_3"))),
    (r"phi-?4.*reasoning", _family("phi4-reasoning", (None, "deepseek_r1"), (None, "deepseek-r1"))),
    (r"phi-?4-mini", _family("phi4-mini", ("phi4_mini_json", None), _NONE)),
    (r"phi-?4", _family("phi4", _NONE, _NONE)),
    (r"granite-4", _family("granite4", ("granite4", "granite"), _NONE)),
    (r"granite", _family("granite", ("granite", "granite"), _NONE)),
)


BY_NAME = {family.name: family for _, family in FAMILIES}

# config.json model_type → family, refined by the name where one model_type covers several families.
_BY_MODEL_TYPE = {
    "gpt_oss": "gpt-oss", "qwen3_next": "qwen3-next", "qwen3": "qwen3", "qwen3_moe": "qwen3", "qwen2": "qwen2.5",
    "qwen3_vl": "qwen3-vl", "qwen3_vl_moe": "qwen3-vl",
    "deepseek_v32": "deepseek-v3.2", "deepseek_v3": "deepseek-v3", "kimi_k2": "kimi-k2", "llama4": "llama4",
    "llama": "llama3", "mistral": "mistral", "mistral3": "mistral", "glm4_moe": "glm-4.5",
    "minimax_m2": "minimax-m2", "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi4",
    "granite": "granite", "granitemoehybrid": "granite4", "seed_oss": "seed-oss", "hunyuan_v1_moe": "hunyuan-a13b",
    "ernie4_5": "ernie-4.5", "ernie4_5_moe": "ernie-4.5", "olmo3": "olmo3", "nemotron_h": "nemotron-3",
}
# Chat-template markers (as SGLang's template detection uses them) for configs that say too little.
_TEMPLATE_MARKERS = (
    ("<|channel|>", "gpt-oss"), ("<minimax:tool_call>", "minimax-m2"), ("<|tool_calls_section_begin|>", "kimi-k2"),
    ("[gMASK]<sop>", "glm-4.5"), ("enable_thinking", "qwen3"),
)
# For one model_type, the families its name may refine it to.
_REFINEMENTS = {
    "qwen3-next": ("qwen3-next", "qwen3-next-thinking"),
    "qwen3-vl": ("qwen3-vl", "qwen3-vl-thinking"),
    "qwen2.5": ("qwen2.5", "qwq", "hermes", "deepseek-r1-distill"),
    "qwen3": ("qwen3", "qwen3-coder", "qwen3.5", "qwen3-thinking-2507", "qwen3-instruct-2507", "hermes"),
    "granite": ("granite", "granite4"),
    "deepseek-v3": ("deepseek-v3", "deepseek-r1", "deepseek-v3.1", "deepseek-v3.2", "deepseek-v3.2-exp",
                    "deepseek-v4", "deepseek-v4.1", "kimi-k2", "kimi-k2-thinking", "kimi-k2.5", "kimi-k3"),
    "deepseek-v3.2": ("deepseek-v3.2", "deepseek-v3.2-exp"),
    "kimi-k2": ("kimi-k2", "kimi-k2-thinking", "kimi-k2.5", "kimi-k3"),
    "llama3": ("llama3", "hermes", "deepseek-r1-distill"),
    "mistral": ("mistral", "magistral", "ministral-reasoning"),
    "glm-4.5": ("glm-4.5", "glm-4.7", "glm-5"),
    "phi4": ("phi4", "phi4-mini", "phi4-reasoning"),
}


def detect_family(model_type: str, architectures: tuple[str, ...], template: str, name: str) -> Family | None:
    """The family from config.json, refined by the name and the chat template; else from the name alone."""
    lowered = name.lower()
    by_name = family_from_name(name)
    base = _BY_MODEL_TYPE.get(model_type)
    if base is None and architectures:
        base = {"GptOssForCausalLM": "gpt-oss", "Llama4ForConditionalGeneration": "llama4"}.get(architectures[0])
    if base is None:
        marker = next((family for text, family in _TEMPLATE_MARKERS if text in template), None)
        return by_name or (BY_NAME[marker] if marker else None)
    # One model_type, several families: the name (and the template) decide between them.
    if base == "qwen3" and ("<function=" in template and "<parameter=" in template) and (
            by_name is None or by_name.name not in ("qwen3.5", "qwen3-coder")):
        return BY_NAME["qwen3-coder"]
    if by_name is not None and by_name.name in _REFINEMENTS.get(base, ()):
        return by_name
    if base == "deepseek-v3" and "kimi" in lowered:
        return BY_NAME["kimi-k2"]
    return BY_NAME[base]


def family_from_name(model: str) -> Family | None:
    """The family a model name belongs to, or None when the name says nothing we know."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for pattern, family in FAMILIES:
        if re.search(pattern, name):
            return family
    return None
