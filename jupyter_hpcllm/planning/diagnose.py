"""Why an engine failed to start, in words a scientist can act on: known signatures in its log."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    fix: str


def _max_len(match: re.Match[str], engine: str) -> Diagnosis:
    length = match.group(1)
    flag = "--max-model-len" if engine == "vllm" else "--context-length"
    return Diagnosis(f"the model's full context does not fit in GPU memory; {engine} says the largest that fits "
                     f"is {length} tokens",
                     f"retry with -- {flag} {length} (or more GPUs: --gpus).")


def _tp(match: re.Match[str], engine: str) -> Diagnosis:
    heads, tp = match.group(1), match.group(2)
    return Diagnosis(f"the tensor-parallel size {tp} does not divide the model's {heads} attention heads",
                     "use a GPU count that divides them (`hpcllm plan MODEL` lists the ones that work).")


def _parser(match: re.Match[str], engine: str) -> Diagnosis:
    kind, name = match.group(1), match.group(2)
    flag = "--tool-call-parser" if "tool" in kind else "--reasoning-parser"
    return Diagnosis(f"this {engine} image does not know the {kind} parser {name!r}",
                     f"pick a name the image knows (`hpcllm parsers --engine {engine}` lists them), pass "
                     f"{flag} '' for none, or use a newer image.")


def _fixed(cause: str, fix: str) -> Callable[[re.Match[str], str], Diagnosis]:
    return lambda match, engine: Diagnosis(cause.format(*match.groups(), engine=engine),
                                           fix.format(*match.groups(), engine=engine))


# Order matters: the most specific signature first.
SIGNATURES: tuple[tuple[str, Callable[[re.Match[str], str], Diagnosis]], ...] = (
    (r"estimated maximum model length is (\d+)", _max_len),
    (r"Total number of attention heads \((\d+)\) must be divisible by tensor parallel size \((\d+)\)", _tp),
    (r"assert self\.total_num_heads % tp_size == 0", _fixed(
        "the tensor-parallel size does not divide the model's attention heads",
        "use a GPU count that divides them (`hpcllm plan MODEL` lists the ones that work).")),
    (r"invalid (tool call|reasoning) parser: (\S+) \(", _parser),
    (r"argument --(tool-call|reasoning)-parser: invalid choice: '([^']*)'", _parser),
    (r"--enable-auto-tool-choice requires --tool-call-parser", _fixed(
        "tool calling was enabled without a tool-call parser",
        "pass --tool-call-parser NAME (or remove --enable-auto-tool-choice from the extra arguments).")),
    (r"World size \((\d+)\) is larger than the number of available GPUs \((\d+)\)", _fixed(
        "the job asked the engine for {0} GPUs but only {1} are visible on the node",
        "check the profile's GPU type and that the container gets the GPUs (--nv).")),
    (r"CUDA out of memory|OutOfMemoryError|No available memory for the cache blocks|Not enough memory\. "
     r"Please try to increase --mem-fraction-static|less than desired GPU memory utilization", _fixed(
        "the model does not fit in the GPUs' memory",
        "use more GPUs (--gpus) or a larger GPU type (--gpu-type), or a shorter context "
        "(-- --max-model-len 16384 on vLLM, -- --context-length 16384 on SGLang).")),
    (r"Model architectures \['([^']+)'\] are not supported", _fixed(
        "this {engine} image does not support the architecture {0}",
        "use a newer image, try the other engine (--engine), or pass -- --trust-remote-code if the model "
        "ships its own code.")),
    (r"unrecognized arguments: (.+)", _fixed(
        "{engine} does not know the argument(s) {0}",
        "check the extra engine arguments after `--` against this image's version (`{engine} --help`).")),
    (r"Address already in use|port \d+ is not available", _fixed(
        "the port chosen on the node was taken before the engine could bind it",
        "start it again: a new port is picked each time.")),
    (r"NCCL error", _fixed(
        "NCCL (the GPU-to-GPU communication library) failed, often for lack of shared memory in the container",
        "try -- --disable-custom-all-reduce, fewer GPUs, or ask your admins about /dev/shm for containers.")),
    (r"Invalid repository ID or local directory specified: '([^']*)'", _fixed(
        "the engine cannot find the model directory {0} inside the container",
        "check the path, and that the profile's binds make it visible in the container.")),
    (r"FATAL:\s+could not open image (\S+?):", _fixed(
        "the container image {0} cannot be opened",
        "check images.{engine} in the profile (`hpcllm config show`).")),
    (r"No module named '?(sglang|vllm)'?", _fixed(
        "the container image has no {0} in it",
        "check that images.{engine} in the profile points to a {engine} image.")),
)


def diagnose(log: str, engine: str) -> Diagnosis | None:
    """The first known failure signature in an engine log, or None."""
    for pattern, explain in SIGNATURES:
        match = re.search(pattern, log)
        if match:
            return explain(match, engine)
    return None
