"""What a job's script says about how its answers are made: the image and the engine's command line (the
parsers, the parallelism, every flag), read back from the script `planning.script` wrote. For provenance:
a notebook records it with each answer."""

from __future__ import annotations

import shlex
from typing import Any

__all__ = ["engine_record"]

_RECORDED = {
    "--tool-call-parser": "tool_call_parser", "--reasoning-parser": "reasoning_parser",
    "--tensor-parallel-size": "tensor_parallel", "--tp-size": "tensor_parallel",
    "--data-parallel-size": "data_parallel", "--dp-size": "data_parallel", "--chat-template": "chat_template",
    "--max-model-len": "max_model_len", "--context-length": "max_model_len", "--quantization": "quantization",
    "--speculative-config": "speculative", "--speculative-algorithm": "speculative",
}


def engine_record(script: str) -> dict[str, Any]:
    """{"image", "command" (the engine's arguments, as a list), and the recorded flags by name}; {} if the
    script has no engine line (not one of ours)."""
    lines = script.splitlines()
    door = next((i for i, line in enumerate(lines) if line.startswith("# this node's loopback only")), None)
    if door is None:
        return {}
    start = door + 1
    while start < len(lines) and lines[start].startswith("export "):  # the API key's variable
        start += 1
    joined = []
    for line in lines[start:]:
        joined.append(line.rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    text = " ".join(joined).split(" > >(", 1)[0]  # the log's redirection ends the command
    try:
        words = shlex.split(text)
    except ValueError:
        return {}
    image = None
    rest = words
    if len(words) > 2 and words[1] == "exec":  # RUNTIME exec [its options] IMAGE ENGINE...
        position = 2
        while position < len(words) and words[position].startswith("-"):
            position += 2 if words[position] in ("--bind", "-B", "--env", "--home", "--overlay") else 1
        if position < len(words):
            image, rest = words[position], words[position + 1:]
    if len(rest) > 3 and rest[1] == "-c" and "runpy" in rest[2] and rest[3].endswith("/key"):
        # SGLang behind the launcher that reads the key from its file: what it runs, as a person would write it
        module = "sglang.launch_server"
        rest = ["python", "-m", module, *rest[4:]]
    record: dict[str, Any] = {"image": image, "command": rest}
    for i, word in enumerate(rest):
        name, _, value = word.partition("=")
        if name in _RECORDED and record.get(_RECORDED[name]) is None:
            record[_RECORDED[name]] = value or (rest[i + 1] if i + 1 < len(rest) else None)
    return record
