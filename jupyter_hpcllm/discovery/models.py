"""Model facts read from the cluster: config.json, the chat template and the weight files' total size.

A model is a directory name under the profile's model root, an absolute path, or a Hugging Face cache
entry (``models--Org--Name`` under the root, given as ``Org/Name``, as the directory name or as
``Name``). Facts are cached per profile and model directory, in memory and on disk, so a second ``up``
costs no round trip; ``list_models`` revalidates them against the directory's modification time.

A model root is shared: one model's broken or unreadable files are that model's problem (its row says
why, see ``ModelFacts.problems``), never the listing's. Only a connection that fails stops it.
"""

from __future__ import annotations

import difflib
import json
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config.checks import home_relative
from ..config.options import ENGINES
from ..config.profiles import Profile
from ..edge.files import FileInfo, Files
from ..errors import CommandTimeout, ConfigError, ConnectError, ModelNotFound, TransportError
from ..planning.facts import ModelFacts
from ..planning.families import Parsers, detect_family
from ..planning.sizing import choose_allocation

__all__ = ["ModelSummary", "list_models", "list_root", "model_facts", "summarize"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_HF_PREFIX = "models--"


# --- locating ---------------------------------------------------------------------------------------


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _hf_snapshot(files: Files, entry: str) -> str | None:
    """The snapshot directory of a Hugging Face cache entry (refs/main, else the only snapshot)."""
    try:
        revision = files.read(_join(entry, "refs/main"), 200).decode().strip()
        return _join(entry, f"snapshots/{revision}")
    except FileNotFoundError:
        pass
    try:
        snapshots = [i.name for i in files.list(_join(entry, "snapshots")) if i.is_dir]
    except FileNotFoundError:
        return None
    return _join(entry, f"snapshots/{sorted(snapshots)[-1]}") if snapshots else None


def _cache_names(name: str) -> list[str]:
    if name.startswith(_HF_PREFIX):
        return [name]
    if "/" in name:
        return [_HF_PREFIX + name.replace("/", "--")]
    return []


def locate(files: Files, profile: Profile, model: str, listing: list[FileInfo] | None = None) -> tuple[str, str]:
    """(directory to load, served name) for a model name, or ModelNotFound with the closest names."""
    model = _home_as_tilde(model.strip().rstrip("/"))
    if model.startswith("/") or model.startswith("~/"):
        last = model.rsplit("/", 1)[-1]
        _must_exist(files, model)
        if last.startswith(_HF_PREFIX):
            snapshot = _hf_snapshot(files, model)
            if snapshot:
                return snapshot, last.split("--")[-1]
        return model, last
    root = _home_as_tilde(profile.model_root)
    if listing is None:
        try:
            listing = files.list(root)
        except FileNotFoundError:
            raise ModelNotFound(
                f"The model root {root} of profile {profile.name!r} does not exist on the cluster.",
                "Set model_root in the profile (`hpcllm config show` prints it), or give an absolute path.",
            ) from None
    names = {entry.name for entry in listing if entry.is_dir or entry.is_link}
    served = model.rsplit("/", 1)[-1].removeprefix(_HF_PREFIX).split("--")[-1]
    if model in names and not model.startswith(_HF_PREFIX):
        return _join(root, model), served
    for cache_name in _cache_names(model) + [n for n in names if n.startswith(_HF_PREFIX) and n.endswith("--" + model)]:
        if cache_name in names:
            snapshot = _hf_snapshot(files, _join(root, cache_name))
            if snapshot:
                return snapshot, served
    visible = sorted(_display_name(n) for n in names)
    close = difflib.get_close_matches(model, visible, n=3, cutoff=0.4)
    raise ModelNotFound(
        f"Model {model!r} is not under {root} on the cluster.",
        (f"Closest names there: {', '.join(close)}. " if close else "")
        + "`hpcllm models` lists what is there; an absolute path works too.",
        candidates=close,
    )


def _home_as_tilde(path: str) -> str:
    """``$HOME/x`` and ``${HOME}/x`` as ``~/x``: the spelling the file readers know (SFTP starts at home)."""
    rest = home_relative(path)
    return path if rest is None else ("~/" + rest if rest else "~")


def _must_exist(files: Files, path: str) -> None:
    try:
        files.list(path)
    except FileNotFoundError:
        raise ModelNotFound(f"Model directory {path} does not exist on the cluster.",
                            "Check the path, or give a name under the profile's model root.") from None


def list_root(profile: Profile, files: Files) -> list[str]:
    """The names of the entries under the model root, as `model_facts` takes them ('' root: none)."""
    try:
        listing = files.list(_home_as_tilde(profile.model_root))
    except FileNotFoundError:
        return []
    return sorted(_display_name(e.name) for e in listing if (e.is_dir or e.is_link) and not e.name.startswith("."))


def _display_name(entry: str) -> str:
    return entry.removeprefix(_HF_PREFIX).replace("--", "/") if entry.startswith(_HF_PREFIX) else entry


# --- reading ----------------------------------------------------------------------------------------


# What reading one model's files may raise that is that model's problem, not the listing's: a file that
# is not JSON (ValueError) or nested too deep for the parser (RecursionError), a directory where a file
# should be, a file we may not read (OSError, or TransportError from SFTP).
_MODEL_FILE_ERRORS = (OSError, ValueError, RecursionError, TransportError)


def _connection_failed(error: BaseException) -> bool:
    """A failure of the connection itself (every other model would fail the same way): not one model's."""
    return isinstance(error, (ConnectError, CommandTimeout))


def read_facts(files: Files, path: str, name: str, mtime: float = 0.0) -> ModelFacts:
    entries = files.list(path)
    by_name = {entry.name: entry for entry in entries}
    problems: list[str] = []
    config: dict[str, Any] = {}
    if "config.json" in by_name:
        config, problem = _config(files, _join(path, "config.json"))
        problems += [problem] if problem else []
    try:
        template = _chat_template(files, path, by_name)
    except _MODEL_FILE_ERRORS as error:
        if _connection_failed(error):
            raise
        template = ""
        problems.append(f"cannot read its chat template ({_why(error)})")
    card = _card(files, path, by_name)
    weights = [e for e in entries if e.name.endswith(_WEIGHT_SUFFIXES)]
    # Repositories that ship both formats (Mistral: consolidated.safetensors + model-*.safetensors): count
    # what vLLM loads, the sharded Hugging Face files.
    if any(e.name.startswith("model") for e in weights):
        weights = [e for e in weights if not e.name.startswith("consolidated")]
    if any(e.name.endswith(".safetensors") for e in weights):
        weights = [e for e in weights if e.name.endswith(".safetensors")]
    total = sum(e.size for e in weights if not e.is_link)
    if any(e.is_link for e in weights):
        total += _cache_blob_bytes(files, path)
    return ModelFacts(name, path, config, template, total, len(weights), mtime, "; ".join(problems), card)


CARD_LIMIT = 256_000  # bytes of README.md read: real cards are tens of kB; their commands come early


def _card(files: Files, path: str, by_name: Mapping[str, FileInfo]) -> str:
    """The model card (README.md; in an HF cache snapshot, the Hub card itself), or '' when there is none
    or it cannot be read: a card only adds advice."""
    if "README.md" not in by_name:
        return ""
    try:
        return files.read(_join(path, "README.md"), CARD_LIMIT).decode(errors="replace")
    except _MODEL_FILE_ERRORS as error:
        if _connection_failed(error):
            raise
        return ""


def _config(files: Files, path: str) -> tuple[dict[str, Any], str]:
    """config.json as an object, and what is wrong with it ('' if nothing)."""
    try:
        data = json.loads(files.read(path))
    except FileNotFoundError:
        return {}, ""
    except _MODEL_FILE_ERRORS as error:
        if _connection_failed(error):
            raise
        return {}, f"cannot read config.json ({_why(error)})"
    if not isinstance(data, dict):
        return {}, f"config.json is {type(data).__name__}, not a JSON object"
    return data, ""


def _why(error: BaseException) -> str:
    """An error in a few words for a table row (JSON's own messages say where the file is broken)."""
    if isinstance(error, RecursionError):
        return "nested too deep"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at line {error.lineno}"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, TransportError):
        return error.message.rstrip(".")
    return str(error) or type(error).__name__


def _cache_blob_bytes(files: Files, snapshot: str) -> int:
    """Weights of an HF cache snapshot live in ../../blobs: sum the large blobs (one listing, no
    per-file round trips); configs and tokenizers are small."""
    entry = snapshot.rsplit("/snapshots/", 1)[0]
    try:
        blobs = files.list(_join(entry, "blobs"))
    except FileNotFoundError:
        return 0
    return sum(b.size for b in blobs if b.size >= 10_000_000)


def _json(files: Files, path: str) -> dict[str, Any]:
    """A JSON object file that only adds detail (a chat template): {} when it is missing or broken."""
    try:
        data = json.loads(files.read(path))
    except (FileNotFoundError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _chat_template(files: Files, path: str, by_name: Mapping[str, FileInfo]) -> str:
    if "chat_template.jinja" in by_name:
        return files.read(_join(path, "chat_template.jinja")).decode(errors="replace")
    if "chat_template.json" in by_name:
        template = _json(files, _join(path, "chat_template.json")).get("chat_template")
        return template if isinstance(template, str) else ""
    template = _json(files, _join(path, "tokenizer_config.json")).get("chat_template") if \
        "tokenizer_config.json" in by_name else None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = [t for t in template if isinstance(t, dict)]
        template = next((t.get("template") for t in named if t.get("name") == "default"), None) or \
            (named[0].get("template") if named else "")
    return template if isinstance(template, str) else ""


# --- caching ----------------------------------------------------------------------------------------

_memory: dict[tuple[str, str, str, str], ModelFacts] = {}
_lock = threading.Lock()


def _cache_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-hpcllm")) / "model-facts.json"


def _cache_key(profile: Profile, path: str, scope: str) -> tuple[str, str, str, str]:
    return (profile.name, profile.host, scope, path)


def _load_disk() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cached(profile: Profile, path: str, scope: str) -> ModelFacts | None:
    key = _cache_key(profile, path, scope)
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = _load_disk().get("|".join(key))
        facts = _from_disk(stored)
        if facts is not None:
            _memory[key] = facts
        return facts


# The types of ModelFacts' fields as the disk cache holds them: anything else there is not ours (an old
# version, a hand edit) and is read again from the cluster.
_STORED_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "path": str, "config": dict, "chat_template": str, "weight_bytes": int, "shards": int,
    "mtime": (int, float), "problem": str, "card": str,
}


def _from_disk(stored: Any) -> ModelFacts | None:
    # Every field: an entry an older version wrote (before model cards were read) is read again.
    if not isinstance(stored, dict) or set(stored) != set(_STORED_TYPES):
        return None
    if not all(isinstance(value, _STORED_TYPES[key]) and not isinstance(value, bool) for key, value in stored.items()):
        return None
    return ModelFacts(**stored)


def _remember(profile: Profile, facts: ModelFacts, scope: str) -> None:
    key = _cache_key(profile, facts.path, scope)
    with _lock:
        _memory[key] = facts
        data = _load_disk()
        data["|".join(key)] = asdict(facts)
        target = _cache_file()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps(data))
            temporary.replace(target)  # atomic: a reader never sees half a file
        except OSError:
            pass  # a read-only home only costs the next call a round trip


