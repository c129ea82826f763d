"""Sizing (memory need, tensor-parallel sizes, the allocation) and the diagnosis of engine logs. Pure."""

from __future__ import annotations

import pytest

from jupyter_hpcllm.config.profiles import PRESETS
from jupyter_hpcllm.errors import ConfigError
from jupyter_hpcllm.planning.diagnose import diagnose
from jupyter_hpcllm.planning.facts import ModelFacts
from jupyter_hpcllm.planning.sizing import choose_allocation, kv_bytes_per_token, memory_need, tp_fits

EBI = PRESETS["ebi"]
GB = 1_000_000_000


def facts(name, gb, heads, kv, layers=36, head_dim=64, **config):
    return ModelFacts(name, f"/m/{name}", {"num_attention_heads": heads, "num_key_value_heads": kv,
                                           "num_hidden_layers": layers, "head_dim": head_dim,
                                           "max_position_embeddings": 131072, **config},
                      weight_bytes=int(gb * GB), shards=1)


GPT_OSS_120B = facts("gpt-oss-120b", 65.3, 64, 8)


def test_the_issues_example():
    need = memory_need(GPT_OSS_120B)
    assert round(need.total_gb) == 82 and need.rule_of_thumb_gb == pytest.approx(81.6, abs=0.1)
    with pytest.raises(ConfigError) as caught:
        choose_allocation(EBI, GPT_OSS_120B, gpu_type="a100", gpus=1)
    assert str(caught.value) == ("gpt-oss-120b needs ≈ 82 GB; 1 × a100 80 GB is too small. "
                                 "Use --gpus 2 or --gpu-type h200.")


def test_smallest_allocation_that_holds_it():
    allocation, reasons = choose_allocation(EBI, GPT_OSS_120B)
    assert (allocation.gpu.name, allocation.count) == ("h200", 1)
    assert "1 × h200 (141 GB) is the smallest allocation" in reasons[1]
    allocation, _ = choose_allocation(EBI, GPT_OSS_120B, gpu_type="a100")
    assert (allocation.gpu.name, allocation.count) == ("a100", 2)
    small = facts("Qwen3-8B", 16.4, 32, 8, head_dim=128)
    assert choose_allocation(EBI, small)[0].describe() == "1 × a100 (80 GB)"


@pytest.mark.parametrize("heads, kv, good", [
    (64, 8, [1, 2, 4, 8]),     # gpt-oss
    (40, 10, [1, 2, 5, 10]),   # Phi-4
    (28, 4, [1, 2, 4]),        # Qwen2.5-7B
    (32, 8, [1, 2, 4, 8]),     # Qwen3-8B
])
def test_tensor_parallel_sizes(heads, kv, good):
    model = facts("m", 10, heads, kv)
    assert [tp for tp in range(1, 11) if tp_fits(model, tp)] == good


def test_a_user_count_that_cannot_split_the_heads():
    with pytest.raises(ConfigError, match=r"28 attention heads and 4 KV heads: 3 GPUs.*Use --gpus 1, 2 or 4"):
        choose_allocation(EBI, facts("Qwen2.5-7B-Instruct", 15.2, 28, 4), gpu_type="a100", gpus=3)


def test_kv_cache_sizes():
    assert kv_bytes_per_token(GPT_OSS_120B) == 2 * 36 * 8 * 64 * 2
    deepseek = facts("DeepSeek-R1", 689, 128, 128, layers=61, kv_lora_rank=512, qk_rope_head_dim=64)
    assert deepseek.is_mla and kv_bytes_per_token(deepseek) == 61 * 576 * 2
    longer = memory_need(GPT_OSS_120B, context=131072)
    assert longer.kv_gb == pytest.approx(4 * memory_need(GPT_OSS_120B).kv_gb)


def test_nothing_fits():
    with pytest.raises(ConfigError, match=r"needs ≈ 1286 GB.*largest allocation .* \(8 × h200 \(1128 GB\)\)"):
        choose_allocation(EBI, facts("Kimi-K2", 1029, 64, 64, layers=61, kv_lora_rank=512))


@pytest.mark.parametrize("log, engine, cause, fix", [
    ("ValueError: ... the estimated maximum model length is 32768. Try increasing", "vllm",
     "the largest that fits is 32768 tokens", "-- --max-model-len 32768"),
    ("ValueError: Total number of attention heads (32) must be divisible by tensor parallel size (3).", "vllm",
     "size 3 does not divide the model's 32 attention heads", "hpcllm plan MODEL"),
    ("    assert self.total_num_heads % tp_size == 0\nAssertionError", "sglang",
     "does not divide the model's attention heads", "GPU count"),
    ("KeyError: 'invalid tool call parser: hermes3 (chose from { a,b })'", "vllm",
     "does not know the tool call parser 'hermes3'", "hpcllm parsers --engine vllm"),
    ("launch_server.py: error: argument --reasoning-parser: invalid choice: 'r1' (choose from", "sglang",
     "does not know the reasoning parser 'r1'", "--reasoning-parser ''"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "vllm",
     "does not fit in the GPUs' memory", "--gpus"),
    ("Not enough memory. Please try to increase --mem-fraction-static.", "sglang",
     "does not fit in the GPUs' memory", "--context-length 16384"),
    ("ValueError: Model architectures ['FooForCausalLM'] are not supported for now.", "vllm",
     "does not support the architecture FooForCausalLM", "--engine"),
    ("OSError: [Errno 98] Address already in use", "vllm", "port chosen on the node was taken", "again"),
    ("RuntimeError: NCCL error: unhandled system error", "vllm", "NCCL", "/dev/shm"),
    ("ValueError: Invalid repository ID or local directory specified: '/m/x'.", "vllm",
     "cannot find the model directory /m/x", "binds"),
    ("FATAL:   could not open image /i/v.sif: failed to retrieve path", "vllm",
     "the container image /i/v.sif cannot be opened", "images.vllm"),
])
def test_diagnosis(log, engine, cause, fix):
    found = diagnose("INFO starting\n" + log + "\n", engine)
    assert found is not None and cause in found.cause and fix in found.fix


def test_an_unknown_failure_has_no_diagnosis():
    assert diagnose("Segmentation fault (core dumped)", "vllm") is None
