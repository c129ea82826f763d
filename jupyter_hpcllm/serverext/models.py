"""The JSON models the /hpcllm/ endpoints answer with, one TypedDict each. `labextension/src/models.ts`
mirrors them, interface for interface and field for field (tests/test_serverext_models.py holds the two
together)."""

from __future__ import annotations

from typing import TypedDict

__all__ = [
    "DefaultsModel",
    "ErrorModel",
    "GpuTypeModel",
    "LaunchModel",
    "LogsModel",
    "MetricsModel",
    "ModelModel",
    "OptionModel",
    "ParserNamesModel",
    "ParsersModel",
    "PlanModel",
    "ProfileModel",
    "ProfilesModel",
    "ServerModel",
    "StoppedModel",
]


class ProfilesModel(TypedDict):
    """GET /hpcllm/profiles"""

    profiles: list[str]
    default: str


class GpuTypeModel(TypedDict):
    name: str
    memory_gb: float
    counts: list[int]


class DefaultsModel(TypedDict):
    time: str
    cpus: int
    mem: str
    partition: str | None
    account: str | None
    idle_timeout: float


class ProfileModel(TypedDict):
    """GET /hpcllm/profiles/NAME: what a launch form offers."""

    name: str
    host: str
    default_engine: str
    engines: list[str]
    model_root: str
    gpu_types: list[GpuTypeModel]
    default_gpu_type: str | None
    defaults: DefaultsModel


class OptionModel(TypedDict):
    """GET /hpcllm/options: one launch option as a form offers it (from `config.options`, the one
    definition every face is built from). kind: "text", "integer", "number", "boolean" or "arguments"."""

    name: str
    kind: str
    help: str
    group: str
    choices: list[str] | None
    minimum: float | None
    maximum: float | None


class ParserNamesModel(TypedDict):
    """GET /hpcllm/parsers: the parser names the engine's image registers (or why they are not known)."""

    engine: str
    tool: list[str]
    reasoning: list[str]
    problem: str | None


class ParsersModel(TypedDict):
    tool: str | None
    reasoning: str | None


class ModelModel(TypedDict):
    """GET /hpcllm/models: one per model under the profile's model root."""

    name: str
    size_gb: float
    family: str | None
    suggestion: str
    problem: str
    parsers: dict[str, ParsersModel]


class PlanModel(TypedDict):
    """POST /hpcllm/plans: `views.PlanView`, and the sbatch script when the plan can be launched."""

    ok: bool
    headline: str
    cost: str
    problem: str
    field: str | None
    details: list[str]
    gpus: int | None
    gpu_type: str | None
    gpu_hours: float | None
    need_gb: float | None
    script: str | None


class ServerModel(TypedDict):
    """GET /hpcllm/servers (a list), GET /hpcllm/servers/JOB."""

    job_id: str
    state: str
    model: str | None
    engine: str | None
    node: str | None
    gpus: str | None
    time_left: str | None
    seconds_left: float | None
    reason: str | None
    expected_start: str | None
    idle: str | None
    ended_idle: bool
    left: str
    walltime_warning: str | None


class StoppedModel(TypedDict):
    """DELETE /hpcllm/servers/JOB"""

    job_id: str
    state: str
    message: str


class LogsModel(TypedDict):
    """GET /hpcllm/servers/JOB/logs"""

    job_id: str
    text: str


class MetricsModel(TypedDict):
    """GET /hpcllm/servers/JOB/metrics: the engine's live numbers, and the rows `status` shows."""

    job_id: str
    running: float | None
    waiting: float | None
    kv_cache: float | None
    tokens_per_second: float | None
    generation_tokens: float | None
    rows: list[list[str]]


class LaunchModel(TypedDict):
    """POST /hpcllm/servers (202), POST /hpcllm/servers/JOB/renew (202), GET and DELETE
    /hpcllm/launches/ID: a launch, or a renewal (job_id: the successor once submitted)."""

    id: str
    profile: str
    model: str
    job_id: str | None
    stage: str
    message: str
    elapsed: float
    node: str | None
    reason: str | None
    expected_start: str | None
    shards: list[int] | None
    done: bool
    error: str | None
    field: str | None


class ErrorModel(TypedDict):
    """Any endpoint's error (with its HTTP status): one paragraph, and the launch option at fault."""

    error: str
    field: str | None
