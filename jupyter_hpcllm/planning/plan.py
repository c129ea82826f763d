"""From options to a job: model facts, engine command and sbatch spec, without touching the cluster.

``plan_launch`` is pure: `hpcllm script` prints its script without connecting, and `up` submits it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from .._version import __version__
from ..config.checks import check_model_name
from ..config.options import LaunchOptions
from ..config.profiles import GpuType, Profile
from ..errors import ConfigError, InvalidOption
from .engines import EngineSpec, build_command, display_argv, path_word
from .facts import ModelFacts
from .families import Family, Parsers, detect_family, family_from_name
from .script import JOB_NAME_PREFIX, JobSpec, render_script
from .sizing import choose_allocation

__all__ = ["LaunchPlan", "model_path_for", "plan_launch"]

@dataclass(frozen=True)
class LaunchPlan:
    profile: Profile
    model: str  # the served name: what `client.chat.completions.create(model=...)` takes
    model_path: str
    engine: str
    gpu_type: str
    gpus: int
    family: Family | None
    tool_parser: str | None
    reasoning_parser: str | None
    spec: JobSpec
    notes: tuple[str, ...] = field(default=())
    reasons: tuple[str, ...] = field(default=())
    facts: ModelFacts | None = None
    options: LaunchOptions | None = None
    need_gb: float | None = None  # the GPU memory the model needs, when its files sized it

    @property
    def tensor_parallel(self) -> int:
        return self.gpus

    @property
    def job_name(self) -> str:
        return self.spec.name

    @property
    def script(self) -> str:
        return render_script(self.spec)

    @property
    def engine_command(self) -> str:
        return " ".join(display_argv(self.spec.command))


def model_path_for(profile: Profile, model: str) -> str:
    """The model's directory on the cluster: a name under the model root, or an absolute path."""
    model = check_model_name(model)
    if model.startswith(("/", "~/")):
        return model
    return f"{profile.model_root.rstrip('/')}/{model}"


MAX_CONTEXT = 2**31 - 1  # tokens: more than any model takes (and the sizing's arithmetic stays in floats)


def _context_arg(engine_args: tuple[str, ...]) -> int | None:
    """The context length the user asked the engine for, if any (it sizes the KV cache)."""
    for flag in ("--max-model-len", "--context-length"):
        for i, arg in enumerate(engine_args):
            value = arg.split("=", 1)[1] if arg.startswith(flag + "=") else (
                engine_args[i + 1] if arg == flag and i + 1 < len(engine_args) else None)
            if value and value.isascii() and value.isdigit():
                if not 0 < int(value) <= MAX_CONTEXT:
                    raise ConfigError(f"{flag} {value} is not a context length the engine can take.",
                                      f"Give a number of tokens from 1 to {MAX_CONTEXT}.")
                return int(value)
    return None


def _type_for_count(profile: Profile, gpu_type: str | None, count: int) -> GpuType:
    """The GPU type asked for; else the default type, or the first type that allows `count` GPUs."""
    default = profile.gpu_type(gpu_type)
    if gpu_type is not None or count in default.counts:
        return default
    return next((g for g in profile.gpu_types.values() if count in g.counts), default)


def _check_count(profile: Profile, gpu: GpuType, count: int) -> None:
    if count not in gpu.counts:
        others = [g for g in profile.gpu_types.values() if count in g.counts and g.name != gpu.name]
        alternative = f" or --gpu-type {others[0].name} (up to {others[0].max_count})" if others else ""
        raise ConfigError(
            f"{gpu.name} allows {gpu.min_count}–{gpu.max_count} GPUs per job on profile {profile.name!r}; "
            f"you asked for {count}.",
            f"Use --gpus {min(max(count, gpu.min_count), gpu.max_count)}{alternative}.",
        )


@contextlib.contextmanager
def _about(option: str) -> Iterator[None]:
    """A ConfigError raised here is about this launch option: an InvalidOption, so a form can mark it."""
    try:
        yield
    except InvalidOption:
        raise
    except ConfigError as error:
        raise InvalidOption(option, error.message, error.hint) from None


def plan_launch(profile: Profile, options: LaunchOptions, *, facts: ModelFacts | None = None) -> LaunchPlan:
    """Options (and, when known, the model's facts from the cluster) → a job. Pure: no connection.
    A choice that cannot work raises InvalidOption naming the option at fault."""
    with _about("engine"):
        engine = options.engine or profile.default_engine
        image = profile.image(engine)
    return _plan(profile, options, facts, engine, image)


