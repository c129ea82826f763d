"""Prompts over data (`jupyter_hpcllm.map` / `imap`) against the engine double, run locally (no cluster):
order and shapes, structured output, the cache that resumes, retries, per-item failures, cancellation
that leaves nothing running, and the pace that follows the engine's /metrics."""

from __future__ import annotations

import json
import time

import openai
import pandas as pd
import pydantic
import pytest
from test_engine_double import KEY, free_port, model, start, vllm_argv, wait_ready  # noqa: F401 (model: fixture)

import jupyter_hpcllm as hpc
from jupyter_hpcllm.chat.answercache import AnswerCache
from jupyter_hpcllm.chat.batchinput import Template
from jupyter_hpcllm.chat.pacing import next_limit
from jupyter_hpcllm.errors import ConfigError


class Double:
    def __init__(self, running, log):
        self.running, self.log = running, log
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{running.port}/v1", api_key=KEY, max_retries=0)

    def metrics(self) -> dict[str, float]:
        text = self.running.request("/metrics", key=None)[1]
        return {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines() if not line.startswith("#")}

    def requested(self) -> list[str]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def settle(self, seconds: float = 5.0) -> dict[str, float]:
        """The metrics once nothing runs or waits (or as they are after `seconds`)."""
        deadline = time.monotonic() + seconds
        while True:
            numbers = self.metrics()
            if (numbers["vllm:num_requests_running"] == 0 and numbers["vllm:num_requests_waiting"] == 0) \
                    or time.monotonic() > deadline:
                return numbers
            time.sleep(0.05)


@pytest.fixture
def double(tmp_path, model):  # noqa: F811
    started = []

    def make(max_num_seqs: int = 16, extra: tuple[str, ...] = (), **settings) -> Double:
        port = free_port()
        log = tmp_path / f"requests-{port}.log"
        process = start(tmp_path, "vllm", vllm_argv(model, port, "--max-num-seqs", str(max_num_seqs),
                                                               "--reasoning-parser", "qwen3", *extra),
                        env={"VLLM_API_KEY": KEY}, request_log=log, **settings)
        started.append(process)
        return Double(wait_ready(process, port), log)

    yield make
    for process in started:
        process.terminate()
        process.wait(10)


def run_map(double: Double, prompts, tmp_path, **options):
    options.setdefault("cache", tmp_path / "answers.sqlite3")
    options.setdefault("progress", False)
    return hpc.map(prompts, double.client, model="Qwen3-8B", **options)


# --- order and shapes ----------------------------------------------------------------------------------


def test_answers_come_back_in_order_as_a_list_with_the_run_record(double, tmp_path):
    engine = double(max_num_seqs=8, token_delay=0.002)
    prompts = [f"prompt {i} " + "x " * (i % 7) for i in range(120)]  # answers of different lengths finish out of order
    answers = run_map(engine, prompts, tmp_path, temperature=0.2, max_tokens=64)
    assert list(answers) == [f"Echo: {p}" for p in prompts]
    assert answers.failures == []
    assert answers.provenance["model"] == "Qwen3-8B"
    assert answers.provenance["sampling"] == {"temperature": 0.2, "max_tokens": 64}
    assert answers.provenance["time"].endswith("+00:00")
    assert "120 items" in answers.summary and "0 failed" in answers.summary
    assert sorted(engine.requested()) == sorted(prompts)  # each sent once


def test_a_series_keeps_its_index_and_a_dataframe_gains_a_column(double, tmp_path):
    engine = double()
    series = pd.Series(["alpha", "beta", "gamma"], index=["a", "b", "c"])
    answers = run_map(engine, series, tmp_path, template="Name: {item}")
    assert isinstance(answers, pd.Series) and list(answers.index) == ["a", "b", "c"]
    assert list(answers) == ["Echo: Name: alpha", "Echo: Name: beta", "Echo: Name: gamma"]
    assert answers.attrs["hpcllm"]["model"] == "Qwen3-8B"

    frame = pd.DataFrame({"title": ["T1", "T2"], "year": [2001, 2002]}, index=[10, 20])
    labelled = run_map(engine, frame, tmp_path, template="{row.title} ({row['year']})", column="label")
    assert list(labelled.columns) == ["title", "year", "label"] and list(labelled.index) == [10, 20]
    assert list(labelled["label"]) == ["Echo: T1 (2001)", "Echo: T2 (2002)"]
    assert "label" not in frame.columns  # the input is left as it was


