"""Prompts over data at the engine's full throughput: `map` and `imap`.

The requests run on an asyncio loop in a thread of their own (a notebook's kernel already runs a loop in
the main thread), so the caller's thread only waits, shows progress and takes Ctrl-C. How many are in
flight follows the engine's /metrics (``pacing.next_limit``); the prompts are read lazily and at most
a window of answers waits to be handed out in order, so memory stays bounded however many items there
are. Every answer is kept on disk as it arrives (``answercache``): run the same map again after an
interruption or a kernel restart and only what has no answer yet is sent. Transient errors (connection
reset or refused, the SSH forward reconnecting, a 5xx, 429) are retried with backoff; any other failure
is the item's, collected, and never stops the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, HpcllmError, MapStopped
from .answercache import AnswerCache, answer_key, default_cache_path
from .batchinput import Answers, Template, items_of, messages_for, shaped
from .pacing import FIRST_LIMIT, next_limit
from .prompt import _delta_reasoning
from .provenance import Target, target_of
from .structured import Structure, structure_of
from .tools import call_tool, tool_schema

__all__ = ["AnswerStream", "BatchStatus", "Failure", "ItemResult", "imap", "map"]

_MAX_TOOL_ROUNDS = 10
_CEILING = 1024  # in-flight requests at most, whatever the engine takes
_LISTED = 20  # failures listed in a pandas result's attrs (pandas copies them often); all are its None values
_GIVE_UP_AFTER = 32  # items in a row that failed for want of a server: the server is gone, stop


@dataclass
class Failure:
    index: int  # position in the input
    label: Any  # the index label (a Series' or DataFrame's), or the position
    error: str
    text: str | None = None  # the answer, when it came but did not parse


@dataclass
class ItemResult:
    index: int
    label: Any
    value: Any = None  # the answer (text, parsed JSON or a pydantic object); None if it failed
    error: str | None = None
    text: str | None = None
    reasoning: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    lost: bool = False  # failed for want of a server (connection refused, reset)


@dataclass
class BatchStatus:
    """How far a map is: what the progress display shows and the summary keeps."""

    total: int | None
    done: int = 0  # answered (cached ones included)
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    limit: int = FIRST_LIMIT
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    interrupted: bool = False

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        sent = self.done + self.failed - self.cached
        if self.total is None or sent <= 0:
            return None
        left = self.total - self.done - self.failed
        return left * self.elapsed / sent

    def line(self) -> str:
        total = f"/{self.total:,}" if self.total is not None else ""
        parts = [f"{self.done + self.failed:,}{total} items"]
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.cached:
            parts.append(f"{self.cached:,} from the cache")
        parts.append(f"{self.tokens_per_second:,.0f} tok/s")
        parts.append(f"{self.in_flight} in flight")
        left = self.seconds_left
        if left is not None and self.ended is None:
            parts.append(f"{_duration(left)} left")
        return ", ".join(parts)

    def summary(self) -> str:
        answered = self.done - self.cached
        rate = answered / self.elapsed if self.elapsed > 0 else 0.0
        head = "Interrupted" if self.interrupted else "Done"
        return (f"{head}: {self.done + self.failed:,} items in {_duration(self.elapsed)} ({self.done:,} answered, "
                f"{self.cached:,} of them from the cache; {self.failed:,} failed); tokens in {self.prompt_tokens:,}, "
                f"out {self.completion_tokens:,}; {rate:,.1f} items/s, {self.tokens_per_second:,.0f} tok/s.")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _transient(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):  # refused, reset, timed out: the forward reconnecting too
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return isinstance(error, (ConnectionError, TimeoutError))


def _unreachable(error: BaseException) -> bool:
    """No server to answer: what, many times in a row, means it is gone (not a timeout, not a 5xx)."""
    import openai

    return isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError)


def _explain(error: BaseException) -> str:
    import openai

    if isinstance(error, openai.APIStatusError):
        body = error.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"the server answered {error.status_code}: {message or error.message}"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach the server ({error.__cause__ or error})"
    return f"{type(error).__name__}: {error}"


class _Repeats:
    """How many times each request was seen before in this run, kept in a private SQLite database that
    spills to a temporary file: exact for a million distinct prompts without holding them in memory."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")

    def count(self, key: str) -> int:
        row = self._db.execute("SELECT n FROM seen WHERE key = ?", (key,)).fetchone()
        before = int(row[0]) if row else 0
        self._db.execute("INSERT OR REPLACE INTO seen (key, n) VALUES (?, ?)", (key, before + 1))
        return before

    def close(self) -> None:
        self._db.close()


