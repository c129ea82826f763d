"""From options to a job: model facts, engine command and sbatch spec, without touching the cluster.

``plan_launch`` is pure: `hpcllm script` prints its script without connecting, and `up` submits it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from .._version import __version__
from ..config.checks import check_model_name
from ..config.options import ENGINES, LaunchOptions
from ..config.profiles import GpuType, Profile
from ..errors import ConfigError, InvalidOption
from .engines import EngineSpec, build_command, display_argv, passes
from .facts import ModelFacts
from .families import Family, detect_family, family_from_name
from .images import ImageInfo
from .modelcard import CardAdvice, CardSpeculative, card_advice
from .parsers import ParserPlan, choose_parsers
from .script import JOB_NAME_PREFIX, JobSpec, render_script
from .selection import choose_engine
from .sizing import choose_allocation, tp_fits
from .speculative import Speculation, plan_speculation

__all__ = ["DraftFound", "LaunchPlan", "model_path_for", "plan_launch"]


@dataclass(frozen=True)
class DraftFound:
    """What `--speculative` found on the cluster: the draft's facts (None: the model's own MTP layers, or
    nothing found), where it came from, and what the model card's command said."""

    facts: ModelFacts | None
    source: str
    hint: CardSpeculative | None = None  # what the model card's command set up, if anything


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
    need_gb: float | None = None  # the GPU memory one replica needs, when its files sized it
    replicas: int = 1
    parsers: ParserPlan | None = None  # each parser with its source, and the flags the model needs
    engine_reason: str = ""  # why this engine
    image: ImageInfo | None = None  # what the engine's image said of itself, when it was asked
    speculation: Speculation | None = None
    card: CardAdvice | None = None  # what the model card's commands for this engine say
    dp_attention: bool = False  # SGLang's data-parallel attention: one copy on every GPU, attention split

    @property
    def tensor_parallel(self) -> int:
        return self.gpus if self.dp_attention else self.gpus // self.replicas

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


def plan_launch(profile: Profile, options: LaunchOptions, *, facts: ModelFacts | None = None,
                images: Mapping[str, ImageInfo] | None = None, draft: DraftFound | None = None) -> LaunchPlan:
    """Options (and, when known, the model's facts, what the engine images say of themselves and the
    speculative draft, all read from the cluster) → a job. Pure: no connection. A choice that cannot work
    raises InvalidOption naming the option at fault."""
    images = images or {}
    with _about("engine"):
        engine, engine_reason = choose_engine(profile, options, facts, images)
        image = profile.image(engine)
    return _plan(profile, options, facts, engine, image, images.get(engine), engine_reason, draft)


