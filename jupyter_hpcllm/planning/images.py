"""What an engine image holds, as it says itself: its version, the parser names its registries hold,
whether it detects parsers from the chat template (SGLang's ``auto``), the model architectures it can
load and the tool chat templates it ships. The second of the three sources of parser choices.

``PROBE`` is a few lines of Python run inside the image (``discovery.imageprobe`` runs it, one remote
command per image, cached per image path and modification time). It asks the registries, never the
help text (``vllm serve --help`` lists no reasoning parsers), trying newer module paths first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["PROBE", "PROBE_MARKER", "ImageInfo", "parse_probe"]

PROBE_MARKER = "HPCLLM-IMAGE-PROBE "

# argv: engine, examples directory. Prints one line: the marker and a JSON object. Every part is tried on
# its own: an image whose architecture registry will not import still tells its parsers.
PROBE = r'''
import importlib, json, os, sys
engine, examples = sys.argv[1], sys.argv[2]
out = {"engine": engine, "problems": []}
def first(paths, read):
    errors = []
    for path, name in paths:
        try:
            return sorted(str(n) for n in read(getattr(importlib.import_module(path), name)))
        except Exception as error:
            errors.append(f"{path}.{name}: {type(error).__name__}: {error}"[:300])
    out["problems"].append("; ".join(errors))
    return None
def names(manager, *attributes):
    if hasattr(manager, "list_registered"):
        return manager.list_registered()
    found = set()
    for attribute in attributes:
        found |= set(getattr(manager, attribute, None) or {})
    return found
try:
    out["version"] = str(importlib.import_module(engine).__version__)
except Exception as error:
    out["problems"].append(f"{engine}.__version__: {type(error).__name__}: {error}"[:300])
if engine == "vllm":
    out["tool"] = first([("vllm.tool_parsers", "ToolParserManager"),
                         ("vllm.entrypoints.openai.tool_parsers", "ToolParserManager")],
                        lambda m: names(m, "tool_parsers", "lazy_parsers"))
    out["reasoning"] = first([("vllm.reasoning", "ReasoningParserManager")],
                             lambda m: names(m, "reasoning_parsers", "lazy_parsers"))
    out["architectures"] = first([("vllm.model_executor.models", "ModelRegistry")],
                                 lambda m: m.get_supported_archs())
    out["auto"] = False
else:
    out["tool"] = first([("sglang.srt.function_call.function_call_parser", "FunctionCallParser")],
                        lambda m: m.ToolCallParserEnum)
    out["reasoning"] = first([("sglang.srt.parser.reasoning_parser", "ReasoningParser"),
                              ("sglang.srt.reasoning_parser", "ReasoningParser")], lambda m: m.DetectorMap)
    out["architectures"] = first([("sglang.srt.models.registry", "ModelRegistry")],
                                 lambda m: m.get_supported_archs())
    try:  # imported, not just found: a module that is there but cannot load detects nothing
        out["auto"] = importlib.import_module("sglang.srt.parser.template_detection") is not None
    except Exception:
        out["auto"] = False
try:
    out["templates"] = sorted(n for n in os.listdir(examples) if n.endswith(".jinja"))
except OSError:
    out["templates"] = None
print("HPCLLM-IMAGE-PROBE " + json.dumps(out))
'''.strip()


@dataclass(frozen=True)
class ImageInfo:
    """One image's answers. None: the image could not say (``problems`` says why)."""

    engine: str
    path: str
    version: str = ""
    tool_parsers: tuple[str, ...] | None = None
    reasoning_parsers: tuple[str, ...] | None = None
    architectures: tuple[str, ...] | None = None
    auto_parsers: bool = False  # SGLang's `auto`: the format detected from the chat template
    templates: tuple[str, ...] | None = None  # tool chat templates in its examples directory
    problems: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """e.g. "vllm image vllm.sif (vLLM 0.11.0)"."""
        name = {"vllm": "vLLM", "sglang": "SGLang"}.get(self.engine, self.engine)
        version = f" ({name} {self.version})" if self.version else ""
        return f"{self.engine} image {self.path.rsplit('/', 1)[-1]}{version}"

    def registered(self, kind: str) -> tuple[str, ...] | None:
        return self.tool_parsers if kind == "tool" else self.reasoning_parsers

    def supports(self, architecture: str) -> bool | None:
        """Whether the image loads this architecture; None when it could not say."""
        return None if self.architectures is None else architecture in self.architectures

    def as_json(self) -> dict[str, object]:
        return {"engine": self.engine, "path": self.path, "version": self.version,
                "tool": _list(self.tool_parsers), "reasoning": _list(self.reasoning_parsers),
                "architectures": _list(self.architectures), "auto": self.auto_parsers,
                "templates": _list(self.templates), "problems": list(self.problems)}

    @classmethod
    def from_json(cls, data: object, path: str) -> ImageInfo | None:
        """From ``as_json`` or the probe's own output; None when it is neither."""
        if not isinstance(data, dict) or not isinstance(data.get("engine"), str):
            return None
        return cls(data["engine"], path, str(data.get("version") or ""), _names(data.get("tool")),
                   _names(data.get("reasoning")), _names(data.get("architectures")), data.get("auto") is True,
                   _names(data.get("templates")),
                   tuple(p for p in data.get("problems") or () if isinstance(p, str) and p))


def _list(value: tuple[str, ...] | None) -> list[str] | None:
    return None if value is None else list(value)


def _names(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(sorted({item for item in value if isinstance(item, str) and item}))


def parse_probe(output: str, engine: str, path: str) -> ImageInfo:
    """The probe's answer from its output (whatever else the image printed around it)."""
    for line in reversed(output.splitlines()):
        if line.startswith(PROBE_MARKER):
            try:
                info = ImageInfo.from_json(json.loads(line[len(PROBE_MARKER):]), path)
            except ValueError:
                info = None
            if info is not None:
                return info
    tail = [line for line in output.strip().splitlines() if line.strip() and not line.startswith("@@hpcllm")][-1:] \
        or ["(no output)"]
    return ImageInfo(engine, path, problems=(f"the image did not answer the probe: {tail[0][:300]}",))
