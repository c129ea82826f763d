"""The sbatch script is a pure function of a typed spec, checked against golden files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_hpcllm.config.checks import check_mem, check_time
from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.edge.slurm import (
    JobRow,
    JobState,
    cancel_command,
    job_script_command,
    key_command,
    log_command,
    parse_probe,
    parse_queue,
    parse_sbatch,
    probe_command,
)
from jupyter_hpcllm.errors import ConfigError, SlurmOutputError
from jupyter_hpcllm.planning.plan import plan_launch
from jupyter_hpcllm.planning.script import render_script

GOLDEN = Path(__file__).parent / "golden"
B = "0123456789abcdef"  # a probe boundary


def _marked(text: str) -> str:
    """Probe output as written below, with this test's boundary in its section markers."""
    return text.replace("@@hpcllm:", f"@@hpcllm:{B}:")


def _plan(profile, model, **options):
    return plan_launch(profile, LaunchOptions(model, **options))


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
    plan = _plan(ebi, "gpt-oss-120b", gpus=4, gpu_type="a100", engine=engine)
    _check_golden(f"ebi-gpt-oss-120b-{engine}.sbatch", plan.script)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_script_has_the_runbooks_allocation_and_flags(ebi, engine):
    script = _plan(ebi, "gpt-oss-120b", gpus=4, gpu_type="a100", engine=engine).script
    # The parsers are the family table's (tests/test_families.py owns it): here, only that they arrive.
    tool, reasoning, _, _ = json.loads((GOLDEN / "families.json").read_text())["gpt-oss-120b"][engine]
    for directive in ("--nodes=1", "--gres=gpu:a100:4", "--cpus-per-task=16", "--mem=32G", "--time=4:00:00"):
        assert f"#SBATCH {directive}\n" in script
    assert "singularity exec --nv" in script
    block = script.split("# Start the engine")[1].split("> >(redact")[0]
    words = shlex.split("\n".join(line for line in block.splitlines()[1:] if not line.startswith("#")))
    assert words[words.index("--tool-call-parser") + 1] == tool
    assert words[words.index("--reasoning-parser") + 1] == reasoning
    if engine == "vllm":
        assert words[words.index("vllm") + 1] == "serve"
        assert words[words.index("--tensor-parallel-size") + 1] == "4"
        assert "--enable-auto-tool-choice" in words
        assert "/sglang_latest.sif" not in script
    else:
        assert words[words.index("--tp-size") + 1] == "4"
        assert words[words.index("--host") + 1] == "127.0.0.1"  # the relay is the node's one door
        assert words[words.index("--model-path") + 1] == "/hps/nobackup/saezrodriguez/hf_models/gpt-oss-120b"
    assert "--api-key" not in " ".join(w for w in words if not w.startswith("import"))


def test_script_is_valid_bash(ebi):
    for engine in ("vllm", "sglang"):
        script = _plan(ebi, "Qwen3-8B", engine=engine, engine_args=("--max-model-len", "x; touch /tmp/p")).script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_extra_args_are_quoted_not_run(ebi):
    script = _plan(ebi, "Qwen3-8B", engine_args=("--chat-template", "$(touch /tmp/pwned); x`id`")).script
    line = next(line for line in script.splitlines() if "--chat-template" in line)
    assert "'$(touch /tmp/pwned); x`id`'" in line


def test_the_job_name_is_stable_and_tracks_options(ebi):
    first = _plan(ebi, "gpt-oss-120b", gpus=4).job_name
    assert first == _plan(ebi, "gpt-oss-120b", gpus=4).job_name
    assert first.startswith("hpcllm-gpt-oss-120b-")
    assert first != _plan(ebi, "gpt-oss-120b", gpus=2).job_name
    assert first != _plan(ebi, "gpt-oss-120b", gpus=4, engine_args=("--max-model-len", "8192")).job_name


def test_the_script_is_a_function_of_the_spec_alone(ebi, monkeypatch, tmp_path):
    spec = _plan(ebi, "gpt-oss-20b").spec
    script = render_script(spec)
    # Nothing from the machine that renders it (environment, directory, clock) gets in.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.chdir(tmp_path)
    assert render_script(replace(spec)) == script
    # Each field lands in its own line and changes nothing else.
    changed = render_script(replace(spec, time="1:00:00", mem="64G"))
    assert len(changed.splitlines()) == len(script.splitlines())
    assert [(old, new) for old, new in zip(script.splitlines(), changed.splitlines(), strict=True) if old != new] == [
        ("#SBATCH --mem=32G", "#SBATCH --mem=64G"), ("#SBATCH --time=4:00:00", "#SBATCH --time=1:00:00")]


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
    assert parse_sbatch("123;cluster") == "123"
    assert parse_sbatch("sbatch: warning: something\n16\n") == "16"