class _Run:
    """One map's requests on their own loop and thread; the caller takes results in order."""

    def __init__(self, target: Target, items: Iterator[tuple[Any, Any]], total: int | None, *,
                 build: Callable[[Any, Any], list[dict[str, Any]]], parameters: dict[str, Any],
                 key_parameters: dict[str, Any], structure: Structure,
                 functions: dict[str, Callable[..., Any]], cache: AnswerCache | None,
                 concurrency: int | None, retries: int, backoff: float, request_timeout: float) -> None:
        self.target = target
        self.items = items
        self.build = build
        self.parameters = parameters  # what each request carries
        self.key_parameters = key_parameters  # ... and what its answer is kept under (the tools' schemas too)
        self.fingerprint: dict[str, Any] = {}  # the engine's set-up, kept with each answer and checked on a hit
        self.structure = structure
        self.functions = functions
        self.tools = [tool_schema(f) for f in functions.values()]
        self.cache = cache
        self.fixed = concurrency
        self.retries = retries
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.status = BatchStatus(total, limit=concurrency or FIRST_LIMIT)
        self.window = max(4096, 4 * (concurrency or _CEILING))
        self._results: dict[int, ItemResult] = {}
        self._count: int | None = None  # items read, once all are
        self._consumed = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._lost_in_a_row = 0
        self._same_in_a_row = 0
        self._last_error: str | None = None
        self._cache_warned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None  # set when the feeder may look again: a slot freed, ...
        self._window_full = False  # the feeder waits for the caller to take answers
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcllm-map", daemon=True)

    # -- the caller's side
    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def results(self, tick: Callable[[], None] | None = None) -> Iterator[ItemResult]:
        """Results in input order as they are ready; `tick` is called at least every 0.25 s."""
        index = 0
        while True:
            with self._cond:
                while index not in self._results and self._error is None and \
                        (self._count is None or index < self._count):
                    if not self._thread.is_alive():  # a bug, not a hang: say so
                        self._error = HpcllmError(f"The map's requests ended without an answer for item {index}.",
                                                  "Run it again: what was answered is kept.")
                        break
                    self._cond.wait(0.25)
                    if tick is not None:
                        released = False
                        try:
                            self._cond.release()  # the callback runs with the loop free to deliver
                            released = True
                            tick()
                        finally:
                            if released:
                                self._cond.acquire()
                result = self._results.pop(index, None)
                if result is None:
                    if self._error is not None:
                        raise self._error
                    return
                self._consumed = index + 1
                wake = self._window_full
            if wake:
                self._wake()
            index += 1
            yield result

    def stop(self, wait: float = 10.0) -> None:
        """Cancel what is in flight (the engine sees each connection close, and aborts its request). A flag
        the loop checks, not only Task.cancel: Python 3.11's wait_for inside httpx can swallow a cancel."""
        self._stopping.set()
        self._wake()
        self._thread.join(wait)

    def _wake(self) -> None:
        loop, room = self._loop, self._room
        if loop is not None and room is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(room.set)

    # -- the loop's side
    def _run(self) -> None:
        try:
            asyncio.run(self._guarded())
        except BaseException as error:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    async def _guarded(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._started.set()
        client = self.target.async_client(self.request_timeout, _CEILING)
        tasks: set[asyncio.Task[None]] = set()
        pacer = asyncio.create_task(self._pace()) if self.fixed is None else None
        try:
            await self._feed(client, tasks)
            while tasks:
                self._check_stop()
                await self._wait_room()
            self._check_stop()
        except asyncio.CancelledError:
            finished = self._count is not None and self.status.done + self.status.failed >= self._count
            self.status.interrupted = not finished
            self._fail(KeyboardInterrupt())
        finally:
            pending = [*tasks, *([pacer] if pacer else [])]
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await client.close()  # every connection closed: the engine aborts what it was running
            if pending:
                await asyncio.wait(pending, timeout=10)
            if self.cache is not None:
                self.cache.close()  # here, in the only thread that uses it
            self.status.ended = time.monotonic()
            self.status.in_flight = 0

    def _check_stop(self) -> None:
        if self._stopping.is_set():
            raise asyncio.CancelledError

    async def _wait_room(self) -> None:
        assert self._room is not None
        self._room.clear()
        await self._room.wait()

    def _window_has_room(self, index: int) -> bool:
        with self._cond:
            self._window_full = index >= self._consumed + self.window
            return not self._window_full

    async def _feed(self, client: Any, tasks: set[asyncio.Task[None]]) -> None:
        seen = _Repeats()  # a prompt repeated (sampled again on purpose) is a request of its own
        try:
            await self._feed_items(client, tasks, seen)
        finally:
            seen.close()

    async def _feed_items(self, client: Any, tasks: set[asyncio.Task[None]], seen: _Repeats) -> None:
        count = 0
        for index, (label, item) in enumerate(self.items):
            self._check_stop()
            count = index + 1
            try:
                messages = self.build(item, label)
            except Exception as error:  # this item's prompt cannot be made (a missing field, a str() that fails)
                while not self._window_has_room(index):
                    await self._wait_room()
                    self._check_stop()
                message = error.args[0] if isinstance(error, HpcllmError) else f"{type(error).__name__}: {error}"
                self._deliver(ItemResult(index, label, error=f"its prompt cannot be made: {message}"))
                continue
            key = answer_key(self.target.model, messages, self.key_parameters)
            repeat = seen.count(key)
            key = f"{key}#{repeat}" if repeat else key
            kept = self.cache.get(key) if self.cache is not None else None
            if kept is not None and self.fingerprint and kept.get("engine") not in (None, self.fingerprint):
                kept = None  # answered by the same model name on an engine set up otherwise: ask again
            while not self._window_has_room(index) or (kept is None and self.status.in_flight >= self.status.limit):
                await self._wait_room()
                self._check_stop()
            if kept is not None:
                self._deliver(self._from_answer(index, label, kept, cached=True))
                if index % 64 == 0:
                    await asyncio.sleep(0)  # a long run of cached answers: let the answers in flight in
                continue
            self.status.in_flight += 1
            task = asyncio.create_task(self._one(client, index, label, key, messages))
            tasks.add(task)

            def ended(done: asyncio.Task[None]) -> None:
                tasks.discard(done)
                self.status.in_flight -= 1
                if self._room is not None:
                    self._room.set()

            task.add_done_callback(ended)
        with self._cond:
            self._count = count
            self._cond.notify_all()

    async def _pace(self) -> None:
        while True:
            # Four readings a second: from 16 the limit reaches 64 within half a second, 1024 in a second.
            await asyncio.sleep(0.25)
            reading = await asyncio.to_thread(self.target.load)
            if reading is not None:
                running, waiting = reading
                self.status.limit = next_limit(self.status.limit, running=running, waiting=waiting,
                                               in_flight=self.status.in_flight, ceiling=_CEILING)
                if self._room is not None:
                    self._room.set()

    async def _one(self, client: Any, index: int, label: Any, key: str, messages: list[dict[str, Any]]) -> None:
        """One item, to its end: every way out but cancellation delivers a result for it."""
        try:
            result = await self._answer(client, index, label, key, messages)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # a tool that raised SystemExit, a bug: the item's failure, not a hang
            result = ItemResult(index, label, error=f"{type(error).__name__}: {error}")
        self._deliver(result, lost=result.lost)

    async def _answer(self, client: Any, index: int, label: Any, key: str,
                      messages: list[dict[str, Any]]) -> ItemResult:
        attempt = 0
        while True:
            try:
                answer = await self._ask(client, messages)
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if _transient(error) and attempt < self._retries_for(error):
                    attempt += 1
                    self.status.retries += 1
                    await asyncio.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random()))
                    continue
                return ItemResult(index, label, error=_explain(error), lost=_unreachable(error))
        result = self._from_answer(index, label, answer, cached=False)
        if self.fingerprint:
            answer["engine"] = self.fingerprint
        if result.error is None and self.cache is not None:
            try:
                self.cache.put(key, answer)  # only a good answer is kept: a rerun asks again for the others
            except Exception as error:  # a full disk, a lock held too long: the answer still counts
                self._cache_problem(error)
        return result

    def _retries_for(self, error: Exception) -> int:
        import openai

        # A request that ran out of time most likely runs as long again: once more, not six times the GPUs.
        return min(1, self.retries) if isinstance(error, openai.APITimeoutError) else self.retries

    def _cache_problem(self, error: Exception) -> None:
        if not self._cache_warned:
            self._cache_warned = True
            warnings.warn(f"jupyter-hpcllm could not keep answers in its cache ({error}); the map goes on, but an "
                          "interrupted run would send them again.", RuntimeWarning, stacklevel=1)

    async def _ask(self, client: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        added: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = 0
        reasoning = ""
        for _ in range(_MAX_TOOL_ROUNDS):
            options: dict[str, Any] = dict(self.parameters, model=self.target.model, messages=messages + added)
            if self.tools:
                options["tools"] = self.tools
            completion = await client.chat.completions.create(**options)
            if completion.usage is not None:
                prompt_tokens += completion.usage.prompt_tokens or 0
                completion_tokens += completion.usage.completion_tokens or 0
            choice = completion.choices[0]
            message = choice.message
            reasoning += _delta_reasoning(message)
            calls = message.tool_calls or []
            if not calls or not self.functions:
                return {"text": message.content or "", "reasoning": reasoning or None,
                        "finish": choice.finish_reason, "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens}
            added.append({"role": "assistant", "content": message.content or None, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                              "arguments": c.function.arguments or ""}}
                for c in calls]})
            for call in calls:
                _, text = await asyncio.to_thread(call_tool, self.functions, call.function.name,
                                                  call.function.arguments or "")
                added.append({"role": "tool", "tool_call_id": call.id, "content": text})
        raise ValueError(f"the model still called tools after {_MAX_TOOL_ROUNDS} rounds")

    def _from_answer(self, index: int, label: Any, answer: dict[str, Any], *, cached: bool) -> ItemResult:
        text = str(answer.get("text") or "")
        result = ItemResult(index, label, text=text, reasoning=answer.get("reasoning"), cached=cached,
                            prompt_tokens=int(answer.get("prompt_tokens") or 0),
                            completion_tokens=int(answer.get("completion_tokens") or 0))
        cut = answer.get("finish") == "length"
        if cut and not text.strip():  # a reasoning model can spend every token on its reasoning
            result.error = "max_tokens ran out before the answer began (the reasoning took them all?): raise it"
            return result
        try:
            result.value = self.structure.read(text)
        except ValueError as error:
            result.error = f"{error}{' (cut by max_tokens)' if cut else ''}"
        return result

    def _deliver(self, result: ItemResult, *, lost: bool = False) -> None:
        status = self.status
        if result.error is None:
            status.done += 1
            status.cached += result.cached
            if not result.cached:  # a rerun's cached answers say nothing of the server now
                self._lost_in_a_row = self._same_in_a_row = 0
        else:
            status.failed += 1
            self._lost_in_a_row = self._lost_in_a_row + 1 if lost else 0
            alike = result.error.replace(repr(result.label), "")  # the same error, whichever the item
            same = alike == self._last_error and not result.text  # the server (or the template) refuses them all
            self._same_in_a_row = self._same_in_a_row + 1 if same else 1
            self._last_error = alike
        if not result.cached:
            status.prompt_tokens += result.prompt_tokens
            status.completion_tokens += result.completion_tokens
        with self._cond:
            self._results[result.index] = result
            self._cond.notify_all()
        resume = ("; run the same map again to resume: what was answered is kept" if self.cache is not None else "")
        if self._lost_in_a_row >= _GIVE_UP_AFTER:
            self._give_up(MapStopped(f"{self._lost_in_a_row} requests in a row could not reach the server "
                                     f"({result.error}); the map stopped.",
                                     f"Check the server (`%hpcllm status`){resume}."))
        elif self._same_in_a_row >= _GIVE_UP_AFTER:
            self._give_up(MapStopped(f"The last {self._same_in_a_row} requests all failed alike ({result.error}); "
                                     "the map stopped rather than send the rest to the same end.",
                                     f"Fix what the message says (the model's name, the key, the options){resume}."))

    def _give_up(self, error: MapStopped) -> None:
        self._fail(error)
        self._stopping.set()
        if self._room is not None:
            self._room.set()


