"""Model-card extraction, on card texts written in the formats real cards use (tests/cards/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_hpcllm.planning.modelcard import CardSpeculative, card_advice, card_commands

CARDS = Path(__file__).parent / "cards"


def advice(card: str, engine: str):
    return card_advice((CARDS / card).read_text(), engine)


# card, engine: (tool, reasoning, flags)
EXPECTED = {
    ("gpt-oss-120b.md", "vllm"): (None, None, ()),
    ("gpt-oss-120b.md", "sglang"): (None, None, ()),
    ("MiniMax-M2.md", "vllm"): ("minimax_m2", "minimax_m2_append_think", ("--trust-remote-code",)),
    ("MiniMax-M2.md", "sglang"): ("minimax-m2", "minimax-append-think", ("--trust-remote-code",)),
    ("Qwen3-30B-A3B-Instruct-2507.md", "vllm"): (None, None, ()),
    ("Qwen3-30B-A3B-Instruct-2507.md", "sglang"): (None, None, ()),
    ("Kimi-K2-Instruct.md", "vllm"): ("kimi_k2", None, ("--trust-remote-code",)),
    ("Kimi-K2-Instruct.md", "sglang"): ("kimi_k2", None, ("--trust-remote-code",)),
    ("GLM-4.6.md", "vllm"): ("glm45", "glm45", ()),
    ("GLM-4.6.md", "sglang"): ("glm45", "glm45", ()),
    ("DeepSeek-V3.1.md", "vllm"): ("deepseek_v31", None,
                                   ("--chat-template", "examples/tool_chat_template_deepseekv31.jinja")),
    ("DeepSeek-V3.1.md", "sglang"): ("deepseekv31", "deepseek-v3", ("--trust-remote-code",)),
    ("Qwen3-8B-EAGLE.md", "vllm"): (None, None, ()),
    ("no-commands.md", "vllm"): (None, None, ()),
    ("no-commands.md", "sglang"): (None, None, ()),
}


@pytest.mark.parametrize(("card", "engine"), sorted(EXPECTED))
def test_parsers_and_flags_from_each_card(card, engine):
    found = advice(card, engine)
    assert (found.tool, found.reasoning, found.flags) == EXPECTED[card, engine]


def test_commands_are_found_in_every_form_cards_write_them():
    engines = {card.name: [c.engine for c in card_commands(card.read_text())] for card in CARDS.glob("*.md")}
    assert engines["gpt-oss-120b.md"] == ["vllm", "sglang"]  # not ollama, transformers serve, lms, pip
    assert engines["Kimi-K2-Instruct.md"] == ["vllm", "sglang", "sglang"]  # one per node
    assert engines["no-commands.md"] == []  # `from vllm import LLM`, `pip install vllm`, `trl chat` are not
    minimax = card_commands((CARDS / "MiniMax-M2.md").read_text())
    vllm = next(c for c in minimax if c.engine == "vllm")
    assert dict(vllm.options)["--tensor-parallel-size"] == "4"  # `=` form, after an environment variable
    assert vllm.text.startswith("vllm serve MiniMaxAI/MiniMax-M2 ")  # backslash lines joined


def test_speculative_setups_from_cards():
    assert advice("Qwen3-8B-EAGLE.md", "vllm").speculative == CardSpeculative(
        "eagle3", "AngelSlim/Qwen3-8B_eagle3", (("num_speculative_tokens", 3),))
    assert advice("Qwen3-8B-EAGLE.md", "sglang").speculative == CardSpeculative(
        "eagle3", "AngelSlim/Qwen3-8B_eagle3", (("num_steps", 6), ("eagle_topk", 10), ("num_draft_tokens", 32)))
    # GLM's card uses its built-in MTP layers: EAGLE without a draft.
    assert advice("GLM-4.6.md", "sglang").speculative == CardSpeculative(
        "mtp", None, (("num_steps", 3), ("eagle_topk", 1), ("num_draft_tokens", 4)))
    assert advice("GLM-4.6.md", "vllm").speculative is None


@pytest.mark.parametrize(("text", "tool"), [
    ("`vllm serve org/m --tool-call-parser hermes`", "hermes"),  # inline code
    ("Run: vllm serve org/m --tool_call_parser=hermes", "hermes"),  # vLLM reads _ as -
    ("```bash\n$ vllm serve org/m \\\n    --enable-auto-tool-choice \\\n    --tool-call-parser pythonic\n```",
     "pythonic"),
    ("vllm serve org/m --tool-call-parser 'unbalanced", "'unbalanced"),  # a broken quote: words as written
    ("python -m vllm.entrypoints.openai.api_server --model org/m --tool-call-parser mistral", "mistral"),
    ("vllm serve org/m  # --tool-call-parser hermes is not needed", None),  # a comment
    ("pip install vllm && vllm serve org/m --tool-call-parser hermes", "hermes"),
    ("vllm serve-docs --tool-call-parser x", None),  # another command
])
def test_command_forms(text, tool):
    assert card_advice(text, "vllm").tool == tool
