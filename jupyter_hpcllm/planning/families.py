"""Model families and the tool-call / reasoning parsers each engine needs for them.

The table follows ``shared/notes/engines.md``. vLLM spells parser names with underscores
(``deepseek_v3``), SGLang without or with hyphens (``deepseekv3``, ``deepseek-r1``). Here a family is
recognised from the model's name; reading ``config.json`` and the chat template comes later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "Parsers", "detect_family", "family_from_name"]


@dataclass(frozen=True)
class Parsers:
    """What one engine needs for a family: parser names (None: no parser), required extra flags, and
    the tool chat template the engine's image ships for it (vLLM's examples/, relative)."""

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


def _family(name: str, vllm: tuple[str | None, str | None], sglang: tuple[str | None, str | None],
            vllm_extra: tuple[str, ...] = (), vllm_template: str | None = None) -> Family:
    return Family(name, Parsers(*vllm, extra_args=vllm_extra, tool_chat_template=vllm_template),
                  Parsers(*sglang))


# Order matters: the first pattern that matches the lower-cased name wins (Coder before Qwen3, ...).
FAMILIES: tuple[tuple[str, Family], ...] = (
    (r"gpt-oss", _family("gpt-oss", ("openai", "openai_gptoss"), ("gpt-oss", "gpt-oss"))),
    # Hermes fine-tunes of Llama or Qwen speak Hermes' tool format, whatever their base.
    (r"hermes", _family("hermes", ("hermes", None), ("hermes", None))),
    (r"qwen3-coder", _family("qwen3-coder", ("qwen3_coder", None), ("qwen3_coder", None))),
    (r"qwen3-next.*thinking", _family("qwen3-next-thinking", ("hermes", "qwen3"), ("qwen", "qwen3"))),
    (r"qwen3-next", _family("qwen3-next", ("hermes", None), ("qwen", "qwen3"))),
    (r"qwen3-.*thinking-2507", _family("qwen3-thinking-2507", ("hermes", "qwen3"), ("qwen25", "qwen3-thinking"))),
    (r"qwen3", _family("qwen3", ("hermes", "qwen3"), ("qwen25", "qwen3"))),
    (r"qwq", _family("qwq", ("hermes", "deepseek_r1"), ("qwen25", "deepseek-r1"))),
    (r"qwen2\.5", _family("qwen2.5", ("hermes", None), ("qwen25", None))),
    (r"deepseek-r1", _family("deepseek-r1", ("deepseek_v3", "deepseek_r1"), ("deepseekv3", "deepseek-r1"))),
    (r"deepseek-v3\.2", _family("deepseek-v3.2", ("deepseek_v32", "deepseek_v3"), ("deepseekv32", "deepseek-v3"))),
    (r"deepseek-v3\.1", _family("deepseek-v3.1", ("deepseek_v31", "deepseek_v3"), ("deepseekv31", "deepseek-v3"))),
    (r"deepseek-v3", _family("deepseek-v3", ("deepseek_v3", None), ("deepseekv3", None))),
    (r"llama-?4", _family("llama4", ("llama4_pythonic", None), ("pythonic", None),
                          vllm_template="tool_chat_template_llama4_pythonic.jinja")),
    (r"llama-?3", _family("llama3", ("llama3_json", None), ("llama3", None),
                          vllm_template="tool_chat_template_llama3.1_json.jinja")),
    (r"magistral", _family("magistral", ("mistral", "mistral"), ("mistral", "mistral"))),
    (r"mistral|devstral|ministral", _family("mistral", ("mistral", None), ("mistral", None))),
    (r"kimi-k2.*thinking", _family("kimi-k2-thinking", ("kimi_k2", "kimi_k2"), ("kimi_k2", "kimi_k2"),
                                   vllm_extra=("--trust-remote-code",))),
    (r"kimi-k2", _family("kimi-k2", ("kimi_k2", None), ("kimi_k2", None), vllm_extra=("--trust-remote-code",))),
    (r"glm-4\.7", _family("glm-4.7", ("glm47", "glm47"), ("glm45", "glm45"))),
    (r"glm-4\.[56]", _family("glm-4.5", ("glm45", "glm45"), ("glm45", "glm45"))),
    (r"minimax-m2", _family("minimax-m2", ("minimax_m2", "minimax_m2_append_think"),
                            ("minimax-m2", "minimax-append-think"))),
    (r"gemma-?3", _family("gemma3", ("pythonic", None), ("pythonic", None),
                          vllm_template="tool_chat_template_gemma3_pythonic.jinja")),
    (r"phi-?4-mini", _family("phi4-mini", ("phi4_mini_json", None), (None, None))),
    (r"phi-?4", _family("phi4", (None, None), (None, None))),
    (r"granite-4", _family("granite4", ("granite4", "granite"), (None, None))),
    (r"granite", _family("granite", ("granite", "granite"), (None, None))),
)


BY_NAME = {family.name: family for _, family in FAMILIES}

# config.json model_type → family, refined by the name where one model_type covers several families.
_BY_MODEL_TYPE = {
    "gpt_oss": "gpt-oss", "qwen3_next": "qwen3-next", "qwen3": "qwen3", "qwen3_moe": "qwen3", "qwen2": "qwen2.5",
    "deepseek_v32": "deepseek-v3.2", "deepseek_v3": "deepseek-v3", "kimi_k2": "kimi-k2", "llama4": "llama4",
    "llama": "llama3", "mistral": "mistral", "mistral3": "mistral", "glm4_moe": "glm-4.5",
    "minimax_m2": "minimax-m2", "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi4",
    "granite": "granite", "granitemoehybrid": "granite",
}
# Chat-template markers (as SGLang's template detection uses them) for configs that say too little.
_TEMPLATE_MARKERS = (
    ("<|channel|>", "gpt-oss"), ("<minimax:tool_call>", "minimax-m2"), ("<|tool_calls_section_begin|>", "kimi-k2"),
    ("[gMASK]<sop>", "glm-4.5"), ("enable_thinking", "qwen3"),
)


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
    if base == "qwen3" and ("<function=" in template and "<parameter=" in template):
        return BY_NAME["qwen3-coder"]
    if base in _REFINEMENTS and by_name is not None and _compatible(base, by_name.name):
        return by_name
    if base == "deepseek-v3" and "kimi" in lowered:
        return BY_NAME["kimi-k2"]
    return BY_NAME[base]


_REFINEMENTS = {
    "qwen3-next": ("qwen3-next", "qwen3-next-thinking"),
    "qwen2.5": ("qwen2.5", "qwq", "hermes"),
    "qwen3": ("qwen3", "qwen3-coder", "qwen3-thinking-2507", "hermes"),
    "granite": ("granite", "granite4"),
    "deepseek-v3": ("deepseek-v3", "deepseek-r1", "deepseek-v3.1", "deepseek-v3.2", "kimi-k2", "kimi-k2-thinking"),
    "kimi-k2": ("kimi-k2", "kimi-k2-thinking"),
    "llama3": ("llama3", "hermes"),
    "mistral": ("mistral", "magistral"),
    "glm-4.5": ("glm-4.5", "glm-4.7"),
    "phi4": ("phi4", "phi4-mini"),
}


def _compatible(base: str, refined: str) -> bool:
    return refined in _REFINEMENTS.get(base, (base,))


def family_from_name(model: str) -> Family | None:
    """The family a model name belongs to, or None when the name says nothing we know."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for pattern, family in FAMILIES:
        if re.search(pattern, name):
            return family
    return None
