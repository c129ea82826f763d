"""The CLI without a cluster: script printing, errors as one paragraph, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jupyter_hpcllm.cli import main


@pytest.fixture(autouse=True)
def no_config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text("")
    monkeypatch.setenv("HPCLLM_CONFIG", str(path))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    return path


@pytest.mark.parametrize("engine, flags", [
    ("sglang", ["--tp-size 4", "--tool-call-parser gpt-oss", "--reasoning-parser gpt-oss", "--host 127.0.0.1"]),
    ("vllm", ["--tensor-parallel-size 4", "--enable-auto-tool-choice", "--tool-call-parser openai",
              "--reasoning-parser openai_gptoss"]),
])
def test_script_prints_the_seed_allocation(capsys, engine, flags):
    code = main(["script", "gpt-oss-120b", "--gpus", "4", "--gpu-type", "a100", "--profile", "ebi",
                 "--engine", engine])
    out = capsys.readouterr().out
    assert code == 0
    assert "#SBATCH --gres=gpu:a100:4\n" in out and "#SBATCH --time=4:00:00\n" in out
    assert "#SBATCH --cpus-per-task=16\n" in out and "#SBATCH --mem=32G\n" in out
    for flag in flags:
        assert flag in out


def test_engine_args_after_double_dash(capsys):
    assert main(["script", "Qwen3-8B", "--", "--max-model-len", "32768"]) == 0
    assert "--max-model-len 32768" in capsys.readouterr().out


def test_unknown_family_is_said(capsys):
    assert main(["script", "my-finetune"]) == 0
    assert "launching without tool-call and reasoning parsers" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["script", "gpt-oss-120b", "--profile", "nope"], "Unknown profile 'nope'"),
    (["script", "gpt-oss-120b", "--gpus", "9", "--gpu-type", "h200"], "h200 allows 1–8 GPUs"),
    (["script", "gpt-oss-120b", "--gpu-type", "v100"], "GPU type 'v100' is not offered"),
    (["script", "gpt-oss-120b", "--time", "4 hours"], "is not a Slurm time limit"),
    (["script", "gpt-oss-120b", "--mem", "32GB"], "is not a Slurm memory size"),
    (["script", "x; touch /tmp/pwned"], "is not a model name"),
    (["script", "gpt-oss-120b", "--", "--port", "9"], "--port is set by jupyter-hpcllm"),
])
def test_bad_input_is_one_paragraph_without_traceback(argv, message, no_config):
    done = subprocess.run([sys.executable, "-m", "jupyter_hpcllm.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "HPCLLM_CONFIG": str(no_config)})
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    out = capsys.readouterr().out
    assert "--gpu-type" in out and "Arguments after `--` go to the engine verbatim" in out


def test_config_init_and_show(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sub" / "config.toml"
    monkeypatch.setenv("HPCLLM_CONFIG", str(path))
    assert main(["config", "init"]) == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert main(["config", "init"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["config", "show", "--profile", "ebi"]) == 0
    assert 'host = "ihpc.ebi.ac.uk"' in capsys.readouterr().out


def test_import_is_cheap():
    """Neither importing the package nor loading the magics pulls in SSH, the OpenAI client or the widgets."""
    heavy = "('paramiko', 'openai', 'ipywidgets')"
    code = f"import sys, jupyter_hpcllm; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; "
            "InteractiveShell.instance().run_line_magic('load_ext', 'jupyter_hpcllm'); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_count_only_one_gpu_type_allows_picks_that_type(capsys):
    assert main(["script", "gpt-oss-120b", "--gpus", "8", "--profile", "ebi"]) == 0
    assert "#SBATCH --gres=gpu:h200:8\n" in capsys.readouterr().out
