"""What the faces show, made once: the servers table, the models table, the plan's description, and
the one-line messages about a launch. Text only; the faces decide where it goes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .lifecycle.walltime import slurm_seconds

if TYPE_CHECKING:
    from .discovery.models import ModelSummary
    from .lifecycle import EngineMetrics, LaunchHandle, ServerInfo
    from .planning.plan import LaunchPlan

__all__ = [
    "PlanView",
    "format_table",
    "interrupted_text",
    "metrics_rows",
    "models_rows",
    "plan_text",
    "plan_view",
    "problem_view",
    "servers_rows",
    "status_rows",
    "status_text",
    "stopped_message",
    "time_left_text",
]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def servers_rows(servers: Sequence[ServerInfo]) -> list[tuple[str, ...]]:
    """`list`: a header, then one row per server."""
    rows: list[tuple[str, ...]] = [("JOB", "STATE", "MODEL", "ENGINE", "GPUS", "NODE", "LEFT/REASON")]
    for s in servers:
        rows.append((s.job_id, s.state.value, s.model or "?", s.engine or "?", s.gpus or "?", s.node or "-",
                     time_left_text(s)))
    return rows


def time_left_text(info: ServerInfo) -> str:
    """Time left when running; else why it waits and when Slurm expects it to start."""
    waiting = f"({info.reason})" + (f" start {info.expected_start.replace('T', ' ')}" if info.expected_start else "")
    return info.time_left or (waiting if info.reason else "")


def models_rows(models: Sequence[ModelSummary]) -> list[tuple[str, ...]]:
    """`models`: a header, then one row per model."""
    rows: list[tuple[str, ...]] = [("MODEL", "SIZE", "FAMILY", "VLLM TOOL/REASONING", "SGLANG TOOL/REASONING",
                                    "SUGGESTED")]
    for model in models:
        def parsers(engine: str, model: ModelSummary = model) -> str:
            chosen = model.parsers.get(engine)
            return f"{chosen.tool or '—'}/{chosen.reasoning or '—'}" if chosen else "—"

        rows.append((model.facts.name, f"{model.facts.weight_gb:.1f} GB", model.family or "unknown",
                     parsers("vllm"), parsers("sglang"), model.suggestion))
    return rows


def status_rows(info: ServerInfo) -> list[tuple[str, str]]:
    """`status`: (label, value) pairs, only those known."""
    rows = [("job", info.job_id), ("state", info.state.value), ("model", info.model or "?"),
            ("engine", info.engine or "?")]
    rows += [(label, str(value)) for label, value in (
        ("node", info.node), ("time left", info.time_left), ("idle", info.idle), ("reason", info.reason),
        ("started", info.started), ("expected start", info.expected_start), ("port", info.port),
        ("url", info.url)) if value]
    if info.ended_idle:
        rows.append(("ended", "by itself: nothing used it for its idle timeout"))
    return rows


def metrics_rows(metrics: EngineMetrics) -> list[tuple[str, str]]:
    """The engine's live numbers as `status` shows them (only those it gives)."""
    rows = []
    if metrics.running is not None or metrics.waiting is not None:
        rows.append(("requests", f"{_count(metrics.running)} running, {_count(metrics.waiting)} waiting"))
    if metrics.tokens_per_second is not None:
        rows.append(("generation", f"{metrics.tokens_per_second:,.0f} tokens/s"))
    if metrics.kv_cache is not None:
        rows.append(("KV cache", f"{metrics.kv_cache * 100:.0f} % used"))
    return rows


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def status_text(info: ServerInfo, indent: str = "") -> str:
    return "".join(f"{indent}{label:15} {value}\n" for label, value in status_rows(info)[2:])


def interrupted_text(handle: LaunchHandle, down: str) -> str:
    """What an interrupted (or stopped) launch left behind; `down` is the face's stop command."""
    if not handle.submitted:
        return "Interrupted: nothing was submitted."
    if handle.freed:
        return f"Interrupted: job {handle.job_id} was cancelled, its GPUs are free."
    return f"Interrupted: job {handle.job_id} may still be running; stop it with `{down} {handle.job_id}`."


def stopped_message(job_id: str, state_value: str) -> str:
    now = "gone from the queue" if state_value == "UNKNOWN" else f"now {state_value}"
    return f"Job {job_id} cancelled ({now}); its GPUs are free."


