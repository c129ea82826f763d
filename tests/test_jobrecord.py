"""Provenance read back from a job's script: the image and the engine's arguments, whatever the runtime."""

from __future__ import annotations

from pathlib import Path

from jupyter_hpcllm.planning.jobrecord import engine_record

GOLDEN = Path(__file__).parent / "golden"
IMAGE = "/hps/nobackup/saezrodriguez/singularity_images/vllm-openai_latest.sif"


def test_the_vllm_and_sglang_golden_scripts():
    vllm = engine_record((GOLDEN / "ebi-gpt-oss-120b-vllm.sbatch").read_text())
    assert vllm["image"] == IMAGE
    assert vllm["command"][:2] == ["vllm", "serve"] and vllm["tool_call_parser"] == "openai"
    assert vllm["reasoning_parser"] == "openai_gptoss" and vllm["tensor_parallel"] == "4"
    sglang = engine_record((GOLDEN / "ebi-gpt-oss-120b-sglang.sbatch").read_text())
    assert sglang["image"].endswith("sglang_latest.sif") and sglang["tensor_parallel"] == "4"
    assert sglang["tool_call_parser"] == "gpt-oss"
    assert sglang["command"][:4] == ["python", "-m", "sglang.launch_server", "--model-path"]  # the launcher's code: out
    assert not any("key" in word for word in sglang["command"])


def test_other_runtimes_and_their_options():
    text = (GOLDEN / "ebi-gpt-oss-120b-vllm.sbatch").read_text()
    apptainer = text.replace("singularity exec --nv --bind /hps", "/usr/bin/apptainer exec --cleanenv --nv --bind /hps")
    assert engine_record(apptainer)["image"] == IMAGE
    bare = text.replace(f"singularity exec --nv --bind /hps {IMAGE} ", "")
    record = engine_record(bare)
    assert record["image"] is None and record["command"][:2] == ["vllm", "serve"]
    assert record["tool_call_parser"] == "openai"


def test_a_script_that_is_not_ours_gives_nothing():
    assert engine_record("#!/bin/bash\nsrun hostname\n") == {}
    assert engine_record("") == {}
