"""The sbatch script is a pure function of a typed spec, checked against golden files."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jupyter_hpcllm.errors import ConfigError
from jupyter_hpcllm.plan import plan_launch
from jupyter_hpcllm.profiles import load_profile
from jupyter_hpcllm.slurm import (
    JobState,
    check_mem,
    check_time,
    parse_probe,
    parse_queue,
    parse_sbatch,
    probe_command,
    render_script,
)

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def ebi(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    (tmp_path / "absent.toml").write_text("")
    return load_profile("ebi")


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with UPDATE_GOLDEN=1 once"
    assert text == path.read_text()


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_script_matches_golden(ebi, engine):
    plan = plan_launch(ebi, "gpt-oss-120b", gpus=4, gpu_type="a100", engine=engine)
    _check_golden(f"ebi-gpt-oss-120b-{engine}.sbatch", plan.script)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_script_has_the_runbooks_allocation_and_flags(ebi, engine):
    script = plan_launch(ebi, "gpt-oss-120b", gpus=4, gpu_type="a100", engine=engine).script
    for directive in ("--nodes=1", "--gres=gpu:a100:4", "--cpus-per-task=16", "--mem=32G", "--time=4:00:00"):
        assert f"#SBATCH {directive}\n" in script
    assert "singularity exec --nv" in script
    words = shlex.split(script.split("# Start the engine")[1].split("> >(redact")[0].split("\n", 1)[1])
    if engine == "vllm":
        assert words[words.index("vllm") + 1] == "serve"
        assert words[words.index("--tensor-parallel-size") + 1] == "4"
        assert "--enable-auto-tool-choice" in words
        assert words[words.index("--tool-call-parser") + 1] == "openai"
        assert words[words.index("--reasoning-parser") + 1] == "openai_gptoss"
        assert "/sglang_latest.sif" not in script
    else:
        assert words[words.index("--tp-size") + 1] == "4"
        assert words[words.index("--host") + 1] == "0.0.0.0"
        assert words[words.index("--tool-call-parser") + 1] == "gpt-oss"
        assert words[words.index("--model-path") + 1] == "/hps/nobackup/saezrodriguez/hf_models/gpt-oss-120b"
    assert "--api-key" not in " ".join(w for w in words if not w.startswith("import"))


def test_script_is_valid_bash(ebi):
    for engine in ("vllm", "sglang"):
        script = plan_launch(ebi, "Qwen3-8B", engine=engine, engine_args=["--max-model-len", "x; touch /tmp/p"]).script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_extra_args_are_quoted_not_run(ebi):
    script = plan_launch(ebi, "Qwen3-8B", engine_args=["--chat-template", "$(touch /tmp/pwned); x`id`"]).script
    line = next(line for line in script.splitlines() if "--chat-template" in line)
    assert "'$(touch /tmp/pwned); x`id`'" in line


def test_the_job_name_is_stable_and_tracks_options(ebi):
    first = plan_launch(ebi, "gpt-oss-120b", gpus=4).job_name
    assert first == plan_launch(ebi, "gpt-oss-120b", gpus=4).job_name
    assert first.startswith("hpcllm-gpt-oss-120b-")
    assert first != plan_launch(ebi, "gpt-oss-120b", gpus=2).job_name
    assert first != plan_launch(ebi, "gpt-oss-120b", gpus=4, engine_args=["--max-model-len", "8192"]).job_name


def test_render_is_pure(ebi):
    spec = plan_launch(ebi, "gpt-oss-20b").spec
    assert render_script(spec) == render_script(spec)


@pytest.mark.parametrize("text, state", [
    ("RUNNING", JobState.RUNNING),
    ("CANCELLED by 1001", JobState.CANCELLED),
    ("CANCELLED+", JobState.CANCELLED),
    ("TIMEOUT", JobState.TIMEOUT),
    ("PENDING", JobState.PENDING),
    ("something-new", JobState.UNKNOWN),
])
def test_states_tolerate_suffixes(text, state):
    assert JobState.parse(text) is state


def test_active_and_finished():
    assert JobState.PENDING.is_active and JobState.RUNNING.is_active
    assert JobState.CANCELLED.is_finished and not JobState.CANCELLED.is_active
    assert not JobState.UNKNOWN.is_finished


@pytest.mark.parametrize("good", ["90", "4:00:00", "1-12:00:00", "30:00", "2-0"])
def test_valid_times(good):
    assert check_time(good) == good


@pytest.mark.parametrize("bad", ["4h", "4:99:00", "", "0", "1:2:3:4", "; rm -rf ~"])
def test_invalid_times(bad):
    with pytest.raises(ConfigError, match="not a Slurm time limit"):
        check_time(bad)


@pytest.mark.parametrize("bad", ["32GB", "lots", "0G", "-1G", "32 G"])
def test_invalid_memory(bad):
    with pytest.raises(ConfigError, match="memory size"):
        check_mem(bad)


def test_parse_sbatch():
    assert parse_sbatch("14\n") == "14"
    assert parse_sbatch("15;cluster\n") == "15"
    with pytest.raises(ValueError):
        parse_sbatch("sbatch: error: oops")


QUEUE = """\
12|hpcllm-gpt-oss-120b-1a2b3c4d|RUNNING|gpu01|3:59:10|None|2026-11-28T18:48:15|hpcllm;model=gpt-oss-120b;engine=vllm|gres:gpu:a100:4|0:50
13|other|PENDING||4:00:00|Resources|2026-11-28T20:00:00|(null)|gres:gpu:h200:8|0:00
garbage line
"""


def test_parse_queue():
    rows = parse_queue(QUEUE)
    assert [r.job_id for r in rows] == ["12", "13"]
    first, second = rows
    assert first.state is JobState.RUNNING and first.node == "gpu01" and first.is_ours
    assert first.comment_field("model") == "gpt-oss-120b" and first.comment_field("engine") == "vllm"
    assert second.state is JobState.PENDING and second.reason == "Resources" and not second.is_ours
    assert second.comment == "" and second.start_time == "2026-11-28T20:00:00"


def test_parse_probe_sections():
    text = (
        "@@hpcllm:queue\n" + QUEUE.splitlines()[0] + "\n"
        '@@hpcllm:server\n{"job_id": "12", "node": "gpu01", "port": 23456, "model": "m", "engine": "vllm"}\n\n'
        "@@hpcllm:exit\n@@hpcllm:log\nLoading 1/2\rLoading 2/2\n\n@@hpcllm:slurm\n"
    )
    probe = parse_probe(text)
    assert probe.state is JobState.RUNNING and probe.queue_checked
    assert probe.server == {"job_id": "12", "node": "gpu01", "port": 23456, "model": "m", "engine": "vllm"}
    assert probe.exit_code is None
    assert "Loading 2/2" in probe.log


def test_parse_probe_of_a_gone_job():
    probe = parse_probe("@@hpcllm:queue\nslurm_load_jobs error: Invalid job id specified\n@@hpcllm:server\n\n"
                        "@@hpcllm:exit\n1\n@@hpcllm:log\n@@hpcllm:slurm\n")
    assert probe.row is None and probe.state is JobState.UNKNOWN and probe.exit_code == 1


def test_probe_command_quotes_the_job_id():
    assert "'1; touch x'" in probe_command("1; touch x")