@pytest.mark.parametrize("text", [
    "", "\n\n", "   ", "\x00\x01\x7f\x80\xff\ufffd\x1b[31m\r\n", "sbatch: error: Batch job submission failed",
    ";cluster", "abc;123", "-5", "1.5", "12|hpcllm-x|RUNNING", "Submitted batch job 17",
])
def test_sbatch_garbage_is_a_slurm_output_error(text):
    with pytest.raises(SlurmOutputError) as caught:
        parse_sbatch(text)
    assert caught.value.command == "sbatch" and caught.value.output == text


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
    probe = parse_probe(_marked(text), B)
    assert probe.state is JobState.RUNNING and probe.queue_checked
    assert probe.server == {"job_id": "12", "node": "gpu01", "port": 23456, "model": "m", "engine": "vllm"}
    assert probe.exit_code is None
    assert "Loading 2/2" in probe.log


def test_parse_probe_of_a_gone_job():
    probe = parse_probe(_marked("@@hpcllm:queue\nslurm_load_jobs error: Invalid job id specified\n@@hpcllm:server\n\n"
                        "@@hpcllm:exit\n1\n@@hpcllm:log\n@@hpcllm:slurm\n"), B)
    assert probe.row is None and probe.state is JobState.UNKNOWN and probe.exit_code == 1


@pytest.mark.parametrize("job_id", ["1; touch x", "--me", "-1", "12\n3", "1 2", "²", "12_", "_3", "", "1" * 13])
def test_only_job_ids_reach_a_command(job_id):
    for command in (lambda j: probe_command(j, B), cancel_command, key_command, log_command, job_script_command):
        with pytest.raises(ConfigError, match="is not a Slurm job id"):
            command(job_id)
    assert cancel_command(" 12 ") == "scancel 12" and cancel_command("12_3") == "scancel 12_3"


def test_an_engine_log_cannot_pose_as_the_jobs_files():
    # What an engine (or a prompt it echoes) may print: the markers of an older probe, with a forged address.
    forged = ('@@hpcllm:server\n{"job_id": "12", "node": "evil", "port": 1, "model": "m", "engine": "vllm"}\n'
              f'@@hpcllm:{"f" * 16}:server\n{{"node": "evil", "port": 2}}\n@@hpcllm:{"f" * 16}:exit\n0\n')
    text = (f"\n@@hpcllm:{B}:server\n\n@@hpcllm:{B}:exit\n\n@@hpcllm:{B}:log\n{forged}\n@@hpcllm:{B}:slurm\n")
    probe = parse_probe(text, B)
    assert probe.server is None and probe.exit_code is None and "evil" in probe.log
    # Even the right boundary printed later cannot override the job's own sections (the first one counts).
    probe = parse_probe(text + f"@@hpcllm:{B}:server\n{{\"node\": \"evil\", \"port\": 3}}\n", B)
    assert probe.server is None


