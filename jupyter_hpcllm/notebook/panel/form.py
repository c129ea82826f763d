"""The launch form's widgets: where and what (profile, model), how (engine, GPUs, time, parsers...), and
the values they hold, as `LaunchOptions.from_mapping` takes them. No I/O here: the panel fills the
choices (models, parser names) from its background work."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import ipywidgets as widgets

from ...config.options import option_specs
from ...config.profiles import Profile
from ...views import models_rows

__all__ = ["AUTOMATIC", "LaunchForm", "ModelEntry"]

AUTOMATIC = "(automatic)"  # a parser choice: no parser name has parentheses
NONE = "(none)"
_STYLE = {"description_width": "10em"}
_ENGINE_CHOICES = [("Automatic (the image that loads the model)", "auto"), ("vLLM", "vllm"), ("SGLang", "sglang")]
def _wide() -> widgets.Layout:
    return widgets.Layout(width="34em")  # one per widget: a closed panel closes its own layouts only
# The fields offered as text, and what their description says.
_TEXT_FIELDS = (("time", "Time limit"), ("cpus", "CPUs"), ("mem", "Memory"), ("partition", "Partition"),
                ("account", "Account"), ("replicas", "Replicas"), ("speculative", "Speculative draft"))


class ModelEntry:
    """A model as the picker lists it: its name and one line of facts."""

    def __init__(self, name: str, label: str) -> None:
        self.name, self.label = name, label

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[str]]) -> list[ModelEntry]:
        """From `views.models_rows` (MODEL, SIZE, FAMILY, ..., SUGGESTED), header first."""
        return [cls(row[0], f"{row[0]} · {row[1]} · {row[2]} · suggested {row[-1]}") for row in rows[1:]]


def _help(name: str) -> str:
    return next(spec.help for field, _, _, spec in option_specs() if field == name)


class LaunchForm:
    """Every input of the panel, and the values they hold."""

    def __init__(self, profiles: Sequence[str], default_profile: str) -> None:
        self.profile = widgets.Dropdown(options=list(profiles), value=default_profile, description="Profile",
                                        style=_STYLE, layout=_wide())
        self.search = widgets.Text(description="Model", placeholder="type to filter by name, family or size",
                                   style=_STYLE, layout=_wide(), continuous_update=True)
        self.model = widgets.Select(options=[], rows=7, layout=widgets.Layout(width="34em", margin="0 0 0 10.5em"))
        self.models_note = widgets.HTML()
        self.engine = widgets.Dropdown(options=_ENGINE_CHOICES, description="Engine", style=_STYLE,
                                       tooltip=_help("engine"))
        self.gpu_type = widgets.Dropdown(description="GPU type", style=_STYLE, tooltip=_help("gpu_type"))
        self.gpus = widgets.Dropdown(description="GPUs", style=_STYLE, tooltip=_help("gpus"))
        self.text = {name: widgets.Text(description=label, style=_STYLE, tooltip=_help(name))
                     for name, label in _TEXT_FIELDS}
        self.tool_call_parser = widgets.Dropdown(description="Tool-call parser", style=_STYLE,
                                                 tooltip=_help("tool_call_parser"))
        self.reasoning_parser = widgets.Dropdown(description="Reasoning parser", style=_STYLE,
                                                 tooltip=_help("reasoning_parser"))
        self.parsers_note = widgets.HTML()
        self.engine_args = widgets.Text(description="Engine arguments", placeholder="e.g. --max-model-len 32768",
                                        style=_STYLE, layout=_wide(), tooltip=_help("engine_args"))
        self.as_name = widgets.Text(value="client", description="Client variable", style=_STYLE)
        self.entries: list[ModelEntry] = []
        self.allocation_chosen = False  # the user picked GPUs themselves: no longer the suggestion
        self._quiet = threading.local()  # .depth > 0 in the thread where the form changes itself
        self.set_parser_names((), ())

    # -- what the panel shows

    def fields(self) -> dict[str, Any]:
        """The option name → its widget (what an error's `field` marks)."""
        return {"profile": self.profile, "model": self.model, "engine": self.engine, "gpu_type": self.gpu_type,
                "gpus": self.gpus, **self.text, "tool_call_parser": self.tool_call_parser,
                "reasoning_parser": self.reasoning_parser, "engine_args": self.engine_args, "as_name": self.as_name}

    def mark(self, field: str | None) -> None:
        """Outline the widget of the option at fault (none: clear every mark)."""
        for name, widget in self.fields().items():
            widget.layout.border = "1px solid #b00020" if name == field else ""

    # -- filling the choices

    def set_profile(self, profile: Profile) -> None:
        """The choices and placeholders of this profile: its GPU types and counts, engines, defaults."""
        with self.quietly():
            self.gpu_type.options = [(f"{g.name} ({g.memory_gb:g} GB)", g.name) for g in profile.gpu_types.values()]
            default = profile.default_gpu_type or next(iter(profile.gpu_types), None)
            if default is not None:
                self.gpu_type.value = default
            self.set_counts(profile)
            # Both images: automatic, the engine whose image loads the model (planning.selection).
            both = len(profile.engines) > 1
            self.engine.options = [c for c in _ENGINE_CHOICES if c[1] in profile.engines or (both and c[1] == "auto")]
            self.engine.value = "auto" if len(profile.engines) > 1 else profile.default_engine
            defaults = {"time": profile.time, "cpus": str(profile.cpus), "mem": profile.mem,
                        "partition": profile.partition or "the cluster's default",
                        "account": profile.account or "your default", "replicas": "1 (copies of the model in the job)",
                        "speculative": "off ('auto': the draft its card names)"}
            for name, widget in self.text.items():
                widget.placeholder = defaults[name]
                widget.value = ""
            self.allocation_chosen = False

    def set_counts(self, profile: Profile) -> None:
        """The counts the chosen GPU type allows (keeping the chosen count when it still can be)."""
        gpu = profile.gpu_types.get(self.gpu_type.value) if self.gpu_type.value else None
        counts = list(gpu.counts) if gpu else [1]
        keep = self.gpus.value
        with self.quietly():
            self.gpus.options = [(str(count), count) for count in counts]
            self.gpus.value = keep if keep in counts else counts[0]

    def set_models(self, entries: Iterable[ModelEntry]) -> None:
        self.entries = list(entries)
        self.filter_models()

    def filter_models(self) -> None:
        """Show the models whose line has every word typed in the search box."""
        words = self.search.value.lower().split()
        shown = [(e.label, e.name) for e in self.entries if all(word in e.label.lower() for word in words)]
        keep = self.model.value
        with self.quietly():
            self.model.options = shown
            if keep in [name for _, name in shown]:
                self.model.value = keep
        total = len(self.entries)
        self.models_note.value = (f"<small>{len(shown)} of {total} models</small>" if words else
                                  f"<small>{total} models</small>")

    def set_allocation(self, gpu_type: str, gpus: int) -> None:
        """Preselect a suggested allocation (not a choice of the user's)."""
        with self.quietly():
            if gpu_type in [value for _, value in self.gpu_type.options]:
                self.gpu_type.value = gpu_type
            if gpus in [value for _, value in self.gpus.options]:
                self.gpus.value = gpus

    def set_parser_names(self, tool: Sequence[str], reasoning: Sequence[str]) -> None:
        """The override choices: automatic, none, then the names the engine's image registers."""
        with self.quietly():
            for widget, names in ((self.tool_call_parser, tool), (self.reasoning_parser, reasoning)):
                keep = widget.value
                options = [("automatic", AUTOMATIC), ("none", NONE), *((name, name) for name in names)]
                widget.options = options
                widget.value = keep if keep in [value for _, value in options] else AUTOMATIC

    # -- reading the values

    def values(self, *, suggested_allocation: bool = False) -> dict[str, Any]:
        """The options as `LaunchOptions.from_mapping` takes them (empty text: the profile's default). With
        `suggested_allocation`, GPUs are left to the plan (what it suggests for the model)."""
        values: dict[str, Any] = {"model": self.model.value or "", "engine": self.engine.value,
                                  "engine_args": self.engine_args.value}
        if not suggested_allocation:
            values.update(gpu_type=self.gpu_type.value, gpus=self.gpus.value)
        values.update({name: widget.value for name, widget in self.text.items()})
        for name, widget in (("tool_call_parser", self.tool_call_parser), ("reasoning_parser", self.reasoning_parser)):
            if widget.value != AUTOMATIC:
                values[name] = "" if widget.value == NONE else widget.value
        return values

    def quietly(self) -> _Quiet:
        return _Quiet(self)

    @property
    def changing_itself(self) -> bool:
        """The change being observed is the form's own (a suggestion, a refilled list), not the user's."""
        return getattr(self._quiet, "depth", 0) > 0


class _Quiet:
    """While the form sets its own widgets, observers (called in the same thread) know it is not the user.
    Per thread: a user's change on the main thread is never taken for the planner's."""

    def __init__(self, form: LaunchForm) -> None:
        self.local = form._quiet

    def __enter__(self) -> None:
        self.local.depth = getattr(self.local, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        self.local.depth -= 1


def model_entries(summaries: Any) -> list[ModelEntry]:
    """The picker's entries from `Cluster.models()`, by name (case aside)."""
    return sorted(ModelEntry.from_rows(models_rows(summaries)), key=lambda entry: entry.name.lower())
