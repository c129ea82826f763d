"""What a map reads and gives back: the items of a list, a pandas Series or DataFrame (pandas only when
it is passed), or any iterable; a template that makes each item's prompt; the answers in the same shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from ..errors import ConfigError

__all__ = ["Template", "items_of", "kind_of", "messages_for", "shaped"]

# {{text}}: a literal {text}; {item}, {item.field}, {row.column}, {row['a column']}: the item's; {name}: a
# variable of the namespace (resolved once). Any other brace stays as written.
_LOOSE = re.compile(r"\{\s*(?:item|row)\b[^{}]*\}")  # anything that looks meant for the item
_FIELD = re.compile(r"\{\{([^{}]*)\}\}"
                    r"|\{(item|row)(?:\.([A-Za-z_]\w*)|\[(?:'([^']*)'|\"([^\"]*)\"|(-?\d+))\])?\}"
                    r"|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Template:
    """A prompt with the item's fields in it, split once into text and fields."""

    def __init__(self, text: str, namespace: Mapping[str, Any] | None = None) -> None:
        self.text = text
        self.parts: list[str | tuple[str, str | int | None]] = []
        namespace = namespace or {}
        position = 0
        matched = [match.span() for match in _FIELD.finditer(text)]
        for loose in _LOOSE.finditer(text):
            if not any(start <= loose.start() and loose.end() <= end for start, end in matched):
                raise ConfigError(
                    f"{loose.group(0)} in the template is not a field it can fill.",
                    "Write {item}, {item.field}, {row.column}, or {row['a column']} for a name with spaces, "
                    "dashes or other letters; {{...}} for literal braces.")
        for match in _FIELD.finditer(text):
            self._text(text[position:match.start()])
            position = match.end()
            literal, whole, attribute, single, double, number, name = match.groups()
            if literal is not None:
                self._text("{" + literal + "}")
            elif whole is not None:
                key = attribute or single or double
                self.parts.append((whole, key if key is not None else (int(number) if number else None)))
            elif name in namespace:
                try:
                    self._text(str(namespace[name]))
                except Exception as error:  # the notebook's value cannot be text: its own bug, said as such
                    raise ConfigError(f"{{{name}}} in the template cannot be turned into text: str({name}) raised "
                                      f"{type(error).__name__}.", f"Write {{{{{name}}}}} for a literal {{{name}}}, or "
                                      "convert it first.") from None
            else:
                self._text(match.group(0))
        self._text(text[position:])
        self.uses_item = any(isinstance(part, tuple) for part in self.parts)

    def _text(self, text: str) -> None:
        if text:
            self.parts.append(text)

    def fill(self, item: Any, label: Any) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, key = part
            out.append(str(item if key is None else _field(item, key, name, label)))
        return "".join(out)


def _field(item: Any, key: str | int, name: str, label: Any) -> Any:
    try:
        if isinstance(key, int) or isinstance(item, Mapping) or (
                hasattr(item, "__getitem__") and not isinstance(item, str) and not hasattr(item, "_fields")):
            return item[key]
        return getattr(item, key)
    except (KeyError, IndexError, AttributeError, TypeError):
        shown = f"{name}.{key}" if isinstance(key, str) and key.isidentifier() else f"{name}[{key!r}]"
        raise ConfigError(f"{{{shown}}} in the template: item {label!r} has no {key!r}.",
                          "Check the column or field name (for a DataFrame: list(df.columns)).") from None


def kind_of(data: Any) -> str:
    """'dataframe', 'series' or 'iterable', without importing pandas."""
    module = type(data).__module__ or ""
    if module.startswith("pandas"):
        name = type(data).__name__
        if name == "DataFrame":
            return "dataframe"
        if name == "Series":
            return "series"
    return "iterable"


def items_of(data: Any) -> tuple[Iterator[tuple[Any, Any]], int | None]:
    """(label, item) pairs, lazily, and how many there are (None: an iterator that does not say)."""
    kind = kind_of(data)
    if kind == "dataframe":
        # A dict per row, made as it is sent, each value of its column's own type (iterrows would turn the
        # ints of a frame that also has floats into floats: {row.year} would read 2001.0).
        columns = list(data.columns)
        rows = (dict(zip(columns, values, strict=True)) for values in data.itertuples(index=False, name=None))
        return zip(data.index, rows, strict=True), len(data)
    if kind == "series":
        return iter(data.items()), len(data)
    if isinstance(data, (str, bytes)):
        raise ConfigError("A map takes many prompts (a list, a pandas Series or DataFrame, any iterable), not one "
                          "string.", "For one prompt use %%llm or client.chat.completions.create.")
    if isinstance(data, Mapping):
        raise ConfigError("A map over a dict is ambiguous (its keys or its values?).",
                          "Pass list(d.values()), or a pandas Series (pd.Series(d)) to keep the keys as its index.")
    if not isinstance(data, Iterable):
        raise ConfigError(f"A map takes a list, a pandas Series or DataFrame, or any iterable, not "
                          f"{type(data).__name__}.", "Wrap a single prompt in a list.")
    size = len(data) if isinstance(data, Sized) else None
    return enumerate(data), size


def messages_for(item: Any, label: Any, template: Template | None,
                 system: str | None) -> list[dict[str, Any]]:
    """The conversation sent for one item."""
    head = [{"role": "system", "content": system}] if system else []
    if template is not None:
        return [*head, {"role": "user", "content": template.fill(item, label)}]
    if isinstance(item, str):
        return [*head, {"role": "user", "content": item}]
    if isinstance(item, list) and item and all(isinstance(m, Mapping) and "role" in m for m in item):
        return [*head, *(dict(m) for m in item)]
    raise ConfigError(f"Item {label!r} is a {type(item).__name__}: without a template each item must be a "
                      "prompt (a string) or a list of messages ({'role': ..., 'content': ...}).",
                      "Give a template, e.g. template='Summarise: {item}' (for a DataFrame: '{row.abstract}').")


def shaped(data: Any, values: list[Any], column: str, attach: Callable[[Any], None]) -> Any:
    """The answers in the input's shape: a Series on the same index, the DataFrame with a new column, else
    a list. `attach` puts the run's record on what is returned."""
    kind = kind_of(data)
    if kind == "series":
        import pandas  # type: ignore[import-untyped]

        result = pandas.Series(values, index=data.index, name=column, dtype=object)
    elif kind == "dataframe":
        result = data.copy()
        result[column] = values
    else:
        result = Answers(values)
    attach(result)
    return result


class Answers(list[Any]):
    """A map's answers, in the order of its prompts, with the run's record: `.provenance` (model, engine,
    image, parsers, sampling, job, time), `.failures` (index, error, answer text) and `.summary`."""

    provenance: dict[str, Any]
    failures: list[Any]
    summary: Any
