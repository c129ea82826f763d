"""Slurm's durations (``--time`` limits, squeue's time left) in seconds, and what a face says when a job's
walltime is nearly over."""

from __future__ import annotations

import re

__all__ = ["default_wait", "describe_minutes", "slurm_seconds", "walltime_warning"]

# [days-]hours:minutes:seconds, [days-]hours:minutes, days-hours, minutes:seconds, minutes
_DURATION = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_seconds(text: str | None) -> float | None:
    """Seconds in a Slurm duration (``4:00:00``, ``1-12:00:00``, ``90``, ``45:00``), None for anything else
    (``UNLIMITED``, ``NOT_SET``, ``INVALID``, empty)."""
    match = _DURATION.fullmatch((text or "").strip())
    if not match:
        return None
    days, first, second, third = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return float(((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds)
    if third is not None:  # hours:minutes:seconds
        return float((int(first) * 60 + int(second)) * 60 + int(third))
    if second is not None:  # minutes:seconds
        return float(int(first) * 60 + int(second))
    return float(int(first) * 60)  # minutes


def default_wait(time_limit: str | None) -> float:
    """How long to wait for a job's server by default: its time limit, at least an hour (it cannot be ready
    later than that, so a wait never runs forever)."""
    return max(3600.0, slurm_seconds(time_limit) or 0.0)


def describe_minutes(seconds: float) -> str:
    """``12 min``, ``1 h 05 min``: how a person reads a duration."""
    minutes = max(0, round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def walltime_warning(job_id: str, seconds_left: float | None, threshold_minutes: float) -> str | None:
    """What every face shows when less than `threshold_minutes` of the job's time limit remain (None: not
    yet, or the warning is off)."""
    if seconds_left is None or threshold_minutes <= 0 or seconds_left >= threshold_minutes * 60:
        return None
    return (f"Job {job_id} reaches its time limit in {describe_minutes(seconds_left)}: Slurm will then stop it. "
            f"`hpcllm renew {job_id}` (`%hpcllm renew`) starts a successor with the same plan and key and moves "
            "this address to it once it is ready.")
