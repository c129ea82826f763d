"""Parsers from three sources (model card, engine image, family table), `--engine auto`, replicas and
speculative decoding: the pure planner, given facts and images as the cluster would read them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import PRESETS
from jupyter_hpcllm.errors import ConfigError, InvalidOption
from jupyter_hpcllm.planning.facts import ModelFacts
from jupyter_hpcllm.planning.images import ImageInfo, parse_probe
from jupyter_hpcllm.planning.plan import DraftFound, plan_launch
from jupyter_hpcllm.views import plan_text, plan_view

EBI = PRESETS["ebi"]
ROOT = EBI.model_root
CARDS = Path(__file__).parent / "cards"
GB = 1_000_000_000

QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_attention_heads": 32,
         "num_key_value_heads": 8, "num_hidden_layers": 36, "head_dim": 128, "max_position_embeddings": 40960,
         "vocab_size": 151936}


def facts(name: str, config: dict = QWEN3, *, card: str = "", template: str = "", gb: float = 16.4) -> ModelFacts:
    return ModelFacts(name, f"{ROOT}/{name}", config, template, int(gb * GB), 5, card=card)


def image(engine: str, *, tool=("hermes", "qwen3_coder", "qwen25", "qwen", "minimax_m2", "minimax-m2", "glm45"),
          reasoning=("qwen3", "deepseek_r1", "deepseek-r1", "glm45"),
          architectures=("Qwen3ForCausalLM", "LlamaForCausalLMEagle3"),
          auto=False, templates=(), version="1.0") -> ImageInfo:
    return ImageInfo(engine, f"/img/{engine}.sif", version, tuple(tool), tuple(reasoning),
                     None if architectures is None else tuple(architectures), auto, tuple(templates))


def plan(model_facts: ModelFacts, images: dict | None = None, draft: DraftFound | None = None, **options):
    images = images if images is not None else {"vllm": image("vllm"), "sglang": image("sglang")}
    return plan_launch(EBI, LaunchOptions(model_facts.name, **options), facts=model_facts, images=images, draft=draft)


# --- parsers: card, image, table -------------------------------------------------------------------


def test_the_card_beats_the_table_and_the_disagreement_is_shown():
    card = "```bash\nvllm serve Org/My-Qwen3 --enable-auto-tool-choice --tool-call-parser qwen3_coder\n```"
    chosen = plan(facts("Qwen3-8B", card=card), engine="vllm")
    assert (chosen.tool_parser, chosen.reasoning_parser) == ("qwen3_coder", "qwen3")
    assert chosen.parsers.tool.source == "model card"
    assert chosen.parsers.tool.others == ("qwen3 in the family table: hermes",)
    assert chosen.parsers.reasoning.source == "qwen3 in the family table"  # the card says nothing of reasoning
    shown = plan_text(chosen)
    assert "tool-call parser qwen3_coder (model card); qwen3 in the family table: hermes" in shown
    assert any("qwen3_coder (model card)" in line for line in plan_view(chosen).details)


def test_a_card_name_the_image_does_not_register_falls_back_to_the_table_with_a_note():
    card = "vllm serve x --tool-call-parser hermes_v9"
    chosen = plan(facts("Qwen3-8B", card=card), engine="vllm")
    assert chosen.tool_parser == "hermes" and chosen.parsers.tool.source == "qwen3 in the family table"
    assert "The tool-call parser 'hermes_v9' (model card) is not used: the vllm image vllm.sif (vLLM 1.0) does not " \
        "register it." in chosen.notes


def test_the_users_choice_wins_and_a_name_the_image_lacks_is_refused_before_submitting():
    card = "vllm serve x --tool-call-parser qwen3_coder"
    chosen = plan(facts("Qwen3-8B", card=card), engine="vllm", tool_call_parser="hermes", reasoning_parser="")
    assert (chosen.tool_parser, chosen.reasoning_parser) == ("hermes", None)
    assert chosen.parsers.tool.source == "your choice" and chosen.parsers.tool.others == ("model card: qwen3_coder",)
    refused = "does not register the tool-call parser 'hermez'.*Nearest.*hermes"
    with pytest.raises(InvalidOption, match=refused) as error:
        plan(facts("Qwen3-8B"), engine="vllm", tool_call_parser="hermez")
    assert error.value.field == "tool_call_parser"
    # A plugin registers names the registry does not list: then the name is the user's business.
    with_plugin = plan(facts("Qwen3-8B"), engine="vllm", tool_call_parser="mine",
                       engine_args=("--tool-parser-plugin", "/home/me/mine.py"))
    assert with_plugin.tool_parser == "mine"


def test_an_unknown_family_on_sglang_uses_auto_when_the_image_has_it():
    mystery = facts("lab-model-v2", {**QWEN3, "model_type": "mystery", "architectures": ["Qwen3ForCausalLM"]})
    with_auto = plan(mystery, {"sglang": image("sglang", auto=True)}, engine="sglang")
    assert (with_auto.tool_parser, with_auto.reasoning_parser) == ("auto", "auto")
    assert "detects it from the chat template" in with_auto.parsers.tool.source
    assert "--tool-call-parser auto --reasoning-parser auto" in with_auto.engine_command
    without = plan(mystery, {"sglang": image("sglang", auto=False)}, engine="sglang")
    assert (without.tool_parser, without.reasoning_parser) == (None, None)
    assert any("launching without" in note for note in without.notes)
    on_vllm = plan(mystery, {"vllm": image("vllm")}, engine="vllm")  # vLLM has no auto
    assert on_vllm.tool_parser is None


def test_a_table_name_an_older_sglang_image_lacks_is_detected_instead():
    glm47 = facts("GLM-4.7", {**QWEN3, "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"]})
    old = image("sglang", architectures=("Glm4MoeForCausalLM",), auto=True)  # glm45 only, no glm47
    chosen = plan(glm47, {"sglang": old}, engine="sglang")
    assert chosen.tool_parser == "auto" and chosen.reasoning_parser == "glm45"
    assert any("'glm47'" in note for note in chosen.notes)


def test_the_cards_flags_reach_the_command_and_its_chat_template_is_found_in_the_image():
    card = (CARDS / "DeepSeek-V3.1.md").read_text()
    deepseek = facts("DeepSeek-V3.1", {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                                       "num_attention_heads": 128, "num_key_value_heads": 128, "num_hidden_layers": 61,
                                       "kv_lora_rank": 512, "qk_rope_head_dim": 64}, card=card, gb=690)
    images = {e: image(e, tool=("deepseek_v31", "deepseekv31"), reasoning=("deepseek_v3", "deepseek-v3"),
                       architectures=("DeepseekV3ForCausalLM",)) for e in ("vllm", "sglang")}
    on_vllm = plan(deepseek, images, engine="vllm", gpu_type="h200")
    assert f"--chat-template {EBI.vllm_examples_dir}/tool_chat_template_deepseekv31.jinja" in on_vllm.engine_command
    assert on_vllm.engine_command.count("--chat-template") == 1  # the card's, not also the table's
    on_sglang = plan(deepseek, images, engine="sglang", gpu_type="h200")
    assert "--trust-remote-code" in on_sglang.engine_command
    assert "--trust-remote-code (model card)" in "; ".join(on_sglang.parsers.flag_sources)
    # The user's own flag is not doubled.
    mine = plan(deepseek, images, engine="sglang", gpu_type="h200", engine_args=("--trust-remote-code",))
    assert mine.engine_command.count("--trust-remote-code") == 1


def test_a_tool_chat_template_the_image_lacks_is_not_passed():
    llama = facts("Llama-3.1-8B-Instruct", {**QWEN3, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    images = {"vllm": image("vllm", tool=("llama3_json",), architectures=("LlamaForCausalLM",), templates=())}
    chosen = plan(llama, images, engine="vllm")
    assert "--chat-template" not in chosen.engine_command
    assert any("tool_chat_template_llama3.1_json.jinja" in note for note in chosen.notes)
    ships = {"vllm": replace(images["vllm"], templates=("tool_chat_template_llama3.1_json.jinja",))}
    assert "tool_chat_template_llama3.1_json.jinja" in plan(llama, ships, engine="vllm").engine_command


# --- the image probe's answer -----------------------------------------------------------------------


def test_the_probe_answer_is_read_whatever_the_image_prints_around_it():
    answer = {"engine": "sglang", "version": "0.5.23", "tool": ["qwen25", "hermes"], "reasoning": None,
              "architectures": ["Qwen3ForCausalLM"], "auto": True, "templates": None,
              "problems": ["sglang.srt.parser.reasoning_parser.ReasoningParser: ImportError: x"]}
    info = parse_probe("WARNING cuda not found\nHPCLLM-IMAGE-PROBE " + json.dumps(answer) + "\nbye\n", "sglang", "/i")
    assert info.tool_parsers == ("hermes", "qwen25") and info.reasoning_parsers is None and info.auto_parsers
    assert info.label == "sglang image i (SGLang 0.5.23)" and info.problems
    broken = parse_probe("FATAL:   could not open image /i\n", "vllm", "/i")
    assert broken.tool_parsers is None and "could not open image" in broken.problems[0]


# --- --engine auto ----------------------------------------------------------------------------------


def test_auto_prefers_the_profiles_default_and_says_why():
    chosen = plan(facts("Qwen3-8B"))
    assert chosen.engine == "vllm" and "loads Qwen3ForCausalLM" in chosen.engine_reason


def test_auto_takes_the_other_engine_when_the_defaults_image_cannot_load_the_model():
    images = {"vllm": image("vllm", architectures=("LlamaForCausalLM",), version="0.8.0"),
              "sglang": image("sglang", version="0.5.23")}
    chosen = plan(facts("Qwen3-8B"), images)
    assert chosen.engine == "sglang"
    assert "the vllm image (0.8.0) does not" in chosen.engine_reason
    assert "engine      sglang (auto:" in plan_text(chosen)


def test_auto_refuses_when_no_image_loads_the_architecture_and_names_the_versions():
    images = {"vllm": image("vllm", architectures=(), version="0.8.0"),
              "sglang": image("sglang", architectures=(), version="0.4.1")}
    with pytest.raises(InvalidOption, match=r"loads Qwen3ForCausalLM.*vLLM 0\.8\.0.*SGLang 0\.4\.1") as error:
        plan(facts("Qwen3-8B"), images)
    assert error.value.field == "engine"


def test_a_named_engine_whose_image_cannot_load_the_model_is_refused_with_the_other_one_suggested():
    images = {"vllm": image("vllm", architectures=()), "sglang": image("sglang")}
    with pytest.raises(InvalidOption, match="Use --engine sglang"):
        plan(facts("Qwen3-8B"), images, engine="vllm")
    # vLLM's Transformers backend loads any architecture: then its registry does not decide.
    assert plan(facts("Qwen3-8B"), images, engine="vllm", engine_args=("--model-impl", "transformers")).engine == "vllm"


def test_auto_when_the_images_cannot_say():
    images = {"vllm": image("vllm", architectures=None), "sglang": image("sglang", architectures=None)}
    chosen = plan(facts("Qwen3-8B"), images)
    assert chosen.engine == "vllm" and "could not say" in chosen.engine_reason


# --- replicas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "flags"), [("vllm", "--tensor-parallel-size 2 --data-parallel-size 2"),
                                                ("sglang", "--tp-size 2 --enable-metrics --dp-size 2")])
def test_replicas_are_data_parallel_inside_the_allocation(engine, flags):
    chosen = plan(facts("Qwen3-8B"), engine=engine, gpus=4, replicas=2)
    assert (chosen.gpus, chosen.tensor_parallel, chosen.replicas) == (4, 2, 2)
    assert "gpu:a100:4" in chosen.script and flags in chosen.engine_command
    assert "2 replicas of 2 GPUs" in plan_text(chosen) and "one server on 4 GPUs" in plan_text(chosen)


def test_replicas_size_each_copy_and_check_the_profile():
    chosen = plan(facts("Qwen3-8B"), replicas=3)  # 3 × 1 a100: the smallest that holds three copies
    assert (chosen.gpus, chosen.tensor_parallel) == (3, 1)
    big = facts("Big", {**QWEN3, "num_attention_heads": 64, "num_key_value_heads": 8}, gb=140)
    assert plan(big, replicas=2).spec.gres == "gpu:h200:4"  # 2 × 2 h200: a copy needs 4 a100, two need 8
    with pytest.raises(InvalidOption, match="cannot be shared evenly by 2 replicas") as error:
        plan(facts("Qwen3-8B"), gpus=3, replicas=2)
    assert error.value.field == "replicas"
    with pytest.raises(InvalidOption, match="allows at most 8 GPUs"):
        plan(facts("Qwen3-8B"), replicas=16)


def test_one_replica_says_when_two_would_serve_more_people():
    chosen = plan(facts("Qwen3-8B"), gpus=2)
    assert any("--replicas 2 would run two copies" in reason for reason in chosen.reasons)


def test_replicas_cannot_be_passed_again_after_dashes():
    with pytest.raises(InvalidOption, match="set it with --replicas"):
        plan(facts("Qwen3-8B"), engine="vllm", engine_args=("--data-parallel-size", "2"))
    with pytest.raises(InvalidOption, match="set it with --replicas"):
        plan(facts("Qwen3-8B"), engine="sglang", engine_args=("--dp", "2"))


# --- speculative decoding ---------------------------------------------------------------------------

EAGLE3 = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_attention_heads": 32,
          "num_key_value_heads": 8, "num_hidden_layers": 1, "vocab_size": 151936}


def test_an_eagle3_head_from_the_card_on_vllm_with_its_memory():
    card = (CARDS / "Qwen3-8B-EAGLE.md").read_text()
    draft = facts("Qwen3-8B_eagle3", EAGLE3, gb=0.8)
    chosen = plan(facts("Qwen3-8B", card=card), draft=DraftFound(draft, "the model card"), engine="vllm",
                  speculative="auto")
    word = chosen.spec.command.argv[chosen.spec.command.argv.index("--speculative-config") + 1]
    assert json.loads(word) == {"method": "eagle3", "model": f"{ROOT}/Qwen3-8B_eagle3", "num_speculative_tokens": 3}
    assert chosen.speculation.extra_gb == pytest.approx(0.88)
    assert "draft 0.9" in " ".join(chosen.reasons)  # the sizing counts it
    assert "speculative eagle3 with Qwen3-8B_eagle3" in plan_text(chosen)


def test_sglang_gets_its_own_flags_with_the_cards_numbers():
    card = (CARDS / "Qwen3-8B-EAGLE.md").read_text()
    draft = facts("Qwen3-8B_eagle3", EAGLE3, gb=0.8)
    chosen = plan(facts("Qwen3-8B", card=card), draft=DraftFound(draft, "the model card"), engine="sglang",
                  speculative="auto")
    assert (f"--speculative-algorithm EAGLE3 --speculative-draft-model-path {ROOT}/Qwen3-8B_eagle3 "
            "--speculative-num-steps 6 --speculative-eagle-topk 10 --speculative-num-draft-tokens 32") \
        in chosen.engine_command


def test_glms_built_in_mtp_from_its_card():
    card = (CARDS / "GLM-4.6.md").read_text()
    glm = facts("GLM-4.6", {**QWEN3, "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"],
                            "num_attention_heads": 96, "num_nextn_predict_layers": 1}, card=card, gb=355)
    images = {e: image(e, architectures=("Glm4MoeForCausalLM",)) for e in ("vllm", "sglang")}
    hint = DraftFound(None, "the model card (the model's own MTP layers)")
    on_sglang = plan(glm, images, draft=hint, engine="sglang", gpu_type="h200", speculative="auto")
    assert "--speculative-algorithm EAGLE --speculative-num-steps 3" in on_sglang.engine_command
    assert "--speculative-draft-model-path" not in on_sglang.engine_command
    on_vllm = plan(glm, images, draft=hint, engine="vllm", gpu_type="h200", speculative="auto")
    assert '{"method":"mtp","num_speculative_tokens":1}' in on_vllm.spec.command.argv


def test_unknown_speculative_combinations_are_refused_with_the_reason():
    other_vocab = facts("Llama-3.2-1B-draft", {**QWEN3, "architectures": ["LlamaForCausalLM"], "vocab_size": 128256},
                        gb=2.5)
    with pytest.raises(InvalidOption, match="vocabulary of 128,256 tokens.*151,936") as error:
        plan(facts("Qwen3-8B"), draft=DraftFound(other_vocab, "your choice"), speculative="Llama-3.2-1B-draft")
    assert error.value.field == "speculative"
    draft = facts("Qwen3-8B_eagle3", EAGLE3, gb=0.8)
    with pytest.raises(InvalidOption, match="cannot load the draft"):
        plan(facts("Qwen3-8B"), {"vllm": image("vllm", architectures=("Qwen3ForCausalLM",))},
             draft=DraftFound(draft, "your choice"), engine="vllm", speculative="x")
    with pytest.raises(InvalidOption, match="set it too"):
        plan(facts("Qwen3-8B"), {"vllm": image("vllm", architectures=("Qwen3ForCausalLM", "LlamaForCausalLMEagle3"))},
             draft=DraftFound(draft, "your choice"), engine="vllm", speculative="x",
             engine_args=("--speculative-config", "{}"))
    no_mtp = facts("Qwen3-8B", card=(CARDS / "GLM-4.6.md").read_text())
    with pytest.raises(InvalidOption, match="no num_nextn_predict_layers"):
        plan(no_mtp, draft=DraftFound(None, "the model card"), engine="sglang", speculative="auto")


def test_a_draft_under_the_home_directory_is_one_json_word_the_node_expands(tmp_path):
    home_profile = replace(EBI, model_root="~/models")
    draft = ModelFacts("Qwen3-8B_eagle3", "~/models/Qwen3-8B_eagle3", EAGLE3, "", GB, 1)
    images = {"vllm": image("vllm", architectures=("Qwen3ForCausalLM", "LlamaForCausalLMEagle3"))}
    target = ModelFacts("Qwen3-8B", "~/models/Qwen3-8B", QWEN3, "", int(16 * GB), 5)
    chosen = plan_launch(home_profile, LaunchOptions("Qwen3-8B", engine="vllm", speculative="auto"), facts=target,
                         images=images, draft=DraftFound(draft, "beside the model under the model root"))
    line = next(line for line in chosen.script.splitlines() if "--speculative-config" in line)
    word = line.split("--speculative-config ", 1)[1].split(" ", 1)[0]
    printed = subprocess.run(["bash", "-c", f"printf %s {word}"], env={"HOME": str(tmp_path)},
                             capture_output=True, text=True, check=True).stdout
    assert json.loads(printed)["model"] == f"{tmp_path}/models/Qwen3-8B_eagle3"


def test_draft_candidates_beside_the_model():
    from jupyter_hpcllm.planning.speculative import draft_candidates

    names = ["Qwen3-8B", "Qwen3-8B-draft", "EAGLE-Qwen3-8B", "qwen3_8b_eagle3", "Qwen3-80B", "Llama-eagle3"]
    assert draft_candidates("Qwen3-8B", names) == ["qwen3_8b_eagle3", "EAGLE-Qwen3-8B", "Qwen3-8B-draft"]
    assert draft_candidates("Qwen3-8B", ["Qwen3-8B", "Qwen3-8B-Instruct"]) == []


def test_offline_plans_leave_speculation_out_and_say_so():
    offline = plan_launch(EBI, LaunchOptions("Qwen3-8B", speculative="auto"))
    assert "--speculative" not in offline.script and any("speculative" in note for note in offline.notes)


def test_errors_are_config_errors():
    assert issubclass(InvalidOption, ConfigError)


# --- after review: what a card may not do, and the edges of auto, replicas and drafts ---------------


@pytest.mark.parametrize("line", [
    "vllm serve x --tokenizer-mode=--middleware=evil.Mw",  # a value that is a flag of its own
    "vllm serve x --load-format=--port=9",  # one that would clash with a managed option
    "vllm serve x --load-format dummy",  # a benchmark's random weights
    "vllm serve x --config-format 'hf; rm -rf ~'",
    "vllm serve x --chat-template /workspace/author/template.jinja",  # a path on the author's machine
    "vllm serve x --chat-template ../../etc/passwd.jinja",
    "vllm serve x --served-model-name evil --port 1 --api-key k --host 0.0.0.0",  # managed: never from a card
])
def test_a_card_adds_only_known_flags_with_known_values(line):
    chosen = plan(facts("Qwen3-8B", card=line), engine="vllm")
    argv = chosen.spec.command.argv
    assert not any(word.startswith(("--middleware", "--port=", "--load-format", "--config-format", "--tokenizer"))
                   for word in argv)
    assert "dummy" not in argv and "evil" not in " ".join(argv) and "/workspace" not in " ".join(argv)
    assert "passwd" not in " ".join(argv)
    assert "--chat-template" not in argv or argv.count("--chat-template") == 1


def test_the_card_values_that_are_known_reach_the_command():
    chosen = plan(facts("Qwen3-8B", card="vllm serve x --tokenizer-mode mistral --config-format=mistral "
                                          "--load-format mistral --chat-template ./chat_template.jinja"), engine="vllm")
    for flags in ("--tokenizer-mode mistral", "--config-format mistral", "--load-format mistral",
                  f"--chat-template {ROOT}/Qwen3-8B/chat_template.jinja"):
        assert flags in chosen.engine_command
    absolute = plan(facts("Qwen3-8B", card="vllm serve x --chat-template /home/a/t.jinja"), engine="vllm")
    assert any("/home/a/t.jinja is not a template of the image or the model" in note for note in absolute.notes)


def test_a_card_number_of_thousands_of_digits_is_not_one():
    card = "vllm serve x --speculative-model Org/Qwen3-8B-draft --num-speculative-tokens " + "9" * 5000
    from jupyter_hpcllm.planning.modelcard import card_advice

    assert card_advice(card, "vllm").speculative.settings == ()


def test_auto_never_picks_an_engine_without_an_image_nor_one_that_said_no():
    only_sglang = {"sglang": image("sglang")}
    unknown = facts("lab-model", {**QWEN3, "architectures": []})
    assert plan(unknown, only_sglang).engine == "sglang"
    said_no = {"vllm": image("vllm", architectures=("LlamaForCausalLM",)),
               "sglang": image("sglang", architectures=None)}
    chosen = plan(facts("Qwen3-8B"), said_no)
    assert chosen.engine == "sglang" and "the vllm image (1.0) does not load it" in chosen.engine_reason


def test_a_named_vllm_that_cannot_load_the_model_mentions_the_transformers_backend():
    with pytest.raises(InvalidOption, match="--model-impl transformers"):
        plan(facts("Qwen3-8B"), {"vllm": image("vllm", architectures=())}, engine="vllm")


def test_sglangs_auto_is_the_users_choice_too_when_the_image_has_it():
    chosen = plan(facts("Qwen3-8B"), {"sglang": image("sglang", auto=True)}, engine="sglang", tool_call_parser="auto")
    assert chosen.tool_parser == "auto" and chosen.parsers.tool.source == "your choice"
    with pytest.raises(InvalidOption, match="cannot detect the tool-call parser"):
        plan(facts("Qwen3-8B"), {"sglang": image("sglang", auto=False)}, engine="sglang", tool_call_parser="auto")


def test_sglangs_dp_attention_puts_one_copy_on_every_gpu():
    chosen = plan(facts("Qwen3-8B"), engine="sglang", gpus=4, replicas=4, engine_args=("--enable-dp-attention",))
    assert (chosen.tensor_parallel, chosen.replicas) == (4, 4)
    assert "--tp-size 4 --enable-metrics --dp-size 4" in chosen.engine_command


def test_plain_drafts_need_an_engine_version_that_has_them():
    draft = facts("Qwen3-0.6B-draft", {**QWEN3, "num_hidden_layers": 28}, gb=1.2)
    old = {"vllm": image("vllm", version="0.11.0")}
    with pytest.raises(InvalidOption, match=r"no speculative decoding with a plain draft model \(it came with 0\.14"):
        plan(facts("Qwen3-8B"), old, draft=DraftFound(draft, "your choice"), engine="vllm", speculative="x")
    new = {"vllm": image("vllm", version="0.14.1")}
    chosen = plan(facts("Qwen3-8B"), new, draft=DraftFound(draft, "your choice"), engine="vllm", speculative="x")
    assert chosen.speculation.method == "draft_model"


def test_the_probe_command_runs_the_prologue_and_ends_itself(tmp_path):
    from jupyter_hpcllm.edge.slurm import image_python_command

    command = image_python_command("none", "", "", "import os, sys; print(os.environ['SITE'], sys.argv[1:])",
                                   ("a b", "c'd"), prologue="export SITE=ready", timeout=30)
    assert "timeout -k 5 30 " in command
    done = subprocess.run(["bash", "-c", command], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["ready ['a b', \"c'd\"]", "@@hpcllm-probe-exit:0"]


# --- after the second review ------------------------------------------------------------------------


def test_the_probe_command_says_when_the_login_nodes_timeout_ended_it(tmp_path):
    from jupyter_hpcllm.edge.slurm import TIMED_OUT, image_python_command, probe_exit

    command = image_python_command("none", "", "", "import time; time.sleep(30)", (), timeout=1)
    done = subprocess.run(["bash", "-c", command], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert probe_exit(done.stdout) in TIMED_OUT
    quick = image_python_command("none", "", "", "print('hi')", (), timeout=30)
    assert probe_exit(subprocess.run(["bash", "-c", quick], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                                     capture_output=True, text=True, timeout=60).stdout) == 0


def test_auto_is_sglangs_only_and_an_image_that_could_not_answer_may_take_it():
    with pytest.raises(InvalidOption, match="`auto` is SGLang's"):
        plan(facts("Qwen3-8B"), engine="vllm", tool_call_parser="auto")
    silent = {"sglang": ImageInfo("sglang", "/img/sglang.sif", problems=("the image did not answer",))}
    assert plan(facts("Qwen3-8B"), silent, engine="sglang", reasoning_parser="auto").reasoning_parser == "auto"


def test_a_draft_under_a_dot_directory_is_fine_and_one_with_a_quote_is_not():
    cached = ModelFacts("Qwen3-8B_eagle3", "/home/me/.cache/huggingface/hub/models--X--Y/snapshots/abc", EAGLE3, "",
                        GB, 1)
    chosen = plan(facts("Qwen3-8B"), draft=DraftFound(cached, "your choice"), engine="vllm", speculative="x")
    assert "/home/me/.cache/huggingface/hub/models--X--Y/snapshots/abc" in chosen.spec.binds
    quoted = replace(cached, path='/m/Qwen3-8B"eagle3')
    with pytest.raises(InvalidOption, match="JSON value"):
        plan(facts("Qwen3-8B"), draft=DraftFound(quoted, "your choice"), engine="vllm", speculative="x")


def test_dp_attention_ranks_get_as_many_gpus_each():
    chosen = plan(facts("Qwen3-8B"), engine="sglang", replicas=2, engine_args=("--enable-dp-attention",))
    assert (chosen.gpus, chosen.tensor_parallel, chosen.replicas) == (2, 2, 2)
    assert "tensor-parallel 2 with 2 data-parallel attention ranks" in plan_text(chosen)
    assert not any("--replicas 2 would" in reason for reason in chosen.reasons)


def test_a_card_nested_too_deep_is_no_crash():
    from jupyter_hpcllm.planning.modelcard import card_advice

    assert card_advice("vllm serve x --speculative-config '" + "[" * 100_000 + "'", "vllm").speculative is None