def _plan(profile: Profile, options: LaunchOptions, facts: ModelFacts | None, engine: str, image: str,
          info: ImageInfo | None, engine_reason: str, draft: DraftFound | None) -> LaunchPlan:
    model, gpus, gpu_type = options.model, options.gpus, options.gpu_type
    replicas = options.replicas or 1
    engine_args = options.engine_args
    # SGLang's DP attention: --dp-size ranks share one copy of the model on all the job's GPUs (--tp-size is
    # every GPU), each with its own attention and KV cache. The job is sized as one copy then.
    dp_attention = engine == "sglang" and passes(engine_args, "--enable-dp-attention")
    copies = 1 if dp_attention else replicas
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
    if gpus is not None and gpus % replicas:
        raise InvalidOption("replicas", f"{gpus} GPUs cannot be shared evenly by {replicas} replicas.",
                            "Give --gpus as a multiple of --replicas (each replica gets GPUs / replicas).")
    with _about("engine_args"):
        context = _context_arg(engine_args)
    reasons: list[str] = []
    notes = []
    need_gb = None
    card = card_advice(facts.card, engine) if facts is not None and facts.card else None
    speculation = None
    if options.speculative and facts is not None and draft is not None:
        with _about("speculative"):
            # The card's setup for this engine, else the one it gives for the other (the draft is the same).
            hints = [draft.hint, card.speculative if card else None,
                     *(card_advice(facts.card, other).speculative for other in ENGINES if other != engine)]
            hint = next((h for h in hints if h is not None), None)
            speculation = plan_speculation(engine, facts, draft.facts, source=draft.source, hint=hint,
                                           image=info, engine_args=engine_args)
    elif options.speculative:
        notes.append("Planned without reading the cluster: speculative decoding is set up when the draft is read "
                     "(`hpcllm plan` shows it), so this script leaves it out.")
    if facts is not None and facts.problems:
        # A config.json we cannot read sizes nothing: the profile's default allocation, and why.
        notes.append(f"Cannot size {served} from its files ({'; '.join(facts.problems)}): using the profile's "
                     "default allocation (pass --gpus and --gpu-type to choose).")
    if facts is not None and not facts.problems and facts.weight_bytes and facts.heads:
        at_fault = "gpus" if gpus is not None else ("gpu_type" if gpu_type is not None else
                                                     ("replicas" if replicas > 1 else "model"))
        with _about(at_fault):
            allocation, reasons = choose_allocation(profile, facts, gpu_type=gpu_type, gpus=gpus, context=context,
                                                    replicas=copies,
                                                    draft_gb=speculation.extra_gb if speculation else 0.0)
        gpu, count, need_gb = allocation.gpu, allocation.count, allocation.need.total_gb
        if replicas > 1:  # the advice to try replicas is for those who have not
            reasons = [reason for reason in reasons if not reason.startswith("Serving many people")]
    else:
        count = profile.default_gpus * copies if gpus is None else gpus
        gpu = _type_for_count(profile, gpu_type, count)
        with _about("gpus"):
            _check_count(profile, gpu, count)
    if facts is not None:
        family = detect_family(facts.model_type, facts.architectures, facts.chat_template, served)
        source = f"its config ({facts.model_type or 'no model_type'})"
    else:
        family = family_from_name(served)
        source = "its name"
    parsers = choose_parsers(engine, family, card, info, tool_call_parser=options.tool_call_parser,
                             reasoning_parser=options.reasoning_parser, engine_args=engine_args,
                             examples_dir=profile.examples_dir(engine), model_path=model_path)
    notes += parsers.notes
    if family is None and parsers.tool.name is None and parsers.reasoning.name is None:
        notes.append(f"The family of {served!r} is not known from {source}, and no other source names parsers: "
                     "launching without tool-call and reasoning parsers (pass --tool-call-parser / "
                     "--reasoning-parser to set them).")
    elif family is None:
        notes.append(f"The family of {served!r} is not known from {source}.")
    tool, reasoning = parsers.tool.name, parsers.reasoning.name
    extra = parsers.extra_args + (speculation.args(engine) if speculation else ())
    binds = profile.binds or ((profile.model_root,) if profile.runtime != "none" else ())
    draft_path = speculation.draft.path if speculation and speculation.draft else None
    if draft_path and profile.runtime != "none" and not any(
            draft_path == bind or draft_path.startswith(bind.rstrip("/") + "/") for bind in binds):
        binds = (*binds, draft_path)  # a draft outside the model root must be visible in the container too
    with _about("engine_args"):
        if dp_attention and count % replicas and gpus is None:
            # One copy on every GPU: take the next count the ranks share evenly.
            larger = [c for c in gpu.counts if c > count and c % replicas == 0 and (facts is None or tp_fits(facts, c))]
            if larger:
                notes.append(f"{larger[0]} GPUs rather than {count}: each of the {replicas} data-parallel attention "
                             "ranks gets as many.")
                count = larger[0]
        if count % replicas:
            even = replicas * max(1, count // replicas)
            raise InvalidOption("replicas", f"{count} GPUs cannot be shared evenly by {replicas} replicas.",
                                f"Give --gpus as a multiple of --replicas, e.g. --gpus {even}.")
        command = build_command(EngineSpec(engine, model_path, served, count // copies, tool, reasoning,
                                           extra + engine_args, data_parallel=replicas))
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
        binds=binds,
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
                      tuple(notes), tuple(reasons), facts, options, need_gb, replicas, parsers, engine_reason, info,
                      speculation, card, dp_attention)
