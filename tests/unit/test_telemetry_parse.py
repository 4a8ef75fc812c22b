"""Parsing SGLang /metrics text (0.4.7 and 0.5.23 label sets) and the load endpoints.

The metric text is written out by hand in each version's style, following the
names, label sets and bucket layouts listed in the SGLang interface notes (the
bucket bounds: ``sglang_buckets``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from sglang_buckets import ITL_BOUNDS, TTFT_BOUNDS
from voltana.services.telemetry.engine_metrics import (
    parse_get_load,
    parse_metrics,
    parse_v1_loads,
)


def histogram(
    name: str, labels: str, bounds: Sequence[float], per_bucket: dict[float, int], total_s: float
) -> str:
    lines = [f"# HELP sglang:{name} Histogram.", f"# TYPE sglang:{name} histogram"]
    cum = 0
    for b in bounds:
        cum += per_bucket.get(b, 0)
        lines.append(f'sglang:{name}_bucket{{{labels},le="{float(b)}"}} {float(cum)}')
    cum += per_bucket.get(math.inf, 0)
    lines.append(f'sglang:{name}_bucket{{{labels},le="+Inf"}} {float(cum)}')
    lines.append(f"sglang:{name}_sum{{{labels}}} {total_s}")
    lines.append(f"sglang:{name}_count{{{labels}}} {float(cum)}")
    return "\n".join(lines)


def gauge(name: str, labels: str, value: float) -> str:
    return f"# HELP sglang:{name} g\n# TYPE sglang:{name} gauge\nsglang:{name}{{{labels}}} {value}"


def counter(name: str, labels: str, value: float) -> str:
    return (
        f"# HELP sglang:{name}_total c\n# TYPE sglang:{name}_total counter\n"
        f"sglang:{name}_total{{{labels}}} {value}"
    )


def text_047(running: int, queue: int, ttft: dict[float, int], itl: dict[float, int]) -> str:
    """SGLang 0.4.7 style: model_name label, ITL under the older name."""
    lab = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'
    return (
        "\n".join(
            [
                gauge("num_running_reqs", lab, running),
                gauge("num_used_tokens", lab, 5120),
                gauge("token_usage", lab, 0.04),
                gauge("gen_throughput", lab, 812.5),
                gauge("num_queue_reqs", lab, queue),
                gauge("cache_hit_rate", lab, 0.0),
                counter("prompt_tokens", lab, 10000),
                counter("generation_tokens", lab, 4000),
                counter("num_requests", lab, 31),
                histogram("time_to_first_token_seconds", lab, TTFT_BOUNDS, ttft, 3.3),
                histogram("time_per_output_token_seconds", lab, ITL_BOUNDS, itl, 0.9),
            ]
        )
        + "\n"
    )


def text_0523(
    role: str, ranks: list[dict[str, float]], ttft: dict[float, int], itl: dict[float, int]
) -> str:
    """SGLang 0.5.23 style: engine_type + per-rank labels, one series per TP rank, PD gauges."""
    out: list[str] = []
    families: dict[str, list[str]] = {}
    for r, vals in enumerate(ranks):
        lab = (
            f'engine_type="{role}",model_name="meta-llama/Llama-3.1-8B-Instruct",'
            f'moe_ep_rank="0",pp_rank="0",tp_rank="{r}"'
        )
        for name, value in vals.items():
            families.setdefault(name, []).append(f"sglang:{name}{{{lab}}} {value}")
    for name, rows in families.items():
        out.append(f"# HELP sglang:{name} g\n# TYPE sglang:{name} gauge")
        out.extend(rows)
    lab0 = (
        f'engine_type="{role}",model_name="meta-llama/Llama-3.1-8B-Instruct",'
        'moe_ep_rank="0",pp_rank="0",tp_rank="0"'
    )
    out.append(counter("prompt_tokens", lab0, 2.5e5))
    out.append(counter("generation_tokens", lab0, 1.25e5))
    out.append(counter("num_requests", lab0, 512))
    out.append(histogram("time_to_first_token_seconds", lab0, TTFT_BOUNDS, ttft, 12.0))
    out.append(histogram("inter_token_latency_seconds", lab0, ITL_BOUNDS, itl, 2.0))
    out.append(histogram("e2e_request_latency_seconds", lab0, [*TTFT_BOUNDS, 800, 2400], {}, 0))
    return "\n".join(out) + "\n"


def test_047_gauges_counters_histograms() -> None:
    snap = parse_metrics(text_047(7, 3, {0.2: 4, 0.4: 6}, {0.010: 90, 0.015: 10}))
    assert snap.gauge("num_running_reqs") == 7 and snap.gauge("num_queue_reqs") == 3
    assert snap.gauge("num_used_tokens") == 5120 and snap.gauge("gen_throughput") == 812.5
    assert snap.counters["prompt_tokens"] == 10000 and snap.counters["num_requests"] == 31
    ttft = snap.histograms["time_to_first_token_seconds"]
    assert ttft.count == 10 and ttft.bounds[-1] == math.inf and len(ttft.bounds) == 19
    itl = snap.itl()
    assert itl is not None and itl.count == 100 and itl.sum == pytest.approx(0.9)
    assert snap.looks_like == "0.4.7"


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_0523_sums_ranks_and_reads_pd_queues(role: str) -> None:
    ranks = [
        {
            "num_running_reqs": 5,
            "num_queue_reqs": 2,
            "token_usage": 0.30,
            "kv_used_tokens": 900,
            "num_used_tokens": 900,
            "gen_throughput": 400.0,
            "num_decode_transfer_queue_reqs": 1,
            "num_decode_prealloc_queue_reqs": 2,
            "num_prefill_bootstrap_queue_reqs": 0,
        },
        {
            "num_running_reqs": 6,
            "num_queue_reqs": 1,
            "token_usage": 0.35,
            "kv_used_tokens": 1000,
            "num_used_tokens": 1000,
            "gen_throughput": 410.0,
            "num_decode_transfer_queue_reqs": 0,
            "num_decode_prealloc_queue_reqs": 1,
            "num_prefill_bootstrap_queue_reqs": 4,
        },
    ]
    snap = parse_metrics(text_0523(role, ranks, {1: 3}, {0.02: 10}))
    assert snap.gauge("num_running_reqs") == 11 and snap.gauge("num_queue_reqs") == 3
    assert snap.gauge("token_usage") == pytest.approx(0.35)  # the busiest rank, not a sum
    assert snap.gauge("kv_used_tokens") == 1900 and snap.gauge("gen_throughput") == 810.0
    assert snap.gauge("num_decode_transfer_queue_reqs") == 1
    assert snap.gauge("num_decode_prealloc_queue_reqs") == 3
    assert snap.gauge("num_prefill_bootstrap_queue_reqs") == 4
    assert snap.engine_types == {role} and snap.looks_like == "0.5.23"
    itl = snap.itl()
    assert itl is not None and itl.count == 10  # found under the 0.5.23 name
    assert "e2e_request_latency_seconds" in snap.histograms
    assert snap.histograms["e2e_request_latency_seconds"].bounds[-3:] == (800.0, 2400.0, math.inf)


def test_ignores_other_prefixes_and_nan() -> None:
    text = (
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.0\n"
        "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs NaN\n"
        "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs 4\n"
    )
    snap = parse_metrics(text)
    assert snap.gauges == {"num_queue_reqs": 4.0} and snap.counters == {}
    assert snap.itl() is None


def test_empty_text_is_an_empty_snapshot() -> None:
    snap = parse_metrics("")
    assert snap.gauges == {} and snap.histograms == {} and snap.gauge("num_queue_reqs") == 0.0


@pytest.mark.parametrize(
    "text",
    ["this is not { prometheus", "sglang:num_queue_reqs{model_name=unquoted} 1\n"],
)
def test_malformed_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_metrics(text)


def test_v1_loads_sums_dp_ranks() -> None:
    doc = {
        "timestamp": 1764100000.0,
        "version": "0.5.23",
        "loads": [
            {
                "dp_rank": 0,
                "num_running_reqs": 3,
                "num_waiting_reqs": 1,
                "num_used_tokens": 700,
                "max_total_num_tokens": 100000,
                "token_usage": 0.007,
                "gen_throughput": 250.0,
                "disaggregation": {
                    "mode": "decode",
                    "decode_prealloc_queue_reqs": 2,
                    "decode_transfer_queue_reqs": 1,
                },
            },
            {
                "dp_rank": 1,
                "num_running_reqs": 4,
                "num_waiting_reqs": 0,
                "num_used_tokens": 300,
                "max_total_num_tokens": 100000,
                "token_usage": 0.003,
                "gen_throughput": 260.0,
                "disaggregation": {
                    "mode": "decode",
                    "decode_prealloc_queue_reqs": 0,
                    "decode_transfer_queue_reqs": 3,
                },
            },
        ],
    }
    ld = parse_v1_loads(doc)
    assert (ld.running_reqs, ld.waiting_reqs, ld.used_tokens) == (7, 1, 1000)
    assert ld.capacity_tokens == 200000 and ld.token_usage == pytest.approx(0.007)
    assert ld.gen_throughput_tps == 510.0 and ld.mode == "decode"
    assert (ld.prealloc_queue_reqs, ld.transfer_queue_reqs, ld.bootstrap_queue_reqs) == (2, 4, None)


def test_v1_loads_prefill_queues() -> None:
    doc = {
        "loads": [
            {
                "dp_rank": 0,
                "num_running_reqs": 1,
                "num_waiting_reqs": 5,
                "disaggregation": {
                    "mode": "prefill",
                    "prefill_bootstrap_queue_reqs": 2,
                    "prefill_inflight_queue_reqs": 3,
                },
            }
        ]
    }
    ld = parse_v1_loads(doc)
    assert ld.bootstrap_queue_reqs == 2 and ld.inflight_queue_reqs == 3 and ld.mode == "prefill"
    assert ld.capacity_tokens is None and ld.token_usage is None


@pytest.mark.parametrize(("doc", "load"), [({"load": 42}, 42.0), ([{"load": 3}, {"load": 4}], 7.0)])
def test_get_load(doc: object, load: float) -> None:
    ld = parse_get_load(doc)
    assert ld.endpoint == "/get_load" and ld.load == load and ld.running_reqs is None


@pytest.mark.parametrize("doc", [{}, [], "x", {"loads": "no"}, None])
def test_bad_load_documents(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_v1_loads(doc)
    with pytest.raises(ValueError):
        parse_get_load(doc)