def _plan(profile: Profile, options: LaunchOptions, facts: ModelFacts | None, engine: str, image: str) -> LaunchPlan:
    model, gpus, gpu_type = options.model, options.gpus, options.gpu_type
    tool_call_parser, reasoning_parser = options.tool_call_parser, options.reasoning_parser
    engine_args = options.engine_args
    if facts is not None:
        model_path, served = facts.path, facts.name
    else:
        with _about("model"):
            model_path = model_path_for(profile, model)
        served = model_path.rsplit("/", 1)[-1]
    if gpu_type is not None:
        with _about("gpu_type"):
            profile.gpu_type(gpu_type)
    if gpus is not None:
        with _about("gpus"):
            _check_count(profile, _type_for_count(profile, gpu_type, gpus), gpus)
    with _about("engine_args"):
        context = _context_arg(engine_args)
    reasons: list[str] = []
    notes = []
    need_gb = None
    if facts is not None and facts.problems:
        # A config.json we cannot read sizes nothing: the profile's default allocation, and why.
        notes.append(f"Cannot size {served} from its files ({'; '.join(facts.problems)}): using the profile's "
                     "default allocation (pass --gpus and --gpu-type to choose).")
    if facts is not None and not facts.problems and facts.weight_bytes and facts.heads:
        with _about("gpus" if gpus is not None else ("gpu_type" if gpu_type is not None else "model")):
            allocation, reasons = choose_allocation(profile, facts, gpu_type=gpu_type, gpus=gpus, context=context)
        gpu, count, need_gb = allocation.gpu, allocation.count, allocation.need.total_gb
    else:
        count = profile.default_gpus if gpus is None else gpus
        gpu = _type_for_count(profile, gpu_type, count)
        with _about("gpus"):
            _check_count(profile, gpu, count)
    if facts is not None:
        family = detect_family(facts.model_type, facts.architectures, facts.chat_template, served)
        source = f"its config ({facts.model_type or 'no model_type'})"
    else:
        family = family_from_name(served)
        source = "its name"
    defaults = family.parsers(engine) if family else Parsers()
    if family is None:
        notes.append(
            f"The family of {served!r} is not known from {source}: launching without tool-call and "
            "reasoning parsers (pass --tool-call-parser / --reasoning-parser to set them)."
        )
    tool = tool_call_parser if tool_call_parser is not None else defaults.tool
    reasoning = reasoning_parser if reasoning_parser is not None else defaults.reasoning
    extra = tuple(a for a in defaults.extra_args if a not in engine_args)
    if (engine == "vllm" and defaults.tool_chat_template and tool == defaults.tool and tool
            and not any(a.startswith("--chat-template") for a in engine_args)):
        # vLLM's own tool chat template for this family, as shipped in its image's examples/.
        extra += ("--chat-template",
                  path_word(f"{profile.vllm_examples_dir.rstrip('/')}/{defaults.tool_chat_template}"))
    with _about("engine_args"):
        command = build_command(
            EngineSpec(engine, model_path, served, count, tool or None, reasoning or None, extra + engine_args)
        )
    spec = JobSpec(
        name=f"{JOB_NAME_PREFIX}pending",
        model=served,
        engine=engine,
        command=command,
        gres=f"gpu:{gpu.name}:{count}",
        cpus=profile.cpus if options.cpus is None else options.cpus,
        mem=options.mem or profile.mem,
        time=options.time or profile.time,
        runtime=profile.runtime,
        runtime_command=profile.runtime_command,
        image=image,
        runtime_args=profile.runtime_args,
        binds=profile.binds or ((profile.model_root,) if profile.runtime != "none" else ()),
        partition=options.partition or profile.partition,
        account=options.account or profile.account,
        qos=options.qos or profile.qos,
        extra_sbatch=profile.extra_sbatch,
        prologue=profile.prologue,
        comment=f"hpcllm;model={served};engine={engine}",
        idle_timeout=profile.idle_timeout if options.idle_timeout is None else options.idle_timeout,
        header=f"jupyter-hpcllm {__version__}",
    )
    # Same script, same job: the name carries a digest of everything that runs, so `up` can find a
    # pending or running twin and reuse it instead of queueing a second one.
    digest = hashlib.sha256(render_script(spec).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", served)[:40]
    spec = replace(spec, name=f"{JOB_NAME_PREFIX}{slug}-{digest}")
    return LaunchPlan(profile, served, model_path, engine, gpu.name, count, family, tool, reasoning, spec,
                      tuple(notes), tuple(reasons), facts, options, need_gb)