def model_facts(profile: Profile, files: Files, model: str, *, refresh: bool = False, scope: str = "") -> ModelFacts:
    """The facts of one model, from the cache unless `refresh` (then read through `files`)."""
    if not refresh and not model.startswith(("/", "~/")) and "/" not in model:
        cached = _cached(profile, _join(_home_as_tilde(profile.model_root), model), scope)
        if cached:
            return cached
    path, name = locate(files, profile, model)
    if not refresh:
        cached = _cached(profile, path, scope)
        if cached:
            return cached
    try:
        facts = read_facts(files, path, name)
    except FileNotFoundError:
        raise ModelNotFound(f"Model directory {path} does not exist on the cluster.",
                            "`hpcllm models` lists what is there.") from None
    except _MODEL_FILE_ERRORS as error:
        if _connection_failed(error):
            raise
        raise ConfigError(f"Cannot read the model directory {path} on the cluster: {_why(error)}.",
                          "Check its permissions, or give another model.") from None
    if not facts.problems:
        _remember(profile, facts, scope)  # a broken file may be fixed: read it again next time
    return facts


def list_models(profile: Profile, files: Files, *, scope: str = "") -> list[ModelFacts]:
    """Every model under the profile's model root: one listing, plus reads only for new or changed ones."""
    try:
        listing = files.list(_home_as_tilde(profile.model_root))
    except FileNotFoundError:
        raise ModelNotFound(
            f"The model root {profile.model_root} of profile {profile.name!r} does not exist on the cluster.",
            "Set model_root in the profile (`hpcllm config show` prints it).",
        ) from None
    result = []
    for entry in sorted(listing, key=lambda e: e.name.lower()):
        if not (entry.is_dir or entry.is_link) or entry.name.startswith("."):
            continue
        facts = _listed(profile, files, entry, scope)
        if facts is not None:
            result.append(facts)
    return result


