"""Model facts over SFTP, the model listing, the image probe and `hpcllm plan`, on the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from jupyter_hpcllm.discovery import models as facts_module
from jupyter_hpcllm.discovery.models import list_models, model_facts
from jupyter_hpcllm.errors import ConfigError, ModelNotFound
from jupyter_hpcllm.lifecycle import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test starts with empty fact and image caches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    facts_module._memory.clear()


@pytest.fixture
def files(transport):
    return transport.files()


def plan_for(model, *, profile, **options):
    with Cluster(profile) as cluster:
        return cluster.plan(model, **options)


def test_facts_over_sftp(profile, files):
    facts = model_facts(profile, files, "gpt-oss-120b")
    assert facts.path == "/srv/hpcllm/models/gpt-oss-120b" and facts.name == "gpt-oss-120b"
    assert facts.shards == 15 and round(facts.weight_gb, 1) == 65.3
    assert (facts.model_type, facts.heads, facts.kv_heads, facts.layers) == ("gpt_oss", 64, 8, 36)
    assert "<|channel|>" in facts.chat_template


def test_hugging_face_cache_layout(profile, files):
    absolute = model_facts(profile, files, "/srv/hpcllm/hf_cache/models--Qwen--Qwen3-8B")
    assert "/snapshots/" in absolute.path and absolute.name == "Qwen3-8B"
    assert absolute.shards == 5 and round(absolute.weight_gb, 1) == 16.4 and absolute.model_type == "qwen3"
    cache_root = replace(profile, model_root="/srv/hpcllm/hf_cache")
    for name in ("Qwen/Qwen3-8B", "Qwen3-8B", "models--Qwen--Qwen3-8B"):
        assert model_facts(cache_root, files, name).path == absolute.path


def test_missing_model_lists_the_closest(profile, files):
    with pytest.raises(ModelNotFound) as caught:
        model_facts(profile, files, "qwen3-8b")
    assert caught.value.candidates[0] == "Qwen3-8B"


def test_a_second_lookup_costs_no_round_trip(profile, files):
    model_facts(profile, files, "Phi-4")

    class NoFiles:
        def list(self, path):
            raise AssertionError(f"listed {path}")

        def read(self, path, limit=0):
            raise AssertionError(f"read {path}")

    facts_module._memory.clear()  # the disk cache alone must answer (a new kernel, same machine)
    again = model_facts(profile, NoFiles(), "Phi-4")
    assert again.heads == 40


def test_listing(profile, files):
    models = {m.name: m for m in list_models(profile, files)}
    assert len(models) == 17 and models["DeepSeek-R1"].is_mla
    assert "vllm serve Qwen/Qwen3-8B --speculative-config" in models["Qwen3-8B"].card  # the model card, read
    assert models["Mistral-7B-Instruct-v0.3"].shards == 3


def test_plan_for_every_fixture_family(profile):
    expected = {
        "gpt-oss-20b": ("openai", "openai_gptoss", "gpt-oss", "gpt-oss", "gpu:a100:1"),
        "gpt-oss-120b": ("openai", "openai_gptoss", "gpt-oss", "gpt-oss", "gpu:h200:1"),
        "Qwen3-8B": ("hermes", "qwen3", "qwen25", "qwen3", "gpu:a100:1"),
        "Qwen3-Coder-30B-A3B-Instruct": ("qwen3_coder", None, "qwen3_coder", None, "gpu:a100:1"),
        "QwQ-32B": ("hermes", "deepseek_r1", "qwen25", "deepseek-r1", "gpu:h200:1"),
        "Qwen2.5-7B-Instruct": ("hermes", None, "qwen25", None, "gpu:a100:1"),
        "Llama-3.1-8B-Instruct": ("llama3_json", None, "llama3", None, "gpu:a100:1"),
        "Mistral-7B-Instruct-v0.3": ("mistral", None, "mistral", None, "gpu:a100:1"),
        "Phi-4": (None, None, None, None, "gpu:a100:1"),
        "gemma-3-27b-it": ("pythonic", None, "pythonic", None, "gpu:h200:1"),
        "GLM-4.5-Air": ("glm45", "glm45", "glm45", "glm45", "gpu:h200:2"),
        "DeepSeek-R1": ("deepseek_v3", "deepseek_r1", "deepseekv3", "deepseek-r1", "gpu:h200:8"),
        "MiniMax-M2": ("minimax_m2", "minimax_m2_append_think", "minimax-m2", "minimax-append-think", "gpu:a100:4"),
    }
    for name, (vllm_tool, vllm_reasoning, sglang_tool, sglang_reasoning, gres) in expected.items():
        vllm = plan_for(name, profile=profile, engine="vllm")
        sglang = plan_for(name, profile=profile, engine="sglang")
        assert (vllm.tool_parser, vllm.reasoning_parser) == (vllm_tool, vllm_reasoning), name
        assert (sglang.tool_parser, sglang.reasoning_parser) == (sglang_tool, sglang_reasoning), name
        assert vllm.spec.gres == gres, (name, vllm.spec.gres)
        assert vllm.reasons and "smallest allocation" in vllm.reasons[1]
    llama = plan_for("Llama-3.1-8B-Instruct", profile=profile)
    assert "tool_chat_template_llama3.1_json.jinja" in llama.engine_command


def test_the_users_choice_wins(profile):
    plan = plan_for("Qwen3-8B", profile=profile, tool_call_parser="", reasoning_parser="deepseek_r1", gpus=2)
    assert plan.tool_parser is None and plan.reasoning_parser == "deepseek_r1" and plan.gpus == 2
    assert plan.parsers.tool.source == "your choice"
    assert "--tool-call-parser" not in plan.engine_command


def test_the_images_parser_names(cluster):
    """(That each image is asked once per mtime: tests/test_cluster_parsers.py.)"""
    found = cluster.parsers("vllm")
    assert "openai" in found["tool"] and "openai_gptoss" in found["reasoning"]
    assert "qwen3-thinking" in cluster.parsers("sglang")["reasoning"]


def test_a_parser_the_image_does_not_know_is_caught_before_submitting(profile):
    with pytest.raises(ConfigError) as caught:
        plan_for("Qwen3-8B", profile=profile, tool_call_parser="hermes3")
    assert "does not register the tool-call parser 'hermes3'" in str(caught.value)
    assert "Nearest names it knows: hermes" in str(caught.value)


def test_cli_plan_and_models(cluster_config, tmp_path):
    env = {**os.environ, "HPCLLM_CONFIG": str(cluster_config), "XDG_CACHE_HOME": str(tmp_path / "c")}

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "jupyter_hpcllm.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=120)

    plan = run("plan", "gpt-oss-120b", "--script")
    assert plan.returncode == 0, plan.stderr
    assert "needs ≈ 82 GB" in plan.stdout and "1 × h200 (141 GB) is the smallest" in plan.stdout
    assert "#SBATCH --gres=gpu:h200:1" in plan.stdout
    refused = run("plan", "gpt-oss-120b", "--gpus", "1", "--gpu-type", "a100")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("hpcllm: gpt-oss-120b needs ≈ 82 GB; 1 × a100 80 GB is too small. "
                                      "Use --gpus 2 or --gpu-type h200.")
    models = run("models")
    assert models.returncode == 0
    line = next(line for line in models.stdout.splitlines() if line.startswith("QwQ-32B"))
    assert "qwq" in line and "hermes/deepseek_r1" in line and "1 × h200" in line
    parsers = run("parsers", "--engine", "sglang")
    assert "qwen3-thinking" in parsers.stdout
    bad = run("up", "Qwen3-8B", "--tool-call-parser", "hermes3")
    assert bad.returncode == 1 and "Nearest names it knows: hermes" in bad.stderr