def imap(prompts: Any, server: Any, *, template: str | None = None, system: str | None = None,
         model: str | None = None, temperature: float | None = None, top_p: float | None = None,
         max_tokens: int | None = None, seed: int | None = None, schema: Any = None,
         response_format: dict[str, Any] | None = None, tools: list[Callable[..., Any]] | None = None,
         extra_body: dict[str, Any] | None = None, concurrency: int | None = None, cache: Any = True,
         retries: int = 6, backoff: float = 0.5, request_timeout: float = 600.0,
         namespace: dict[str, Any] | None = None,
         on_status: Callable[[BatchStatus], None] | None = None) -> AnswerStream:
    """Answers one by one (ItemResult: index, label, value, error, text, tokens), in the order of the
    prompts, as they are ready: for more items than fit in memory (a generator in, results out as they
    come). The arguments are `map`'s. Leaving a `with` block (or `.close()`) cancels what is in flight:

        with hpc.imap(rows(), server, template="...") as answers:
            for answer in answers:
                write(answer.index, answer.value)
    """
    run, _ = _prepare(prompts, server, template=template, system=system, model=model, temperature=temperature,
                      top_p=top_p, max_tokens=max_tokens, seed=seed, schema=schema, response_format=response_format,
                      tools=tools, extra_body=extra_body, concurrency=concurrency, cache=cache, retries=retries,
                      backoff=backoff, request_timeout=request_timeout, namespace=namespace)
    return AnswerStream(_drive(run, on_status))


