from __future__ import annotations

import pytest

from jupyter_hpcllm.errors import ConfigError
from jupyter_hpcllm.planning.engines import PORT, EngineSpec, build_command, display_argv, loading_progress


def test_vllm_command_follows_the_runbook():
    command = build_command(EngineSpec("vllm", "/m/gpt-oss-120b", "gpt-oss-120b", 4, "openai", "openai_gptoss"))
    argv = list(command.argv)
    assert argv[:3] == ["vllm", "serve", "/m/gpt-oss-120b"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--port") + 1] is PORT
    assert argv[argv.index("--tool-call-parser") - 1] == "--enable-auto-tool-choice"
    assert command.key_env == "VLLM_API_KEY" and "--api-key" not in argv


def test_sglang_command_follows_the_runbook():
    spec = EngineSpec("sglang", "/m/Qwen3-8B", "Qwen3-8B", 2, "qwen25", "qwen3", ("--context-length", "8192"))
    command = build_command(spec)
    shown = list(display_argv(command))
    assert shown[:3] == ["python", "-m", "sglang.launch_server"]
    assert shown[shown.index("--model-path") + 1] == "/m/Qwen3-8B"
    assert shown[shown.index("--tp-size") + 1] == "2"
    assert shown[shown.index("--host") + 1] == "127.0.0.1"
    assert shown[-2:] == ["--context-length", "8192"]
    assert "--api-key" not in command.argv and command.key_file_arg


def test_no_parsers_means_no_flags():
    argv = build_command(EngineSpec("vllm", "/m/x", "x", 1)).argv
    assert "--enable-auto-tool-choice" not in argv and "--reasoning-parser" not in argv


@pytest.mark.parametrize("arg", ["--port", "--api-key=abc", "--host"])
def test_managed_options_are_refused(arg):
    with pytest.raises(ConfigError, match="set by jupyter-hpcllm"):
        build_command(EngineSpec("vllm", "/m/x", "x", 1, extra_args=(arg, "1")))


def test_loading_progress_reads_the_last_tqdm_state():
    log = ("INFO start\nLoading safetensors checkpoint shards:   0% Completed | 0/11 [00:00<?, ?it/s]\r"
           "Loading safetensors checkpoint shards:  45% Completed | 5/11 [00:05<00:06,  1.02s/it]\r")
    assert loading_progress(log) == (5, 11)
    assert loading_progress("nothing yet") is None


@pytest.mark.parametrize(("engine", "arg"), [("vllm", "--tensor-parallel-size=2"), ("vllm", "-tp"),
                                             ("vllm", "--tensor-parallel"), ("sglang", "--tp-size"),
                                             ("sglang", "--tensor-parallel-size"), ("sglang", "--tp")])
def test_the_tensor_parallel_size_is_the_gpu_count_and_cannot_be_passed_again(engine, arg):
    """A second tensor-parallel size after `--` would win over --gpus: GPUs held idle, or not held at all."""
    from jupyter_hpcllm.errors import ConfigError

    with pytest.raises(ConfigError, match="set it with --gpus"):
        build_command(EngineSpec(engine, "/m/x", "x", 4, None, None, (arg, "2")))
