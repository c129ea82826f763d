"""Fixture model directories for the local test cluster.

Each model gets a real-looking ``config.json`` (values from the model's Hugging Face config), a
``tokenizer_config.json`` whose ``chat_template`` is short but carries the family's real markers, a
``generation_config.json``, ``model.safetensors.index.json`` and its weight shards. The shards are
SPARSE files of the real apparent size: ``ls -l`` and SFTP see hundreds of GB, ``du`` sees ~0.

    python3 make_models.py [MODEL_ROOT] [--hf-cache DIR]      (default /srv/hpcllm/models, ../hf_cache)

One model (Qwen/Qwen3-8B) is also laid out as a Hugging Face cache entry: refs/main holds the
revision, snapshots/<revision>/ holds symlinks into ../../blobs/ (text files named by their git blob
sha1, weights by a sha256, as the real cache does).

Idempotent and fast: only what differs is rewritten. Stdlib only (it runs with Debian's python3).
To add a model, add one ``Model(...)`` entry to MODELS (and a template to TEMPLATES if it is a new family).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1_000_000_000
Content = str | int  # file text, or the apparent size of a sparse file

# --- chat templates (shortened; the markers are the real ones) -----------------------------------------------

_QWEN_TOOLS = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else '' }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{%- else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{%- endif %}
{%- endfor %}
"""

