"""`%%llm --map ITEMS`: the cell is a template ({item}, {row.column}, {name}) sent once per item, at the
engine's full throughput; the answers land in a variable, in the items' shape. A thin face over
`chat.batch.map`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from ..chat.batch import map as map_prompts
from ..chat.prompt import Endpoint
from ..errors import HpcllmError
from ..lifecycle import Server

__all__ = ["map_cell"]


def map_cell(args: argparse.Namespace, cell: str, namespace: dict[str, Any], target: Server | Endpoint,
             functions: dict[str, Callable[..., Any]], request: dict[str, Any],
             fail: Callable[[str], NoReturn]) -> dict[str, Any]:
    """Run the map; its record (provenance and summary), also shown with the output's metadata."""
    name = args.map
    if name not in namespace:
        fail(f"%%llm --map {name}: there is no variable {name!r} in this notebook. Give the name of a list, a "
             "pandas Series or DataFrame, or any iterable of prompts.")
    schema = None
    if args.schema:
        if args.schema not in namespace:
            fail(f"%%llm --schema {args.schema}: there is no variable {args.schema!r}: define a pydantic model "
                 "class or a JSON schema dict first.")
        schema = namespace[args.schema]
    template = cell.strip("\n") or None
    names = {key: value for key, value in namespace.items() if key not in ("item", "row")}
    out = args.out or "answers"
    cached = not args.no_cache
    try:
        answers = map_prompts(
            namespace[name], target, template=template, system=args.system, model=args.model, schema=schema,
            response_format={"type": "json_object"} if args.format == "json" and schema is None else None,
            tools=list(functions.values()) or None, concurrency=args.concurrency, cache=cached,
            column=args.column, namespace=names, **request)
    except KeyboardInterrupt:
        fail("%%llm --map: interrupted; the requests in flight were cancelled." + (
            " The answers that came are kept: run the cell again to resume." if cached else ""))
    except HpcllmError as error:
        fail(str(error))
    except Exception as error:  # the items' own iteration, a value that will not be text: one line, no traceback
        fail(f"%%llm --map {name}: {type(error).__name__}: {str(error)[:300]}")
    namespace[out] = answers
    pandas = hasattr(answers, "attrs")
    record = answers.attrs["hpcllm"] if pandas else dict(
        answers.provenance, summary=answers.summary, failures=len(answers.failures),
        failed=[(str(f.label), f.error) for f in answers.failures[:20]])
    failed = record.get("failures") or 0
    where = (f"`{out}`" + (f" (column {args.column!r})" if hasattr(answers, "columns") else "")
             + (f"; {failed:,} failed (None): see `{out}.failures`" if failed and not pandas else
                (f"; {failed:,} failed (None): see `{out}.attrs['hpcllm']['failed']`" if failed else "")))
    how = f"`{out}.attrs['hpcllm']`" if pandas else f"`{out}.provenance`"
    _show(f"The answers are in {where}. How they were made: {how}.", record)
    return record


def _show(text: str, record: dict[str, Any]) -> None:
    """A line of text whose output metadata holds the run's record, so the saved notebook keeps it."""
    from IPython.display import display

    try:
        display({"text/plain": text}, raw=True, metadata={"jupyter_hpcllm": record})
    except (TypeError, ValueError):  # a value in the record that is not JSON: the line without it
        display({"text/plain": text}, raw=True)