class AnswerStream(Iterator[ItemResult]):
    """imap's answers: an iterator that is also a context manager, closed (its requests cancelled) on
    leaving the block, even when an interrupt in the loop's body leaves it."""

    def __init__(self, results: Iterator[ItemResult]) -> None:
        self._results = results

    def __next__(self) -> ItemResult:
        return next(self._results)

    def close(self) -> None:
        close = getattr(self._results, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drive(run: _Run, on_status: Callable[[BatchStatus], None] | None) -> Iterator[ItemResult]:
    tick = (lambda: on_status(run.status)) if on_status is not None else None
    try:
        run.start()
        yield from run.results(tick)
    finally:
        run.stop()
        if on_status is not None:
            on_status(run.status)


def _prepare(prompts: Any, server: Any, *, template: str | None, system: str | None, model: str | None,
             temperature: float | None, top_p: float | None, max_tokens: int | None, seed: int | None,
             schema: Any, response_format: dict[str, Any] | None, tools: list[Callable[..., Any]] | None,
             extra_body: dict[str, Any] | None, concurrency: int | None, cache: Any, retries: int,
             backoff: float, request_timeout: float,
             namespace: dict[str, Any] | None) -> tuple[_Run, Callable[[], dict[str, Any]]]:
    target = target_of(server, model)
    if concurrency is not None and not (isinstance(concurrency, int) and 1 <= concurrency <= _CEILING):
        raise ConfigError(f"concurrency takes 1 to {_CEILING} requests, not {concurrency!r}.",
                          "Leave it out to follow what the engine can take.")
    if not (isinstance(retries, int) and 0 <= retries <= 100):
        raise ConfigError(f"retries takes 0 to 100, not {retries!r}.")
    structure = structure_of(schema, response_format)
    parameters = {key: value for key, value in {
        "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
        "response_format": structure.response_format, "extra_body": extra_body}.items() if value is not None}
    functions = {}
    for function in tools or []:
        name = getattr(function, "__name__", None)
        if not callable(function) or not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"tools takes Python functions with a name, not {type(function).__name__}.",
                              "Define the tool with def (a functools.partial or a lambda has no name the model "
                              "could call).")
        functions[name] = function
    keyed = dict(parameters, tools=[tool_schema(f) for f in functions.values()]) if functions else parameters
    items, total = items_of(prompts)
    compiled = Template(template, namespace) if template is not None else None
    if compiled is not None and not compiled.uses_item:
        raise ConfigError("The template has no {item} (or {item.field}, {row.column}): every item would get the "
                          "same prompt.", "Put {item} where each item's text goes, e.g. 'Summarise: {item}'.")
    answers = None if cache is False or cache is None else AnswerCache(default_cache_path() if cache is True else cache)
    run = _Run(target, items, total, build=lambda item, label: messages_for(item, label, compiled, system),
               parameters=parameters, key_parameters=keyed, structure=structure, functions=functions, cache=answers,
               concurrency=concurrency,
               retries=retries, backoff=backoff, request_timeout=request_timeout)
    run.fingerprint = target.fingerprint()
    return run, lambda: target.provenance(parameters, system=system, template=template)