TEMPLATES: dict[str, str] = {
    "gpt-oss": """{#- OpenAI harmony format (shortened) -#}
<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06
Reasoning: {{ reasoning_effort | default('medium') }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{%- if tools %}<|start|>developer<|message|># Tools

## functions

namespace functions {
{%- for tool in tools %}
type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;
{%- endfor %}
} // namespace functions<|end|>
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|start|>assistant to=functions.{{ message.tool_calls[0].function.name }}<|channel|>commentary json<|message|>{{ message.tool_calls[0].function.arguments }}<|call|>
{%- elif message.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'tool' %}<|start|>functions.{{ message.name }} to=assistant<|channel|>commentary<|message|>{{ message.content | tojson }}<|end|>
{%- else %}<|start|>{{ message.role }}<|message|>{{ message.content }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{%- endif %}""",
    "qwen3": _QWEN_TOOLS + """{%- if add_generation_prompt %}<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{%- endif %}
{%- endif %}""",
    "qwen3-coder": """{%- if messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}
{%- else %}<|im_start|>system
You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.
{%- endif %}
{%- if tools %}

# Tools

You have access to the following functions:

<tools>
{%- for tool in tools %}
<function>
<name>{{ tool.function.name }}</name>
<description>{{ tool.function.description }}</description>
</function>
{%- endfor %}
</tools>

If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
</function>
</tool_call>
{%- endif %}<|im_end|>
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
<function={{ call.function.name }}>
{%- for name, value in call.function.arguments.items() %}
<parameter={{ name }}>
{{ value }}
</parameter>
{%- endfor %}
</function>
</tool_call>
{%- endfor %}<|im_end|>
{%- elif message.role != 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{%- endif %}""",
    "qwen2.5": _QWEN_TOOLS.replace("{{ messages[0].content if messages[0].role == 'system' else '' }}",
                                   "{{ messages[0].content if messages[0].role == 'system' else "
                                   "'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}")
    + """{%- if add_generation_prompt %}<|im_start|>assistant
{%- endif %}""",
    "qwq": _QWEN_TOOLS + """{%- if add_generation_prompt %}<|im_start|>assistant
<think>
{%- endif %}""",
    "llama3": """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
<|start_header_id|>system<|end_header_id|>

{%- if tools is not none %}
Environment: ipython
{%- endif %}
Cutting Knowledge Date: December 2023
Today Date: {{ date_string }}

{{ system_message | default('') }}<|eot_id|>
{%- for message in messages %}
{%- if message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{"name": "{{ message.tool_calls[0].function.name }}", "parameters": {{ message.tool_calls[0].function.arguments | tojson }}}<|eot_id|>
{%- elif message.role == 'tool' or message.role == 'ipython' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content | tojson }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content | trim }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{%- endif %}""",
    "mistral": """{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools is not none and loop.last %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}
[INST] {{ message.content }}[/INST]
{%- elif message.tool_calls %}[TOOL_CALLS] {{ message.tool_calls | tojson }}{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS] {"content": {{ message.content | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- else %} {{ message.content }}{{ eos_token }}
{%- endif %}
{%- endfor %}""",
    "phi4": """{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}""",
    "gemma3": """{{ bos_token }}
{%- for message in messages -%}
<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}
{%- if message.content is string %}
{{ message.content | trim }}
{%- else %}
{%- for item in message.content %}{% if item.type == 'image' %}<start_of_image>{% else %}{{ item.text | trim }}{% endif %}{% endfor %}
{%- endif %}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt -%}<start_of_turn>model
{%- endif -%}""",
    "glm4.5": """[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}
<arg_key>{arg-key-1}</arg_key>
<arg_value>{arg-value-1}</arg_value>
...
</tool_call>
{%- endif -%}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.reasoning_content %}<|assistant|>
<think>{{ m.reasoning_content.strip() }}</think>
{{ m.content }}
{%- else %}<|{{ m.role }}|>
{{ m.content }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt -%}<|assistant|>{{- '\\n<think></think>' if (enable_thinking is defined and not enable_thinking) else '' -}}
{%- endif -%}""",
    # DeepSeek's special tokens use fullwidth bars (U+FF5C) and lower-one-eighth blocks (U+2581).
    "deepseek-r1": """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}
{%- set ns = namespace(is_first=false, is_tool=false, system_prompt='') %}
{{- bos_token }}{{ ns.system_prompt }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{ '<\uff5cUser\uff5c>' + message['content'] }}
{%- endif %}
{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] is not none %}
{{- '<\uff5cAssistant\uff5c><\uff5ctool\u2581calls\u2581begin\uff5c>' }}
{%- for tool in message['tool_calls'] %}
{{- '<\uff5ctool\u2581call\u2581begin\uff5c>' + tool['type'] + '<\uff5ctool\u2581sep\uff5c>' + tool['function']['name'] + '\\n```json\\n' + tool['function']['arguments'] + '\\n```<\uff5ctool\u2581call\u2581end\uff5c>' }}
{%- endfor %}
{{- '<\uff5ctool\u2581calls\u2581end\uff5c><\uff5cend\u2581of\u2581sentence\uff5c>' }}
{%- elif message['role'] == 'assistant' %}
{%- set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}
{{- '<\uff5cAssistant\uff5c>' + content + '<\uff5cend\u2581of\u2581sentence\uff5c>' }}
{%- endif %}
{%- if message['role'] == 'tool' %}
{{- '<\uff5ctool\u2581output\u2581begin\uff5c>' + message['content'] + '<\uff5ctool\u2581output\u2581end\uff5c>' }}
{%- endif %}
{%- endfor %}
{% if add_generation_prompt and not ns.is_tool %}{{ '<\uff5cAssistant\uff5c><think>\\n' }}{% endif %}""",
    "kimi-k2": """{%- if tools -%}
<|im_system|>tool_declare<|im_middle|>{{ tools | tojson }}<|im_end|>
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}<|im_system|>system<|im_middle|>
{%- elif message['role'] == 'user' -%}<|im_user|>user<|im_middle|>
{%- elif message['role'] == 'tool' -%}<|im_system|>tool<|im_middle|>## Return of {{ message.tool_call_id }}
{%- else -%}<|im_assistant|>assistant<|im_middle|>
{%- endif -%}
{{ message['content'] }}
{%- if message['role'] == 'assistant' and message.get('tool_calls') -%}
<|tool_calls_section_begin|>
{%- for tool_call in message['tool_calls'] -%}
<|tool_call_begin|>{{ tool_call['id'] }}<|tool_call_argument_begin|>{{ tool_call['function']['arguments'] | tojson }}<|tool_call_end|>
{%- endfor -%}
<|tool_calls_section_end|>
{%- endif -%}
<|im_end|>
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}""",
    "minimax-m2": """{#- MiniMax-M2 (shortened) -#}
]~!b[]~b]system
{{ system_message | default('You are a helpful assistant.') }}
{%- if tools %}

# Tools
You may call one or more tools to assist with the user query.
Here are the tools available in JSONSchema format:

<tools>
{%- for tool in tools %}
<tool>{{ tool.function | tojson }}</tool>
{%- endfor %}
</tools>

When making tool calls, use XML format to invoke tools and pass parameters:

<minimax:tool_call>
<invoke name="tool-name-1">
<parameter name="param-key-1">param-value-1</parameter>
</invoke>
</minimax:tool_call>
{%- endif %}[e~[
{%- for message in messages %}
]~b]{{ 'ai' if message.role == 'assistant' else message.role }}
{%- if message.role == 'assistant' and message.reasoning_content %}
<think>
{{ message.reasoning_content }}
</think>
{%- endif %}
{{ message.content }}[e~[
{%- endfor %}
{%- if add_generation_prompt %}
]~b]ai
<think>
{%- endif %}""",
}

