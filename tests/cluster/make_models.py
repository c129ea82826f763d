"""Fixture model directories for the test cluster: real-looking config.json and chat templates, and
weight shards as sparse files of the real apparent size (they take no disk space).

    python3 make_models.py /srv/hpcllm/models

Idempotent. Stdlib only: it runs with Debian's python3 before anything else is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

GB = 1_000_000_000

# Chat-template markers that identify each family (short, but the markers are the real ones).
TEMPLATES = {
    "gpt-oss": "<|start|>system<|message|>{{ messages }}<|end|><|start|>assistant<|channel|>analysis<|message|>",
    "qwen3": "{%- if enable_thinking is defined %}<think>{%- endif %}<|im_start|>{{ role }}<tool_call>{{ c }}</tool_call><|im_end|>",
    "qwen3-coder": "<|im_start|>assistant<tool_call><function={{ name }}><parameter={{ p }}>{{ v }}</parameter></function></tool_call>",
    "qwen2": "<|im_start|>system{{ content }}<tool_call>{{ c }}</tool_call><|im_end|>",
    "llama3": "<|begin_of_text|><|start_header_id|>{{ role }}<|end_header_id|>{{ content }}<|eot_id|>",
    "mistral": "[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][INST]{{ content }}[/INST][TOOL_CALLS]",
    "phi4": "<|im_start|>{{ role }}<|im_sep|>{{ content }}<|im_end|>",
    "gemma3": "<start_of_turn>{{ role }}\n{{ content }}<end_of_turn>",
    "glm": "[gMASK]<sop><|system|>{{ content }}<tool_call>{{ name }}<arg_key>{{ k }}</arg_key></tool_call>",
    "deepseek": "<｜begin▁of▁sentence｜><｜User｜>{{ c }}<｜Assistant｜><think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
    "kimi": "<|im_system|>{{ c }}<|tool_calls_section_begin|><|tool_call_begin|>{{ id }}<|tool_call_end|>",
    "minimax": "]~!b[]~b]system{{ c }}<minimax:tool_call><invoke name={{ n }}></invoke></minimax:tool_call>",
}

# name: (shards, total bytes, template, config.json)
MODELS: dict[str, tuple[int, float, str, dict[str, object]]] = {
    "gpt-oss-20b": (3, 13.8 * GB, "gpt-oss", {
        "model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "num_attention_heads": 64,
        "num_key_value_heads": 8, "num_hidden_layers": 24, "hidden_size": 2880, "head_dim": 64,
        "num_local_experts": 32, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4"}}),
    "gpt-oss-120b": (15, 65.3 * GB, "gpt-oss", {
        "model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "num_attention_heads": 64,
        "num_key_value_heads": 8, "num_hidden_layers": 36, "hidden_size": 2880, "head_dim": 64,
        "num_local_experts": 128, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4"}}),
    "Qwen3-8B": (5, 16.4 * GB, "qwen3", {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 36, "hidden_size": 4096, "head_dim": 128,
        "max_position_embeddings": 40960, "torch_dtype": "bfloat16"}),
    "Qwen3-30B-A3B": (16, 61.0 * GB, "qwen3", {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 4, "num_hidden_layers": 48, "hidden_size": 2048, "head_dim": 128,
        "num_experts": 128, "max_position_embeddings": 40960, "torch_dtype": "bfloat16"}),
    "Qwen3-Coder-30B-A3B-Instruct": (16, 61.0 * GB, "qwen3-coder", {
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 4, "num_hidden_layers": 48, "hidden_size": 2048, "head_dim": 128,
        "num_experts": 128, "max_position_embeddings": 262144, "torch_dtype": "bfloat16"}),
    "Qwen2.5-7B-Instruct": (4, 15.2 * GB, "qwen2", {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 28,
        "num_key_value_heads": 4, "num_hidden_layers": 28, "hidden_size": 3584,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}),
    "QwQ-32B": (14, 65.5 * GB, "qwen2", {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 40,
        "num_key_value_heads": 8, "num_hidden_layers": 64, "hidden_size": 5120,
        "max_position_embeddings": 40960, "torch_dtype": "bfloat16"}),
    "Llama-3.1-8B-Instruct": (4, 16.1 * GB, "llama3", {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 32, "hidden_size": 4096,
        "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}),
    "Mistral-7B-Instruct-v0.3": (3, 14.5 * GB, "mistral", {
        "model_type": "mistral", "architectures": ["MistralForCausalLM"], "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 32, "hidden_size": 4096,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}),
    "Phi-4": (6, 29.3 * GB, "phi4", {
        "model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "num_attention_heads": 40,
        "num_key_value_heads": 10, "num_hidden_layers": 40, "hidden_size": 5120,
        "max_position_embeddings": 16384, "torch_dtype": "bfloat16"}),
    "gemma-3-27b-it": (12, 54.9 * GB, "gemma3", {
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {"num_attention_heads": 32, "num_key_value_heads": 16, "num_hidden_layers": 62,
                        "hidden_size": 5376, "head_dim": 128},
        "num_attention_heads": 32, "num_key_value_heads": 16,
        "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}),
    "GLM-4.5-Air": (47, 221.0 * GB, "glm", {
        "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"], "num_attention_heads": 96,
        "num_key_value_heads": 8, "num_hidden_layers": 46, "hidden_size": 4096, "head_dim": 128,
        "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}),
    "DeepSeek-R1": (163, 689.0 * GB, "deepseek", {
        "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "num_attention_heads": 128,
        "num_key_value_heads": 128, "num_hidden_layers": 61, "hidden_size": 7168, "kv_lora_rank": 512,
        "qk_rope_head_dim": 64, "max_position_embeddings": 163840, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}),
    "Kimi-K2-Instruct": (61, 1029.0 * GB, "kimi", {
        "model_type": "kimi_k2", "architectures": ["DeepseekV3ForCausalLM"], "num_attention_heads": 64,
        "num_key_value_heads": 64, "num_hidden_layers": 61, "hidden_size": 7168, "kv_lora_rank": 512,
        "qk_rope_head_dim": 64, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}),
    "MiniMax-M2": (130, 230.0 * GB, "minimax", {
        "model_type": "minimax_m2", "architectures": ["MiniMaxM2ForCausalLM"], "num_attention_heads": 48,
        "num_key_value_heads": 8, "num_hidden_layers": 62, "hidden_size": 3072, "head_dim": 128,
        "max_position_embeddings": 196608, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}),
}

# One model also in a Hugging Face cache layout (snapshots/<hash>/ with symlinks into blobs/).
HF_CACHE_MODEL = ("Qwen/Qwen3-8B", "Qwen3-8B")


def write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    path.chmod(0o644)


def sparse(path: Path, size: int) -> None:
    if path.is_symlink():
        path.unlink()
    if not path.exists() or path.stat().st_size != size:
        with path.open("wb") as handle:
            handle.truncate(size)  # apparent size only: no blocks are written
    path.chmod(0o644)


def model_files(shards: int, total: float, template: str, config: dict[str, object]) -> dict[str, object]:
    """name → text (str) or apparent size (int) of every file of the model."""
    size = int(total) // shards
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    weight_map = {}
    for i, name in enumerate(names):
        weight_map[f"model.layers.{i}.self_attn.q_proj.weight"] = name
        weight_map[f"model.layers.{i}.mlp.down_proj.weight"] = name
    files: dict[str, object] = {
        "config.json": json.dumps(config, indent=2) + "\n",
        "generation_config.json": json.dumps({"temperature": 0.7, "top_p": 0.8}) + "\n",
        "tokenizer_config.json": json.dumps({"chat_template": TEMPLATES[template],
                                             "model_max_length": config.get("max_position_embeddings")}) + "\n",
        "model.safetensors.index.json": json.dumps({"metadata": {"total_size": size * shards},
                                                    "weight_map": weight_map}, indent=2) + "\n",
    }
    files.update({name: size for name in names})
    return files


def make_plain(root: Path, name: str, files: dict[str, object]) -> None:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for file_name, content in files.items():
        if isinstance(content, int):
            sparse(directory / file_name, content)
        else:
            write(directory / file_name, str(content))


def make_hf_cache(cache: Path, repo: str, files: dict[str, object]) -> None:
    base = cache / f"models--{repo.replace('/', '--')}"
    revision = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = base / "snapshots" / revision
    for directory in (base / "blobs", snapshot, base / "refs"):
        directory.mkdir(parents=True, exist_ok=True)
    write(base / "refs" / "main", revision)
    for file_name, content in files.items():
        blob = base / "blobs" / hashlib.sha256(f"{repo}/{file_name}".encode()).hexdigest()
        if isinstance(content, int):
            sparse(blob, content)
        else:
            write(blob, str(content))
        link = snapshot / file_name
        target = os.path.relpath(blob, snapshot)
        if not link.is_symlink() or os.readlink(link) != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    for directory, _, _ in os.walk(cache):
        Path(directory).chmod(0o755)


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/srv/hpcllm/models")
    root.mkdir(parents=True, exist_ok=True)
    for name, (shards, total, template, config) in MODELS.items():
        make_plain(root, name, model_files(shards, total, template, config))
    repo, name = HF_CACHE_MODEL
    shards, total, template, config = MODELS[name]
    make_hf_cache(root.parent / "hf_cache", repo, model_files(shards, total, template, config))
    for directory in (root, root.parent):
        directory.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