def choice_lines(plan: LaunchPlan) -> list[tuple[str, str]]:
    """(label, text) for each choice the plan made and where it came from: the engine, the parsers (with
    what the other sources said where they disagree), the flags the model needs, speculative decoding,
    and what the engine's image said of itself."""
    lines = []
    if plan.engine_reason:
        lines.append(("engine", f"{plan.engine} ({plan.engine_reason})"))
    if plan.parsers is not None:
        lines += [("parsers", plan.parsers.tool.describe()), ("", plan.parsers.reasoning.describe())]
        if plan.parsers.flag_sources:
            lines.append(("flags", "; ".join(plan.parsers.flag_sources)))
    if plan.card is not None and plan.card.command:
        lines.append(("model card", plan.card.command if len(plan.card.command) <= 160
                      else plan.card.command[:159] + "…"))
    if plan.speculation is not None:
        lines.append(("speculative", plan.speculation.describe()))
    image = plan.image
    if image is not None:
        counts = [f"{len(names)} {what}" for names, what in ((image.tool_parsers, "tool-call parsers"),
                                                             (image.reasoning_parsers, "reasoning parsers"),
                                                             (image.architectures, "architectures"))
                  if names is not None]
        said = ", ".join(counts) + (", detects parsers from the chat template" if image.auto_parsers else "")
        lines.append(("image", f"{image.label}: {said or 'could not say what it holds'}"
                      + (f" ({'; '.join(image.problems)[:200]})" if image.problems else "")))
    return lines


def plan_text(plan: LaunchPlan) -> str:
    """What `hpcllm plan` prints: the facts, the choices and the reasons."""
    lines = [f"{plan.model}  ({plan.model_path})"]
    facts = plan.facts
    if facts is not None:
        arch = ", ".join(facts.architectures) or "?"
        lines.append(f"  config      model_type {facts.model_type or '?'} ({arch}); {facts.heads} attention heads, "
                     f"{facts.kv_heads} KV heads, {facts.layers} layers, context {facts.max_context:,}")
        lines.append(f"  weights     {facts.weight_gb:.1f} GB in {facts.shards} files")
    family = plan.family.name if plan.family else "unknown"
    lines.append(f"  family      {family}")
    lines += [f"  {label:11} {text}" for label, text in choice_lines(plan)]
    copies = (f", tensor-parallel {plan.tensor_parallel} with {plan.replicas} data-parallel attention ranks"
              if plan.dp_attention else
              f" = {plan.replicas} replicas × tensor-parallel {plan.tensor_parallel}" if plan.replicas > 1 else
              f", tensor-parallel {plan.tensor_parallel}")
    lines.append(f"  allocation  {plan.gpus} × {plan.gpu_type} ({plan.spec.gres}){copies}")
    lines += [f"              {reason}" for reason in plan.reasons]
    lines.append(f"  command     {plan.engine_command}")
    lines += [f"  note        {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PlanView:
    """A plan as a launch form shows it, or why there is none (`ok` False: `problem`, and the option at
    fault in `field` when one is). JSON-ready (`as_dict`), for the panel and the lab extension alike."""

    ok: bool
    headline: str  # "needs ≈ 81 GB → 1 × h200, tensor-parallel 1", or the problem
    cost: str = ""  # the GPU-hours the request holds
    problem: str = ""
    field: str | None = None
    details: tuple[str, ...] = ()  # parsers and where they come from, the sizing's reasons, notes
    gpus: int | None = None
    gpu_type: str | None = None
    gpu_hours: float | None = None
    need_gb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "details": list(self.details)}


def plan_view(plan: LaunchPlan) -> PlanView:
    need = f"needs ≈ {plan.need_gb:.0f} GB → " if plan.need_gb else ""
    copies = f" ({plan.replicas} replicas)" if plan.replicas > 1 else ""
    headline = f"{need}{plan.gpus} × {plan.gpu_type}, tensor-parallel {plan.tensor_parallel}{copies}"
    seconds = slurm_seconds(plan.spec.time)
    gpu_hours = round(plan.gpus * seconds / 3600, 2) if seconds is not None else None
    gpus = f"{plan.gpus} GPU" + ("s" if plan.gpus != 1 else "")
    hours = "" if gpu_hours is None else f"{gpu_hours:g} GPU-hour" + ("s" if gpu_hours != 1 else "")
    cost = (f"holds {gpus} for up to {plan.spec.time} = {hours} (less if you stop it, or it ends itself when "
            "idle)" if gpu_hours is not None else f"holds {gpus} until its time limit")
    details = [f"{label}: {text}" if label else text for label, text in choice_lines(plan)]
    details += [*plan.reasons, *plan.notes]
    return PlanView(True, headline, cost, details=tuple(details), gpus=plan.gpus, gpu_type=plan.gpu_type,
                    gpu_hours=gpu_hours, need_gb=round(plan.need_gb, 1) if plan.need_gb else None)


def problem_view(error: Exception) -> PlanView:
    """Why a form's choices cannot be launched: one paragraph, and the option at fault if known."""
    text = str(error).strip() or type(error).__name__
    return PlanView(False, text, problem=text, field=getattr(error, "field", None))