# --- the models ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str
    shards: int
    size_gb: float  # apparent total size of the weight shards, split evenly
    template: str  # key of TEMPLATES
    config: dict[str, Any]  # config.json (values from the real model's Hugging Face config)
    generation: dict[str, Any] = field(default_factory=dict)  # generation_config.json
    tokenizer: dict[str, Any] = field(default_factory=dict)  # extra tokenizer_config.json keys
    extra: dict[str, Content] = field(default_factory=dict)  # more files: text, or sparse size in bytes


_FP8_BLOCK = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
_DEEPSEEK_AUTO_MAP = {
    "AutoConfig": "configuration_deepseek.DeepseekV3Config",
    "AutoModel": "modeling_deepseek.DeepseekV3Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
}
_REMOTE_CODE: dict[str, Content] = {
    "configuration_deepseek.py": "# Remote code stand-in (the real file defines DeepseekV3Config).\n",
    "modeling_deepseek.py": "# Remote code stand-in (the real file defines DeepseekV3ForCausalLM).\n",
}


def _gpt_oss(layers: int, experts: int) -> dict[str, Any]:
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
        "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": layers, "hidden_size": 2880,
        "head_dim": 64, "intermediate_size": 2880, "num_local_experts": experts, "num_experts_per_tok": 4,
        "experts_per_token": 4, "sliding_window": 128,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "max_position_embeddings": 131072, "initial_context_length": 4096, "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "vocab_size": 201088, "eos_token_id": 200002, "pad_token_id": 199999, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
    }