def _listed(profile: Profile, files: Files, entry: FileInfo, scope: str) -> ModelFacts | None:
    """One entry of the model root: its facts (from the cache if unchanged), facts that say what could not
    be read, or None when it is no model (no config, no weights) or vanished meanwhile."""
    path = _join(_home_as_tilde(profile.model_root), entry.name)
    name = _display_name(entry.name).rsplit("/", 1)[-1]
    try:
        if entry.name.startswith(_HF_PREFIX):
            snapshot = _hf_snapshot(files, path)
            if snapshot is None:
                return None
            path = snapshot
        cached = _cached(profile, path, scope)
        if cached is not None and cached.mtime == entry.mtime:
            return cached
        facts = read_facts(files, path, name, entry.mtime)
    except FileNotFoundError:
        return None
    except _MODEL_FILE_ERRORS as error:
        if _connection_failed(error):
            raise
        return ModelFacts(name, path, mtime=entry.mtime, problem=f"cannot read its directory ({_why(error)})")
    if facts.problems:
        return facts  # not cached: once the file is fixed, the next listing reads it again
    if facts.config or facts.shards:
        _remember(profile, facts, scope)
        return facts
    return None


# --- summaries (`hpcllm models`) --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSummary:
    """One model under the model root: its facts, family, parsers per engine and suggested allocation."""

    facts: ModelFacts
    family: str | None
    parsers: Mapping[str, Parsers]
    # "1 × h200", "does not fit", "?" (no config to size it from), or "? (why)" when its files are broken
    suggestion: str
    problem: str = ""  # what is wrong with its files ('' if nothing): why it cannot be sized


def summarize(profile: Profile, facts: ModelFacts) -> ModelSummary:
    family = detect_family(facts.model_type, facts.architectures, facts.chat_template, facts.name)
    parsers = {engine: family.parsers(engine) for engine in ENGINES} if family else {}
    problem = "; ".join(facts.problems)
    if problem:
        return ModelSummary(facts, family.name if family else None, parsers, f"? ({problem})", problem)
    try:
        suggestion = choose_allocation(profile, facts)[0].describe() if facts.heads else "?"
    except ConfigError:
        suggestion = "does not fit"
    return ModelSummary(facts, family.name if family else None, parsers, suggestion)