def map(prompts: Any, server: Any, *, template: str | None = None, system: str | None = None,
        model: str | None = None, temperature: float | None = None, top_p: float | None = None,
        max_tokens: int | None = None, seed: int | None = None, schema: Any = None,
        response_format: dict[str, Any] | None = None, tools: list[Callable[..., Any]] | None = None,
        extra_body: dict[str, Any] | None = None, concurrency: int | None = None, cache: Any = True,
        retries: int = 6, backoff: float = 0.5, request_timeout: float = 600.0, column: str = "answer",
        progress: bool = True, namespace: dict[str, Any] | None = None,
        on_status: Callable[[BatchStatus], None] | None = None) -> Any:
    """Send one prompt per item to `server` and return the answers in the same order and shape.

    prompts: a list (or any iterable) of prompts or message lists, a pandas Series, or a DataFrame (with a
        template). Answers come back as a list (with `.provenance`, `.failures`, `.summary`), a Series on
        the same index, or the DataFrame with a new `column`; a Series' or DataFrame's `.attrs["hpcllm"]`
        holds the same record.
    server: a Server (`hpc.up(...)`), an openai.OpenAI client (with model=), or a chat Endpoint.
    template: the prompt made from each item: "{item}", "{item.field}", "{row.column}", "{row['a b']}".
    system, temperature, top_p, max_tokens, seed: as in the OpenAI API; extra_body: engine-specific fields.
    schema: a pydantic model class or a JSON schema: each answer is parsed and validated (else
        response_format, as the API takes it). A failed item is None in the answers and listed in
        `.failures` (with its text); a rerun asks again for those.
    tools: Python functions the model may call (run here, in a thread).
    concurrency: requests in flight; default: as many as the engine runs, from its /metrics.
    cache: True (the user cache directory), a path, or False. Rerun after an interruption to resume.
    retries, backoff: how often, and from how many seconds up, a transient error is retried.
    progress: show a progress bar (a notebook's display, or a terminal line) and the summary at the end.
    """
    run, record_of = _prepare(prompts, server, template=template, system=system, model=model,
                               temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, schema=schema,
                               response_format=response_format, tools=tools, extra_body=extra_body,
                               concurrency=concurrency, cache=cache, retries=retries, backoff=backoff,
                               request_timeout=request_timeout, namespace=namespace)
    provenance = record_of()
    view = None
    if progress:
        from .batchprogress import BatchProgress

        view = BatchProgress(run.status.total)

    def report(status: BatchStatus) -> None:
        if view is not None:
            view.update(status)
        if on_status is not None:
            on_status(status)

    values: list[Any] = []
    failures: list[Failure] = []
    try:
        for result in _drive(run, report):
            values.append(result.value)
            if result.error is not None:
                failures.append(Failure(result.index, result.label, result.error, result.text))
    finally:
        if view is not None:
            view.close(run.status)
    summary = run.status.summary()
    record = dict(provenance, summary=summary, failures=len(failures))

    def attach(result: Any) -> None:
        if isinstance(result, Answers):
            result.provenance, result.failures, result.summary = provenance, failures, summary
        else:  # pandas: its attrs (an attribute would be taken for a column); pandas copies them often: kept short
            result.attrs["hpcllm"] = dict(record, failed=[(str(f.label), f.error) for f in failures[:_LISTED]])

    return shaped(prompts, values, column, attach)