def _qwen3_moe(max_position: int, rope_theta: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_attention_heads": 32,
        "num_key_value_heads": 4, "num_hidden_layers": 48, "hidden_size": 2048, "head_dim": 128,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
        "decoder_sparse_step": 1, "norm_topk_prob": True, "max_position_embeddings": max_position,
        "rope_theta": rope_theta, "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }


_QWEN_TOKENIZER = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

MODELS: list[Model] = [
    Model("gpt-oss-20b", 3, 13.8, "gpt-oss", _gpt_oss(layers=24, experts=32),
          {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999},
          {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}),
    Model("gpt-oss-120b", 15, 65.3, "gpt-oss", _gpt_oss(layers=36, experts=128),
          {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999},
          {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}),
    Model("Qwen3-8B", 5, 16.4, "qwen3", {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 36, "hidden_size": 4096, "head_dim": 128,
        "intermediate_size": 12288, "max_position_embeddings": 40960, "rope_theta": 1000000,
        "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [151645, 151643]},
        _QWEN_TOKENIZER),
    Model("Qwen3-30B-A3B", 16, 61.0, "qwen3", _qwen3_moe(max_position=40960, rope_theta=1000000),
          {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [151645, 151643]},
          _QWEN_TOKENIZER),
    Model("Qwen3-Coder-30B-A3B-Instruct", 16, 61.0, "qwen3-coder", _qwen3_moe(max_position=262144, rope_theta=10000000),
          {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
           "eos_token_id": [151645, 151643]},
          _QWEN_TOKENIZER),
    Model("Qwen2.5-7B-Instruct", 4, 15.2, "qwen2.5", {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_attention_heads": 28,
        "num_key_value_heads": 4, "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
        "max_position_embeddings": 32768, "sliding_window": 131072, "use_sliding_window": False,
        "max_window_layers": 28, "rope_theta": 1000000.0, "vocab_size": 152064, "bos_token_id": 151643,
        "eos_token_id": 151645, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
         "eos_token_id": [151645, 151643]},
        _QWEN_TOKENIZER),
    Model("QwQ-32B", 14, 65.5, "qwq", {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_attention_heads": 40,
        "num_key_value_heads": 8, "num_hidden_layers": 64, "hidden_size": 5120, "intermediate_size": 27648,
        "max_position_embeddings": 40960, "sliding_window": 32768, "use_sliding_window": False,
        "max_window_layers": 64, "rope_theta": 1000000.0, "vocab_size": 152064, "bos_token_id": 151643,
        "eos_token_id": 151645, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.0,
         "eos_token_id": [151645, 151643]},
        _QWEN_TOKENIZER),
    Model("Llama-3.1-8B-Instruct", 4, 16.1, "llama3", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "bos_token_id": 128000,
         "eos_token_id": [128001, 128008, 128009]},
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    # The real repository ships the same weights twice: sharded HF files and Mistral's consolidated file.
    Model("Mistral-7B-Instruct-v0.3", 3, 14.5, "mistral", {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "sliding_window": None, "rope_theta": 1000000.0,
        "vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"},
        {"bos_token_id": 1, "eos_token_id": 2},
        {"bos_token": "<s>", "eos_token": "</s>"},
        {"consolidated.safetensors": int(14.5 * GB),
         "params.json": json.dumps({"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32,
                                    "n_kv_heads": 8, "norm_eps": 1e-05, "vocab_size": 32768, "rope_theta": 1000000.0},
                                   indent=2) + "\n"}),
    Model("Phi-4", 6, 29.3, "phi4", {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "num_attention_heads": 40,
        "num_key_value_heads": 10, "num_hidden_layers": 40, "hidden_size": 5120, "intermediate_size": 17920,
        "max_position_embeddings": 16384, "original_max_position_embeddings": 16384, "rope_theta": 250000,
        "vocab_size": 100352, "bos_token_id": 100257, "eos_token_id": 100265, "pad_token_id": 100349,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"bos_token_id": 100257, "eos_token_id": 100265, "pad_token_id": 100349},
        {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|dummy_85|>"}),
    # Multimodal: the language model's sizes are under text_config, as in the real config.
    Model("gemma-3-27b-it", 12, 54.9, "gemma3", {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": {"model_type": "gemma3_text", "num_attention_heads": 32, "num_key_value_heads": 16,
                        "num_hidden_layers": 62, "hidden_size": 5376, "head_dim": 128, "intermediate_size": 21504,
                        "max_position_embeddings": 131072, "sliding_window": 1024, "query_pre_attn_scalar": 168,
                        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "vocab_size": 262208},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                          "num_hidden_layers": 27, "patch_size": 14},
        "mm_tokens_per_image": 256, "boi_token_index": 255999, "eoi_token_index": 256000,
        "image_token_index": 262144, "eos_token_id": [1, 106], "torch_dtype": "bfloat16"},
        {"do_sample": True, "top_k": 64, "top_p": 0.95, "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0},
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    Model("GLM-4.5-Air", 47, 221.0, "glm4.5", {
        "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "num_attention_heads": 96,
        "num_key_value_heads": 8, "num_hidden_layers": 46, "hidden_size": 4096, "head_dim": 128,
        "intermediate_size": 10944, "moe_intermediate_size": 1408, "n_routed_experts": 128, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 1, "num_nextn_predict_layers": 1,
        "partial_rotary_factor": 0.5, "max_position_embeddings": 131072, "rope_theta": 1000000,
        "vocab_size": 151552, "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "eos_token_id": [151329, 151336, 151338],
         "pad_token_id": 151329},
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    Model("DeepSeek-R1", 163, 689.0, "deepseek-r1", {
        "architectures": ["DeepseekV3ForCausalLM"], "auto_map": _DEEPSEEK_AUTO_MAP, "model_type": "deepseek_v3",
        "num_attention_heads": 128, "num_key_value_heads": 128, "num_hidden_layers": 61, "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "num_nextn_predict_layers": 1,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "max_position_embeddings": 163840, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
        "vocab_size": 129280, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "quantization_config": _FP8_BLOCK},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "bos_token_id": 0, "eos_token_id": 1},
        {"bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "eos_token": "<\uff5cend\u2581of\u2581sentence\uff5c>"},
        _REMOTE_CODE),
    Model("Kimi-K2-Instruct", 61, 1029.0, "kimi-k2", {
        "architectures": ["DeepseekV3ForCausalLM"], "auto_map": _DEEPSEEK_AUTO_MAP, "model_type": "kimi_k2",
        "num_attention_heads": 64, "num_key_value_heads": 64, "num_hidden_layers": 61, "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 384, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 1, "num_nextn_predict_layers": 0,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "max_position_embeddings": 131072, "rope_theta": 50000.0,
        "rope_scaling": {"type": "yarn", "factor": 32.0, "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
        "vocab_size": 163840, "bos_token_id": 163584, "eos_token_id": 163585, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "quantization_config": _FP8_BLOCK},
        {"do_sample": True, "temperature": 0.6, "bos_token_id": 163584, "eos_token_id": 163585},
        {"bos_token": "[BOS]", "eos_token": "[EOS]", "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}},
        {**_REMOTE_CODE, "tokenization_kimi.py": "# Remote code stand-in (the real file defines TikTokenTokenizer).\n"}),
    Model("MiniMax-M2", 130, 230.0, "minimax-m2", {
        "architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "num_attention_heads": 48,
        "num_key_value_heads": 8, "num_hidden_layers": 62, "hidden_size": 3072, "head_dim": 128,
        "intermediate_size": 1536, "num_local_experts": 256, "num_experts_per_tok": 8, "rotary_dim": 64,
        "use_qk_norm": True, "max_position_embeddings": 196608, "rope_theta": 5000000, "vocab_size": 200064,
        "bos_token_id": 200034, "eos_token_id": 200020, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": {**_FP8_BLOCK, "fmt": "float8_e4m3fn"}},
        {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 40, "bos_token_id": 200019,
         "eos_token_id": 200020},
        {"bos_token": "]~!b[", "eos_token": "[e~["}),
]

# Model cards (README.md) in the formats real cards use: the planner reads their serving commands.
_QWEN3_8B_CARD = """---
library_name: transformers
license: apache-2.0
pipeline_tag: text-generation
---

# Qwen3-8B

Qwen3 is the latest generation of large language models in the Qwen series.

## Speculative decoding

An EAGLE-3 draft head trained for this model lives beside it. With vLLM:

```shell
vllm serve Qwen/Qwen3-8B --speculative-config '{"method": "eagle3", "model": "AngelSlim/Qwen3-8B_eagle3", "num_speculative_tokens": 3}'
```

With SGLang:

```shell
python3 -m sglang.launch_server --model Qwen/Qwen3-8B \\
    --speculative-algorithm EAGLE3 --speculative-draft-model-path AngelSlim/Qwen3-8B_eagle3 \\
    --speculative-num-steps 6 --speculative-eagle-topk 10 --speculative-num-draft-tokens 32
```
"""
_MOONLIGHT_CARD = """---
license: mit
library_name: transformers
---

# Moonlight-16B-A3B-Instruct

A 16B mixture-of-experts model (3B activated) trained with the Muon optimizer.

## Deployment

The tokenizer is custom code shipped in this repository:

```bash
vllm serve moonshotai/Moonlight-16B-A3B-Instruct --trust-remote-code
```

```bash
python3 -m sglang.launch_server --model-path moonshotai/Moonlight-16B-A3B-Instruct --trust-remote-code
```
"""
MODELS += [
    # A card whose flag the model needs: its tokenizer is remote code (the engine double refuses it without).
    Model("Moonlight-16B-A3B-Instruct", 7, 31.9, "kimi-k2", {
        "architectures": ["DeepseekV3ForCausalLM"], "auto_map": _DEEPSEEK_AUTO_MAP, "model_type": "deepseek_v3",
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 27, "hidden_size": 2048,
        "intermediate_size": 11264, "moe_intermediate_size": 1408, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_experts_per_tok": 6, "first_k_dense_replace": 1, "q_lora_rank": None, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 8192,
        "rope_theta": 50000.0, "vocab_size": 163840, "bos_token_id": 163584, "eos_token_id": 163585,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"bos_token_id": 163584, "eos_token_id": 163585},
        {"bos_token": "[BOS]", "eos_token": "[EOS]",
         "auto_map": {"AutoTokenizer": ["tokenization_moonshot.TikTokenTokenizer", None]}},
        {**_REMOTE_CODE, "tokenization_moonshot.py": "# Remote code stand-in (defines TikTokenTokenizer).\n",
         "README.md": _MOONLIGHT_CARD}),
    # An EAGLE-3 draft head beside the model it speeds up (Qwen3-8B's card names it).
    Model("Qwen3-8B_eagle3", 1, 0.76, "qwen3", {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_hidden_layers": 1, "hidden_size": 4096, "intermediate_size": 12288,
        "max_position_embeddings": 40960, "vocab_size": 151936, "draft_vocab_size": 32000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {}, _QWEN_TOKENIZER),
]
_WITH_CARD = {"Qwen3-8B": _QWEN3_8B_CARD}
MODELS = [Model(**{**m.__dict__, "extra": {**m.extra, "README.md": _WITH_CARD[m.name]}}) if m.name in _WITH_CARD
          else m for m in MODELS]

# Models that also get a Hugging Face cache layout: (repo id, model name in MODELS).
HF_CACHE = [("Qwen/Qwen3-8B", "Qwen3-8B")]

# --- building -----------------------------------------------------------------------------------------------------


def shard_names(model: Model) -> list[str]:
    return [f"model-{i:05d}-of-{model.shards:05d}.safetensors" for i in range(1, model.shards + 1)]


def _layers(model: Model) -> int:
    return int(model.config.get("num_hidden_layers") or model.config.get("text_config", {}).get("num_hidden_layers"))


def weight_map(model: Model) -> dict[str, str]:
    """A few tensor names per shard, spread over the layers like a real index (embeddings first, head last)."""
    names, layers, moe = shard_names(model), _layers(model), model.shards > _layers(model)
    result = {"model.embed_tokens.weight": names[0]}
    for k, shard in enumerate(names):
        first, last = k * layers // model.shards, max(k * layers // model.shards + 1, (k + 1) * layers // model.shards)
        for layer in range(first, min(last, first + 2)):
            if moe:  # more shards than layers: the experts of one layer span several shards
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    result[f"model.layers.{layer}.mlp.experts.{k}.{proj}.weight"] = shard
            else:
                for tensor in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
                    result[f"model.layers.{layer}.{tensor}.weight"] = shard
    result["model.norm.weight"] = names[-1]
    result["lm_head.weight"] = names[-1]
    assert len(set(result.values())) == model.shards, model.name
    return result


def shard_sizes(model: Model) -> list[int]:
    """The real apparent total, split evenly (the first shards take the remainder's bytes)."""
    total = round(model.size_gb * GB)
    base, remainder = divmod(total, model.shards)
    return [base + (1 if i < remainder else 0) for i in range(model.shards)]


def _dumps(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def model_files(model: Model) -> dict[str, Content]:
    """file name → text, or apparent size (int) of a sparse file."""
    sizes = shard_sizes(model)
    config_max = model.config.get("max_position_embeddings") or model.config.get("text_config", {}).get(
        "max_position_embeddings")
    tokenizer = {"add_bos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": config_max,
                 "tokenizer_class": "PreTrainedTokenizerFast", **model.tokenizer,
                 "chat_template": TEMPLATES[model.template]}
    files: dict[str, Content] = {
        "config.json": _dumps({**model.config, "transformers_version": "4.55.0"}),
        "generation_config.json": _dumps({**model.generation, "transformers_version": "4.55.0"}),
        "tokenizer_config.json": _dumps(tokenizer),
        "model.safetensors.index.json": _dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map(model)}),
        **dict(zip(shard_names(model), sizes, strict=True)),
        **model.extra,
    }
    return files


class Stats:
    def __init__(self) -> None:
        self.files = self.written = self.apparent = 0


STATS = Stats()
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def put(path: Path, content: Content) -> None:
    """Make path hold content (text, or a sparse file of that size), touching it only when it differs."""
    STATS.files += 1
    if path.is_symlink() or (path.exists() and not path.is_file()):
        path.unlink()
    if isinstance(content, int):
        STATS.apparent += content
        if not path.exists() or path.stat().st_size != content:
            with path.open("wb") as handle:  # truncate(0) then truncate(size): apparent size only, no blocks
                os.truncate(handle.fileno(), content)
            STATS.written += 1
    else:
        data = content.encode()
        if not path.exists() or path.read_bytes() != data:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            STATS.written += 1
    if path.stat().st_mode & 0o777 != 0o644:
        path.chmod(0o644)


def make_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != 0o755:
        directory.chmod(0o755)


def make_plain(root: Path, model: Model) -> None:
    directory = root / model.name
    make_dir(directory)
    files = model_files(model)
    for name, content in files.items():
        put(directory / name, content)
    for stale in directory.iterdir():  # shards of an older shard count
        if _SHARD.match(stale.name) and stale.name not in files:
            stale.unlink()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hf_cache(cache: Path, repo: str, model: Model) -> None:
    entry = cache / f"models--{repo.replace('/', '--')}"
    revision = hashlib.sha1(f"{repo}@fixture".encode()).hexdigest()
    snapshot = entry / "snapshots" / revision
    for directory in (cache, entry, entry / "blobs", entry / "refs", entry / "snapshots", snapshot):
        make_dir(directory)
    put(entry / "refs" / "main", revision)  # no trailing newline, as huggingface_hub writes it
    wanted = set()
    files = model_files(model)
    for name, content in files.items():
        if isinstance(content, int):  # LFS files are named by the sha256 of their content
            blob = hashlib.sha256(f"{repo}/{name}/{content}".encode()).hexdigest()
        else:  # regular git files by their git blob sha1
            blob = git_blob_sha1(content.encode())
        wanted.add(blob)
        put(entry / "blobs" / blob, content)
        link, target = snapshot / name, f"../../blobs/{blob}"
        if not link.is_symlink() or os.readlink(link) != target:
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(target)
    for stale in (entry / "blobs").iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for stale in snapshot.iterdir():
        if stale.name not in files:
            stale.unlink()
    for other in (entry / "snapshots").iterdir():
        if other.name != revision:
            for item in other.iterdir():
                item.unlink()
            other.rmdir()


def disk_usage(*roots: Path) -> int:
    used = 0
    for root in roots:
        for directory, _, names in os.walk(root):
            used += sum(os.lstat(os.path.join(directory, n)).st_blocks * 512 for n in names)
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="/srv/hpcllm/models", help="model root (default %(default)s)")
    parser.add_argument("--hf-cache", help="Hugging Face cache root (default: ROOT/../hf_cache)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    os.umask(0o022)
    root = Path(args.root)
    cache = Path(args.hf_cache) if args.hf_cache else root.parent / "hf_cache"
    make_dir(root)
    by_name = {model.name: model for model in MODELS}
    for model in MODELS:
        make_plain(root, model)
    for repo, name in HF_CACHE:
        make_hf_cache(cache, repo, by_name[name])
    if not args.quiet:
        print(f"{len(MODELS)} models in {root}, {len(HF_CACHE)} in the HF cache {cache}: {STATS.files} files "
              f"({STATS.written} written), {STATS.apparent / GB:,.1f} GB apparent, "
              f"{disk_usage(root, cache) / 1024:,.0f} KiB on disk, {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
