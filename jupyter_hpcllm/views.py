"""What the faces show, made once: the servers table, the models table, the plan's description, and
the one-line messages about a launch. Text only; the faces decide where it goes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .discovery.models import ModelSummary
    from .lifecycle import LaunchHandle, ServerInfo
    from .planning.plan import LaunchPlan

__all__ = [
    "format_table",
    "interrupted_text",
    "models_rows",
    "plan_text",
    "servers_rows",
    "status_rows",
    "status_text",
    "stopped_message",
]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def servers_rows(servers: Sequence[ServerInfo]) -> list[tuple[str, ...]]:
    """`list`: a header, then one row per server."""
    rows: list[tuple[str, ...]] = [("JOB", "STATE", "MODEL", "ENGINE", "NODE", "LEFT/REASON")]
    for s in servers:
        waiting = f"({s.reason})" + (f" start {s.expected_start.replace('T', ' ')}" if s.expected_start else "")
        rows.append((s.job_id, s.state.value, s.model or "?", s.engine or "?", s.node or "-",
                     s.time_left or waiting))
    return rows


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
    if plan.family:
        for engine in ("vllm", "sglang"):
            parsers = plan.family.parsers(engine)
            lines.append(f"  {engine + ':':11} tool-call parser {parsers.tool or '—'}, reasoning parser "
                         f"{parsers.reasoning or '—'}" + (f", {' '.join(parsers.extra_args)}" if parsers.extra_args
                                                         else ""))
    lines.append(f"  allocation  {plan.gpus} × {plan.gpu_type} ({plan.spec.gres}), tensor-parallel {plan.gpus}")
    lines += [f"              {reason}" for reason in plan.reasons]
    lines.append(f"  command     {plan.engine_command}")
    lines += [f"  note        {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"
