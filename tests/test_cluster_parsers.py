"""Issue 12 end to end on the local cluster: the image probe reads the engine double's registries, `--engine
auto` picks the image that loads the model, a model card's flag reaches the engine, and replicas and
speculative decoding pass the double's strict argument checks."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_hpcllm.discovery import models as facts_module
from jupyter_hpcllm.errors import ConfigError
from jupyter_hpcllm.lifecycle import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_leftover_jobs")]

_spec = importlib.util.spec_from_file_location(
    "fake_engine", Path(__file__).parent / "engine_double" / "fake_engine.py")
double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(double)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    facts_module._memory.clear()


def _chat(server) -> str:
    answer = server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "ping"}], max_tokens=16)
    return answer.choices[0].message.content or ""


def test_the_probe_reads_each_images_registries(profile, make_image):
    custom = replace(profile, images={"vllm": make_image("vllm", version="0.33.0"),
                                      "sglang": make_image("sglang", version="0.5.23")})
    with Cluster(custom) as cluster:
        vllm, sglang = cluster.image("vllm"), cluster.image("sglang")
    assert set(vllm.tool_parsers) == set(double.VLLM_TOOL_PARSERS)
    assert set(vllm.reasoning_parsers) == set(double.VLLM_REASONING_PARSERS)  # not in `vllm serve --help`
    assert set(vllm.architectures) == set(double.SUPPORTED_ARCHITECTURES)
    assert vllm.version == "0.33.0" and not vllm.auto_parsers and not vllm.problems
    assert set(sglang.tool_parsers) == set(double.SGLANG_TOOL_PARSERS) and "auto" not in sglang.tool_parsers
    assert set(sglang.reasoning_parsers) == set(double.SGLANG_REASONING_PARSERS) and sglang.auto_parsers
    assert sglang.version == "0.5.23"


def test_older_module_paths_and_an_image_without_auto(profile, make_image):
    old = replace(profile, images={"vllm": make_image("vllm", registry_layout="old", tool_parsers="hermes,mistral"),
                                   "sglang": make_image("sglang", registry_layout="old", auto_parsers=0)})
    with Cluster(old) as cluster:
        vllm, sglang = cluster.image("vllm"), cluster.image("sglang")
    assert vllm.tool_parsers == ("hermes", "mistral") and vllm.reasoning_parsers
    assert sglang.reasoning_parsers and not sglang.auto_parsers


def test_one_probe_per_image_then_only_its_mtime(profile, make_image, monkeypatch):
    custom = replace(profile, images={"vllm": make_image("vllm"), "sglang": make_image("sglang")})
    with Cluster(custom) as cluster:
        cluster.image("vllm")
        commands = []
        original = type(cluster.transport).run

        def spy(self, command, **kwargs):
            commands.append(command)
            return original(self, command, **kwargs)

        monkeypatch.setattr(type(cluster.transport), "run", spy)
        cluster.image("vllm")
        assert len(commands) == 1 and commands[0].startswith("stat ")
        os.utime(custom.images["vllm"], (1_800_000_000, 1_800_000_000))  # a new image is asked again
        cluster.image("vllm")
        assert len(commands) == 3 and "HPCLLM-IMAGE-PROBE" in commands[2]


def test_engine_auto_takes_the_image_that_loads_the_model(profile, make_image):
    # The vLLM image here predates Qwen3: auto chooses SGLang, says why, and the server answers.
    no_qwen3 = ",".join(a for a in double.SUPPORTED_ARCHITECTURES if not a.startswith("Qwen3"))
    custom = replace(profile, images={"vllm": make_image("vllm", delay=0.3, version="0.8.0", architectures=no_qwen3),
                                      "sglang": make_image("sglang", delay=0.3)})
    with Cluster(custom) as cluster:
        plan = cluster.plan("Qwen3-8B")
        assert plan.engine == "sglang" and "the vllm image (0.8.0) does not" in plan.engine_reason
        with pytest.raises(ConfigError, match=r"Try --engine sglang \(or auto\)"):
            cluster.plan("Qwen3-8B", engine="vllm")
        server = cluster.up("Qwen3-8B", timeout=120)
        try:
            assert server.engine == "sglang" and _chat(server).startswith("Echo: ping")
        finally:
            server.down()
    neither = replace(custom, images={"vllm": custom.images["vllm"],
                                      "sglang": make_image("sglang", architectures=no_qwen3, version="0.4.0")})
    with Cluster(neither) as cluster, pytest.raises(ConfigError, match=r"Qwen3ForCausalLM.*0\.8\.0.*0\.4\.0"):
        cluster.plan("Qwen3-8B")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_the_model_cards_flag_reaches_the_engine(profile_with, engine):
    """Moonlight's tokenizer is remote code: the engine double refuses to start without --trust-remote-code
    (tests/test_engine_double.py), which only its model card names."""
    profile = profile_with(delay=0.3)
    with Cluster(profile) as cluster:
        plan = cluster.plan("Moonlight-16B-A3B-Instruct", engine=engine)
        assert "--trust-remote-code (model card)" in plan.parsers.flag_sources
        server = cluster.up("Moonlight-16B-A3B-Instruct", engine=engine, timeout=120)
        try:
            assert _chat(server).startswith("Echo: ping")
        finally:
            server.down()


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_replicas_run_data_parallel_in_one_job(profile_with, engine):
    profile = profile_with(delay=0.3)
    with Cluster(profile) as cluster:
        server = cluster.up("Qwen3-8B", engine=engine, gpus=2, replicas=2, timeout=120)
        try:
            assert _chat(server).startswith("Echo: ping")
            log = server.logs()
            assert ("data_parallel_size" in log or "dp_size=2" in log), log[-2000:]
        finally:
            server.down()


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_speculative_decoding_with_the_draft_the_card_names(profile_with, engine):
    profile = profile_with(delay=0.3)
    with Cluster(profile) as cluster:
        plan = cluster.plan("Qwen3-8B", engine=engine, speculative="auto")
        assert plan.speculation.method == "eagle3" and plan.speculation.source == "the model card"
        assert plan.speculation.draft.path.endswith("/Qwen3-8B_eagle3")
        server = cluster.up("Qwen3-8B", engine=engine, speculative="auto", timeout=120)
        try:
            assert _chat(server).startswith("Echo: ping")
            assert "eagle3" in server.logs().lower()
        finally:
            server.down()


def test_a_draft_that_cannot_work_is_refused_before_submitting(profile_with):
    profile = profile_with(delay=0.3)
    with Cluster(profile) as cluster, pytest.raises(ConfigError, match="vocabulary"):
        cluster.plan("Qwen3-8B", speculative="Llama-3.1-8B-Instruct")
