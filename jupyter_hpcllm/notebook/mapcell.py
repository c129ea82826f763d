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
             functions: dict[str, Callable[..., Any]], fail: Callable[[str], NoReturn]) -> None:
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
    request: dict[str, Any] = {}
    if args.temperature is not None:
        request["temperature"] = args.temperature
    if args.max_tokens is not None:
        request["max_tokens"] = args.max_tokens
    out = args.out or "answers"
    try:
        answers = map_prompts(
            namespace[name], target, template=template, system=args.system, model=args.model, schema=schema,
            response_format={"type": "json_object"} if args.format == "json" and schema is None else None,
            tools=list(functions.values()) or None, concurrency=args.concurrency, cache=not args.no_cache,
            column=args.column, namespace=names, **request)
    except KeyboardInterrupt:
        fail("%%llm --map: interrupted; the requests in flight were cancelled. The answers that came are kept: "
             "run the cell again to resume.")
    except HpcllmError as error:
        fail(str(error))
    namespace[out] = answers
    record = answers.attrs["hpcllm"] if hasattr(answers, "attrs") else dict(
        answers.provenance, summary=answers.summary, failures=len(answers.failures))
    failed = record.get("failures") or 0
    where = (f"`{out}`" + (f" (column {args.column!r})" if hasattr(answers, "columns") else "")
             + (f"; {failed:,} failed: see `{out}.failures`" if failed and not hasattr(answers, "attrs") else
                (f"; {failed:,} failed: see `{out}.attrs['hpcllm']['failed']`" if failed else "")))
    _show(f"The answers are in {where}. How they were made: `%hpcllm provenance`.", record)


def _show(text: str, record: dict[str, Any]) -> None:
    """A line of text whose output metadata holds the run's record, so the saved notebook keeps it."""
    from IPython.display import display

    display({"text/plain": text}, raw=True, metadata={"jupyter_hpcllm": record})