def test_the_probe_reads_what_bash_prints(tmp_path):
    job = tmp_path / ".hpcllm" / "jobs" / "12"
    job.mkdir(parents=True)
    (job / "server.json").write_text('{"node": "gpu01", "port": 23456}\n')
    (job / "exit_code").write_text("143\n")
    (job / "idle_exit").write_text('{"reason": "idle", "idle_seconds": 3600}')
    (job / "activity.json").write_text('{"idle_timeout": 3600, "last_activity": 5, "leases": 0}')
    (job / "engine.log").write_text("@@hpcllm:server\nline\n")
    command = probe_command("12", B, queue=False)
    out = subprocess.run(["bash", "-c", command], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    probe = parse_probe(out, B)
    assert probe.server == {"node": "gpu01", "port": 23456} and probe.exit_code == 143
    assert probe.idle_exit == {"reason": "idle", "idle_seconds": 3600}
    assert probe.activity == {"idle_timeout": 3600, "last_activity": 5, "leases": 0}
    assert probe.log.strip() == "@@hpcllm:server\nline" and probe.now is not None and not probe.queue_checked


# `raw_exit.lstrip("-").isdigit()` lets "--5" and non-ASCII digits ("²") through to int(): a bare ValueError.

# Hand-written nasty output: what a login script, a broken Slurm or a half-written file may print.
NASTY = [
    pytest.param("", id="empty"),
    pytest.param("\n\n", id="blank-lines"),
    pytest.param("\x00\x01\x7f\x80\xff\ufffd\x1b[31mbinary\r\n\x00", id="binary-ish"),
    pytest.param("sbatch: error: Batch job submission failed: Invalid account\n", id="error-message"),
    pytest.param("123;cluster", id="id-and-cluster"),
    pytest.param("12|hpcllm-x|RUNNING\n", id="too-few-fields"),
    pytest.param("12|a|RUNNING|n|l|r|s|c|g|e|extra\n", id="too-many-fields"),
    pytest.param("|||||||||\n", id="ten-empty-fields"),
    pytest.param("x1|a|RUNNING|n|l|r|s|c|g|e\n_|a|b|c|d|e|f|g|h|i\n", id="non-numeric-job-ids"),
    pytest.param("@@hpcllm:exit\nnot a number\n", id="non-numeric-exit-code"),
    pytest.param("@@hpcllm:exit\n1.5\n@@hpcllm:log\n", id="fractional-exit-code"),
    pytest.param("@@hpcllm:exit\n--5\n", id="double-minus-exit-code"),
    pytest.param("@@hpcllm:exit\n²\n", id="superscript-exit-code"),
    pytest.param('@@hpcllm:server\n{"port": \n@@hpcllm:queue\n@@hpcllm:queue\n@@hpcllm:\n@@hpcllm:exit', id="torn"),
]


@pytest.mark.parametrize("text", NASTY)
def test_no_bare_value_error_escapes_the_slurm_parsers(text):
    def read(parser, text):
        try:
            return parser(text)
        except SlurmOutputError:
            raise
        except ValueError as error:
            pytest.fail(f"{parser.__qualname__}({text!r}) raised a bare {type(error).__name__}: {error}")

    try:
        assert read(parse_sbatch, text).isdigit()
    except SlurmOutputError as error:
        assert error.output == text
    rows = read(parse_queue, text)
    assert isinstance(rows, list) and all(isinstance(row, JobRow) for row in rows)
    probe = read(lambda text: parse_probe(_marked(text), B), text)
    assert probe.exit_code is None or type(probe.exit_code) is int
    for line in [text, *text.splitlines()]:
        assert isinstance(read(JobState.parse, line), JobState)


# Not ValueErrors, but values of the wrong kind that fail later, far from the parser.
@pytest.mark.parametrize("text", ["²", "١٢٣;cluster"])
def test_a_job_id_is_ascii_digits(text):
    with pytest.raises(SlurmOutputError):
        parse_sbatch(text)


@pytest.mark.parametrize("text", ["[1, 2]", "1.5", "NaN", '"text"'])
def test_a_server_file_that_is_not_an_object_is_no_server(text):
    assert parse_probe(_marked(f"@@hpcllm:server\n{text}\n"), B).server is None


def _stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + script + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("queue", "expected"), [("", ("42", False)), ("41\n40\n", ("41", True))])
def test_the_locked_submission_in_bash(tmp_path, queue, expected):
    from jupyter_hpcllm.edge.slurm import parse_submission, submit_command

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "squeue", f"printf '{queue}'")
    _stub(bin_dir, "sbatch", f'cat "${{@: -1}}" > {tmp_path}/submitted; echo 42')
    script = "#!/bin/bash\necho hi\n"
    command = submit_command("0123456789ab", "hpcllm;model=m", len(script), unique_name="hpcllm-m-1234")
    # It must return as soon as it is done: nothing it leaves behind (the lock's keeper) may hold its output.
    result = subprocess.run(["bash", "-c", command], input=script, capture_output=True, text=True, timeout=15,
                            env={"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin", "USER": "u"})
    assert result.returncode == 0, result.stderr
    assert parse_submission(result.stdout) == expected
    assert not (tmp_path / ".hpcllm/jobs/.lock-hpcllm-m-1234").exists()  # released by its owner
    assert (tmp_path / "submitted").exists() == (not expected[1])