def test_message_lists_and_a_generator_of_prompts(double, tmp_path):
    engine = double()
    conversations = [[{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": f"second {i}"}] for i in range(3)]
    assert list(run_map(engine, conversations, tmp_path, system="Be brief.")) == [f"Echo: second {i}" for i in range(3)]
    generated = run_map(engine, (f"g{i}" for i in range(5)), tmp_path)
    assert list(generated) == [f"Echo: g{i}" for i in range(5)]


def test_templates_fill_fields_and_keep_other_braces():
    template = Template("{item.name} {row} {{item}} {x} {unknown} {'json': 1}", {"x": 42})
    assert template.fill({"name": "N"}, 0) == "N {'name': 'N'} {item} 42 {unknown} {'json': 1}"
    with pytest.raises(ConfigError, match=r"item 3 has no 'missing'"):
        Template("{row.missing}").fill({"present": 1}, 3)
    for loose in ("{row.first-name}", "{item.a.b}", "{ item }", "{row.Ölwert}"):
        with pytest.raises(ConfigError, match="not a field it can fill"):
            Template(f"x {loose} y")
    assert Template("{row['first-name']}").fill({"first-name": "Ada"}, 0) == "Ada"


def test_a_template_without_the_item_and_a_broken_schema_are_refused_before_sending(double, tmp_path):
    engine = double()
    with pytest.raises(ConfigError, match="no {item}"):
        run_map(engine, ["a", "b"], tmp_path, template="the same prompt for all")
    with pytest.raises(ConfigError, match="JSON schema is not valid"):
        run_map(engine, ["a"], tmp_path, schema={"type": "str"})
    assert engine.requested() == []


def test_dataframe_columns_keep_their_types_in_the_prompt(double, tmp_path):
    engine = double()
    frame = pd.DataFrame({"year": [2001, 2002], "score": [0.5, 1.5]})
    answers = run_map(engine, frame, tmp_path, template="{row.year}: {row.score}")
    assert list(answers["answer"]) == ["Echo: 2001: 0.5", "Echo: 2002: 1.5"]


def test_a_repeated_prompt_is_asked_each_time_and_each_answer_kept(double, tmp_path):
    engine = double()
    prompts = ["same", "other", "same", "same"]
    answers = run_map(engine, prompts, tmp_path, temperature=1.0)
    assert list(answers) == [f"Echo: {p}" for p in prompts]
    assert sorted(engine.requested()) == sorted(prompts)  # four requests
    run_map(engine, prompts, tmp_path, temperature=1.0)
    assert len(engine.requested()) == 4  # the rerun: all four from the cache


def test_a_tool_that_exits_fails_its_item_and_the_map_ends(double, tmp_path):
    engine = double(extra=("--enable-auto-tool-choice", "--tool-call-parser", "hermes"))
    started = []

    def weigh(grams: int) -> int:
        """Weigh something."""
        started.append(grams)
        raise SystemExit(3)

    answers = run_map(engine, ["call weigh grams=5", "plain"], tmp_path, tools=[weigh])
    assert started == [5] and answers[0] is None and answers[1] == "Echo: plain"
    assert "SystemExit" in answers.failures[0].error


def test_a_cache_that_cannot_be_written_warns_and_the_answers_still_come(double, tmp_path, monkeypatch):
    import sqlite3

    engine = double()

    def locked(self, key, answer):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(AnswerCache, "put", locked)
    with pytest.warns(RuntimeWarning, match="could not keep answers"):
        answers = run_map(engine, ["a", "b"], tmp_path)
    assert list(answers) == ["Echo: a", "Echo: b"]


def test_input_it_cannot_map_is_refused_in_one_sentence(double, tmp_path):
    engine = double()
    for bad, said in (("one prompt", "not one string"), ({"a": 1}, "ambiguous"), (42, "not int")):
        with pytest.raises(ConfigError, match=said):
            run_map(engine, bad, tmp_path)
    mixed = run_map(engine, ["fine", 7], tmp_path)  # one item that is no prompt fails alone
    assert mixed[0] == "Echo: fine" and mixed[1] is None and "without a template" in mixed.failures[0].error
    with pytest.raises(ConfigError, match="concurrency"):
        run_map(engine, ["a"], tmp_path, concurrency=0)
    assert engine.requested() == ["fine"]


# --- structured output ---------------------------------------------------------------------------------


class Label(pydantic.BaseModel):
    text: str
    words: int


def test_a_pydantic_model_gives_validated_objects_and_cut_answers_fail_alone(double, tmp_path):
    engine = double()
    prompts = ["short", "a much longer prompt that the token limit cuts", "fine"]
    answers = run_map(engine, prompts, tmp_path, schema=Label, max_tokens=6)
    assert answers[0] == Label(text="short", words=1) and answers[2] == Label(text="fine", words=1)
    assert answers[1] is None
    (failure,) = answers.failures
    assert failure.index == 1 and "not valid JSON" in failure.error and "cut by max_tokens" in failure.error
    assert failure.text.startswith('{"text": "a much')
    # the failed item is asked again by a rerun (its cut answer was not kept); the others come from the cache
    before = len(engine.requested())
    again = run_map(engine, prompts, tmp_path, schema=Label, max_tokens=6)
    assert again[0] == answers[0] and len(engine.requested()) == before + 1


def test_a_json_schema_gives_dicts_checked_against_it(double, tmp_path):
    engine = double()
    schema = {"type": "object", "properties": {"topic": {"type": "string"}, "score": {"type": "number"},
                                               "tags": {"type": "array", "items": {"enum": ["bio", "chem"]}}},
              "required": ["topic", "score"]}
    answers = run_map(engine, ["cells divide"], tmp_path, schema=schema)
    assert answers[0] == {"topic": "cells divide", "score": 1.0, "tags": ["bio"]}
    strict = dict(schema, properties=dict(schema["properties"], score={"type": "number", "maximum": 0.5}))
    refused = run_map(engine, ["cells divide"], tmp_path, response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": strict}})
    assert refused[0] is None and "does not fit the schema" in refused.failures[0].error


# --- never lose work -----------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_and_no_answered_item_is_sent_again(double, tmp_path):
    engine = double(max_num_seqs=4, token_delay=0.05)
    prompts = [f"item {i} " + "w " * (20 if i >= 6 else 0) for i in range(60)]  # past the first six: 1.1 s each
    cache = tmp_path / "answers.sqlite3"
    first = []
    with pytest.raises(KeyboardInterrupt):
        with hpc.imap(prompts, engine.client, model="Qwen3-8B", cache=cache) as results:
            for result in results:
                first.append(result)
                if len(first) == 6:
                    closing = time.monotonic()
                    raise KeyboardInterrupt  # in the loop's body: leaving the block cancels what is in flight
    assert time.monotonic() - closing < 0.8  # at once, not once the requests in flight (1.1 s each) end
    assert [r.value for r in first] == [f"Echo: {p}" for p in prompts[:6]]
    numbers = engine.settle(0.3)  # far less than a request takes: it was aborted, not left to finish
    assert numbers["vllm:num_requests_running"] == 0 and numbers["vllm:num_requests_waiting"] == 0
    kept = len(AnswerCache(cache))
    assert 6 <= kept < 60
    sent_before = len(engine.requested())

    answers = run_map(engine, prompts, tmp_path, cache=cache)
    assert list(answers) == [f"Echo: {p}" for p in prompts]
    resent = engine.requested()[sent_before:]
    assert len(resent) == len(set(resent)) == 60 - kept  # only what had no answer, each once
    assert f"{kept} from the cache" in answers.summary or f"{kept:,} of them from the cache" in answers.summary


def test_ctrl_c_cancels_what_is_in_flight_and_the_engine_runs_nothing_after(double, tmp_path):
    engine = double(max_num_seqs=8, token_delay=0.05)
    seen = []
    interrupted_at = []

    def interrupt(status):
        seen.append(status.done)
        if status.done >= 3:
            interrupted_at.append(time.monotonic())
            raise KeyboardInterrupt  # where a SIGINT lands: in the waiting caller's thread

    with pytest.raises(KeyboardInterrupt):
        run_map(engine, [f"slow {i} " + "w " * (1 if i < 3 else 40) for i in range(64)], tmp_path,
                on_status=interrupt)
    assert time.monotonic() - interrupted_at[0] < 1.0  # at once, not once the requests in flight (2 s each) end
    numbers = engine.settle(0.3)  # the long ones take 2 s: aborted, not left to finish
    assert numbers["vllm:num_requests_running"] == 0 and numbers["vllm:num_requests_waiting"] == 0
    assert numbers["vllm:request_success_total"] <= seen[-1] + 2


def test_a_real_sigint_while_the_map_waits_cancels_it(double, tmp_path, sigint_raises):
    import _thread
    import threading

    engine = double(max_num_seqs=8, token_delay=0.05)
    timer = threading.Timer(0.6, _thread.interrupt_main)  # what the notebook's stop button (or Ctrl-C) sends
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_map(engine, [f"slow {i} " + "w " * 40 for i in range(64)], tmp_path)
    assert time.monotonic() - started < 2.0  # the first answers would take 2 s: it did not wait for them
    numbers = engine.settle(0.3)
    assert numbers["vllm:num_requests_running"] == 0 and numbers["vllm:num_requests_waiting"] == 0


def test_the_progress_line_and_the_summary():
    import io

    from jupyter_hpcllm.chat.batch import BatchStatus
    from jupyter_hpcllm.chat.batchprogress import BatchProgress

    out = io.StringIO()
    view = BatchProgress(10, rich=False, stream=out, interval=0.0)
    status = BatchStatus(10, done=3, failed=1, cached=1, completion_tokens=300, in_flight=4)
    status.started -= 10.0
    view.update(status)
    line = out.getvalue()
    assert "4/10 items" in line and "1 failed" in line and "1 from the cache" in line and "in flight" in line
    assert "30 tok/s" in line and "left" in line  # 300 tokens in 10 s; 6 items to go at 3 per 10 s
    status.ended = time.monotonic()
    view.close(status)
    assert out.getvalue().rstrip().splitlines()[-1].startswith("Interrupted" if status.interrupted else "Done: 4 items")
    assert "<progress" in BatchProgress(10, rich=False).html(status)


def test_transient_errors_are_retried_and_every_item_answered(double, tmp_path):
    engine = double(flaky=3)  # every third request: a 500, or the connection reset with no answer
    statuses = []
    answers = run_map(engine, [f"q{i}" for i in range(30)], tmp_path, backoff=0.01, on_status=statuses.append)
    assert list(answers) == [f"Echo: q{i}" for i in range(30)] and answers.failures == []
    assert statuses[-1].retries >= 10


def test_errors_that_are_not_transient_fail_their_item_only(double, tmp_path):
    engine = double()
    statuses = []
    answers = run_map(engine, ["a", "b", "c"], tmp_path, on_status=statuses.append, extra_body={
        "response_format": {"type": "xml"}})
    assert list(answers) == [None, None, None]
    assert [f.index for f in answers.failures] == [0, 1, 2]
    assert all("answered 400" in failure.error and "response_format" in failure.error for failure in answers.failures)
    assert statuses[-1].retries == 0 and statuses[-1].failed == 3  # a 400 is not retried


def test_a_server_that_is_gone_stops_the_map_with_what_to_do(tmp_path):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="x", max_retries=0)
    with pytest.raises(hpc.errors.HpcllmError, match="could not reach the server"):
        hpc.map([f"p{i}" for i in range(100)], client, model="m", cache=False, progress=False, retries=1,
                backoff=0.001)


# --- the pace -------------------------------------------------------------------------------------------


def test_the_pace_rises_when_the_engine_runs_more_than_the_first_guess(double, tmp_path):
    engine = double(max_num_seqs=48, token_delay=0.01)
    statuses = []
    run_map(engine, [f"p{i} " + "w " * 30 for i in range(600)], tmp_path, on_status=statuses.append)
    assert max(status.limit for status in statuses) >= 48


def test_the_pace_comes_down_to_what_the_engine_runs_and_no_further(double, tmp_path):
    engine = double(max_num_seqs=8, token_delay=0.01)
    statuses = []
    run_map(engine, [f"p{i} " + "w " * 30 for i in range(200)], tmp_path, on_status=statuses.append)
    steady = sorted(status.limit for status in statuses[len(statuses) // 4: 3 * len(statuses) // 4])
    assert 8 <= steady[len(steady) // 2] <= 10  # the engine's 8 and a small queue
    assert not statuses[-1].interrupted


def test_next_limit_doubles_until_requests_wait_then_holds_what_runs():
    assert next_limit(16, running=16, waiting=0, in_flight=16, ceiling=1024) == 32
    assert next_limit(16, running=5, waiting=0, in_flight=16, ceiling=1024) == 16  # the engine has not taken them
    assert next_limit(10, running=8, waiting=0, in_flight=10, ceiling=1024) == 10  # two in transit, not spare room
    assert next_limit(64, running=64, waiting=30, in_flight=94, ceiling=1024) == 72
    assert next_limit(512, running=512, waiting=0, in_flight=512, ceiling=600) == 600
    assert next_limit(16, running=None, waiting=None, in_flight=16, ceiling=1024) == 16
    assert next_limit(16, running=0, waiting=3, in_flight=16, ceiling=1024) == 2


# --- after the second review ---------------------------------------------------------------------------


def test_requests_that_all_fail_alike_stop_the_map(double, tmp_path):
    engine = double()
    with pytest.raises(hpc.errors.MapStopped, match="failed alike"):
        hpc.map([f"p{i}" for i in range(400)], engine.client, model="no-such-model", cache=False, progress=False)
    assert engine.metrics()["vllm:request_success_total"] == 0


def test_an_item_whose_prompt_cannot_be_made_fails_alone(double, tmp_path):
    engine = double()
    answers = run_map(engine, [{"x": 1}, {"y": 2}, {"x": 3}], tmp_path, template="value {item.x}")
    assert answers[0] == "Echo: value 1" and answers[1] is None and answers[2] == "Echo: value 3"
    assert "its prompt cannot be made" in answers.failures[0].error and "no 'x'" in answers.failures[0].error


def test_an_answer_cut_before_it_began_is_a_failure_not_kept():
    from jupyter_hpcllm.chat.batch import _Run
    from jupyter_hpcllm.chat.structured import structure_of

    run = _Run.__new__(_Run)
    run.structure = structure_of()
    result = run._from_answer(0, 0, {"text": "", "finish": "length", "completion_tokens": 20}, cached=False)
    assert result.error is not None and "max_tokens ran out" in result.error
    assert run._from_answer(0, 0, {"text": "ok", "finish": "stop"}, cached=False).value == "ok"


def test_a_cache_that_cannot_be_opened_is_refused_in_one_sentence(double, tmp_path):
    engine = double()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="cannot be used"):
        run_map(engine, ["a"], tmp_path, cache=tmp_path / "a-file" / "answers.sqlite3")


def test_answers_kept_from_an_engine_set_up_otherwise_are_asked_again(double, tmp_path, monkeypatch):
    from jupyter_hpcllm.chat.provenance import Target

    engine = double()
    monkeypatch.setattr(Target, "fingerprint", lambda self: {"reasoning_parser": "qwen3"})
    run_map(engine, ["a", "b"], tmp_path)
    run_map(engine, ["a", "b"], tmp_path)
    assert len(engine.requested()) == 2  # the same engine: from the cache
    monkeypatch.setattr(Target, "fingerprint", lambda self: {"reasoning_parser": "deepseek_r1"})
    run_map(engine, ["a", "b"], tmp_path)
    assert len(engine.requested()) == 4


def test_secrets_stay_out_of_the_provenance():
    from jupyter_hpcllm.chat.provenance import Target, provenance, redacted

    assert redacted(["vllm", "serve", "--hf-token", "hf_x", "--tokenizer-mode", "slow", "--api-key=k",
                     "--otlp-traces-endpoint", "https://u:p@otel:4317/v1?token=t"]) == [
        "vllm", "serve", "--hf-token", "[redacted]", "--tokenizer-mode", "slow", "--api-key=[redacted]",
        "--otlp-traces-endpoint", "https://otel:4317/v1"]
    assert provenance(None, "m", "https://user:pw@gw.example.org/v1?key=1")["endpoint"] == "https://gw.example.org/v1"
    assert "sk-secret" not in repr(Target("http://x/v1", "sk-secret", "m", "l"))
