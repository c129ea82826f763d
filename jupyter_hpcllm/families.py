"""Model families and the tool-call / reasoning parsers each engine needs for them.

The table follows ``shared/notes/engines.md``. vLLM spells parser names with underscores
(``deepseek_v3``), SGLang without or with hyphens (``deepseekv3``, ``deepseek-r1``). Here a family is
recognised from the model's name; reading ``config.json`` and the chat template comes later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "Parsers", "family_from_name"]


@dataclass(frozen=True)
class Parsers:
    """What one engine needs for a family: parser names (None: no parser) and required extra flags."""

    tool: str | None = None
    reasoning: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    vllm: Parsers
    sglang: Parsers

    def parsers(self, engine: str) -> Parsers:
        return self.vllm if engine == "vllm" else self.sglang


def _family(name: str, vllm: tuple[str | None, str | None], sglang: tuple[str | None, str | None],
            vllm_extra: tuple[str, ...] = ()) -> Family:
    return Family(name, Parsers(*vllm, extra_args=vllm_extra), Parsers(*sglang))


# Order matters: the first pattern that matches the lower-cased name wins (Coder before Qwen3, ...).
FAMILIES: tuple[tuple[str, Family], ...] = (
    (r"gpt-oss", _family("gpt-oss", ("openai", "openai_gptoss"), ("gpt-oss", "gpt-oss"))),
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
    (r"llama-?4", _family("llama4", ("llama4_pythonic", None), ("pythonic", None))),
    (r"llama-?3", _family("llama3", ("llama3_json", None), ("llama3", None))),
    (r"magistral", _family("magistral", ("mistral", "mistral"), ("mistral", "mistral"))),
    (r"mistral|devstral|ministral", _family("mistral", ("mistral", None), ("mistral", None))),
    (r"kimi-k2.*thinking", _family("kimi-k2-thinking", ("kimi_k2", "kimi_k2"), ("kimi_k2", "kimi_k2"),
                                   vllm_extra=("--trust-remote-code",))),
    (r"kimi-k2", _family("kimi-k2", ("kimi_k2", None), ("kimi_k2", None), vllm_extra=("--trust-remote-code",))),
    (r"glm-4\.7", _family("glm-4.7", ("glm47", "glm47"), ("glm45", "glm45"))),
    (r"glm-4\.[56]", _family("glm-4.5", ("glm45", "glm45"), ("glm45", "glm45"))),
    (r"minimax-m2", _family("minimax-m2", ("minimax_m2", "minimax_m2_append_think"),
                            ("minimax-m2", "minimax-append-think"))),
    (r"gemma-?3", _family("gemma3", ("pythonic", None), ("pythonic", None))),
    (r"phi-?4-mini", _family("phi4-mini", ("phi4_mini_json", None), (None, None))),
    (r"phi-?4", _family("phi4", (None, None), (None, None))),
    (r"hermes", _family("hermes", ("hermes", None), ("hermes", None))),
    (r"granite", _family("granite", ("granite", "granite"), (None, None))),
)


def family_from_name(model: str) -> Family | None:
    """The family a model name belongs to, or None when the name says nothing we know."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for pattern, family in FAMILIES:
        if re.search(pattern, name):
            return family
    return None
