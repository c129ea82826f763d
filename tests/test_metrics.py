"""The engines' live numbers: the Prometheus text under vLLM's and SGLang's names, and `Server.metrics()`
through the shipped FakeTransport (the relay's /hpcllm/metrics)."""

from __future__ import annotations

import pytest

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.edge.fake import FakeTransport
from jupyter_hpcllm.errors import ServerNotReady
from jupyter_hpcllm.lifecycle import Cluster
from jupyter_hpcllm.lifecycle.metrics import EngineMetrics, parse_metrics, with_rate

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="gpt-oss-120b"} 3.0
vllm:num_requests_running{engine="1",model_name="gpt-oss-120b"} 2.0
vllm:num_requests_waiting{engine="0",model_name="gpt-oss-120b"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="gpt-oss-120b"} 0.125
vllm:kv_cache_usage_perc{engine="1",model_name="gpt-oss-120b"} 0.5
vllm:generation_tokens_total{engine="0",model_name="gpt-oss-120b"} 1000.0
vllm:generation_tokens_created{engine="0",model_name="gpt-oss-120b"} 1.7e9
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="gpt-oss-120b"} 0.0
"""
SGLANG = """\
sglang:num_running_reqs{model_name="Qwen3-8B"} 7
sglang:num_queue_reqs{model_name="Qwen3-8B"} 12
sglang:token_usage{model_name="Qwen3-8B"} 0.83
sglang:gen_throughput{model_name="Qwen3-8B"} 1523.5 1700000000000
"""


def test_vllm_names_add_up_across_ranks_and_kv_cache_is_the_fullest_rank():
    metrics = parse_metrics(VLLM, read_at=10.0)
    assert (metrics.running, metrics.waiting, metrics.kv_cache) == (5.0, 1.0, 0.5)
    assert metrics.generation_tokens == 1000.0 and metrics.tokens_per_second is None  # one reading: no rate yet
    later = parse_metrics(VLLM.replace("} 1000.0", "} 1600.0"), read_at=13.0)
    assert with_rate(later, metrics).tokens_per_second == pytest.approx(200.0)
    restarted = parse_metrics(VLLM.replace("} 1000.0", "} 10.0"), read_at=14.0)
    assert with_rate(restarted, later).tokens_per_second is None  # the counter began again


def test_sglang_names_and_its_throughput_gauge():
    metrics = parse_metrics(SGLANG)
    assert metrics.as_dict() == {"running": 7.0, "waiting": 12.0, "kv_cache": 0.83, "tokens_per_second": 1523.5,
                                 "generation_tokens": None}


def test_older_vllm_names_and_nonsense():
    older = parse_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.7\nvllm:num_requests_running 1\n')
    assert older.kv_cache == 0.7 and older.running == 1.0
    assert parse_metrics("garbage\n{}\nvllm:num_requests_running NaN\nvllm:num_requests_waiting x\n") == \
        EngineMetrics()


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_servers_metrics_through_the_relay(tmp_path, monkeypatch, engine):
    (tmp_path / "none.toml").write_text("")
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Cluster(load_profile("ebi"), transport=FakeTransport(), sleep=lambda _: None) as cluster:
        server = cluster.up("Qwen3-8B", engine=engine)
        first = server.metrics()
        assert (first.running, first.waiting, first.kv_cache) == (0.0, 0.0, 0.25)
        server.client().chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "a b c"}])
        second = server.metrics()
        if engine == "vllm":  # the first call reads twice for a rate; the counter grew by "Echo: a b c"
            assert first.tokens_per_second == 0.0 and second.generation_tokens == 4.0
            assert server.metrics(rate_within=0).tokens_per_second == 0.0  # against the reading before
            assert second.tokens_per_second is not None and second.tokens_per_second > 0
        else:
            assert second.tokens_per_second == 0.0  # a gauge: nothing running now
        server.down()
        with pytest.raises(ServerNotReady, match="metrics of job"):
            server.metrics()
