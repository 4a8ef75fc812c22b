"""Workload loading (format detection), synthetic arrivals, rate scaling and windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from voltana.common.errors import ConfigError
from voltana.sim.traces import packaged_trace
from voltana.sim.workload import LengthDist, load_trace, scale_rate, synthetic, window


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expect"),
    [
        (
            "az.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n",
            "azure",
            [(0.0, 374, 44), (4.314579, 396, 109)],
        ),
        (
            "b.csv",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n7.5,GPT-4,1000,0,1000,Conversation log\n"
            "9,GPT-4,1200,30,1230,API log\n",
            "burstgpt",
            [(0.0, 472, 18), (4.0, 1200, 30)],
        ),
        (
            "m.jsonl",
            '{"timestamp": 1000, "input_length": 500, "output_length": 20, "hash_ids": [1]}\n'
            '\n{"timestamp": 3500, "input_length": 800, "output_length": 10}\n',
            "mooncake",
            [(0.0, 500, 20), (2.5, 800, 10)],
        ),
    ],
)
def test_formats_are_detected_and_rebased(
    tmp_path: Path, name: str, text: str, fmt: str, expect: list[tuple[float, int, int]]
) -> None:
    wl = load_trace(_write(tmp_path, name, text))
    assert wl.source.startswith(fmt)
    got = [(r.arrival_s, r.input_tokens, r.output_tokens) for r in wl.requests]
    assert len(got) == len(expect)
    for (t, i, o), (et, ei, eo) in zip(got, expect, strict=True):
        assert t == pytest.approx(et, abs=1e-6)
        assert (i, o) == (ei, eo)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("e.csv", "", "empty"),
        ("u.csv", "a,b,c\n1,2,3\n", "unknown format"),
        ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nnot-a-date,1,2\n", "bad.csv:2"),
        (
            "bb.csv",
            "Timestamp,Request tokens,Response tokens\n1,2,5\n3,x,5\n",
            "bb.csv:3: bad BurstGPT",
        ),
        ("bad.jsonl", '{"timestamp": 1}\n', "bad.jsonl:1"),
    ],
)
def test_bad_traces_give_clear_errors(tmp_path: Path, name: str, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_trace(_write(tmp_path, name, text))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_trace("/nonexistent/trace.csv")


def test_scale_and_window() -> None:
    wl = synthetic(rate_rps=10, duration_s=50, seed=1)
    fast = scale_rate(wl, 2.0)
    assert fast.rate_rps == pytest.approx(2 * wl.rate_rps, rel=1e-6)
    w = window(fast, 5.0, 10.0)
    assert all(0.0 <= r.arrival_s < 10.0 for r in w.requests)
    assert len(w.requests) == sum(1 for r in fast.requests if 5.0 <= r.arrival_s < 15.0)
    with pytest.raises(ConfigError):
        scale_rate(wl, 0.0)
    with pytest.raises(ConfigError, match="holds no request"):
        window(wl, 1e6, 1.0)


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_synthetic_rate_and_determinism(arrival: str) -> None:
    a = synthetic(rate_rps=20, duration_s=500, arrival=arrival, cv=3.0, seed=3)
    b = synthetic(rate_rps=20, duration_s=500, arrival=arrival, cv=3.0, seed=3)
    assert a == b
    assert a.rate_rps == pytest.approx(20, rel=0.25)
    gaps = np.diff([r.arrival_s for r in a.requests])
    cv = gaps.std() / gaps.mean()
    if arrival == "poisson":
        assert cv == pytest.approx(1.0, abs=0.15)
    else:
        assert cv > 2.0  # bursty


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    x = LengthDist("lognormal", 500.0, 0.8, 1, 100000).sample(rng, 20000)
    assert x.mean() == pytest.approx(500, rel=0.05)
    assert (LengthDist("fixed", 7.0).sample(rng, 5) == 7).all()
    u = LengthDist("uniform", lo=3, hi=5).sample(rng, 1000)
    assert set(u.tolist()) == {3, 4, 5}


def test_packaged_azure_conversation_trace_summary() -> None:
    wl = load_trace(packaged_trace())
    assert wl.name == "azure_llm_2023_conv" and wl.source == "azure:azure_llm_2023_conv.csv.gz"
    s = wl.summary()
    assert s["requests"] == 19366
    assert s["input_tokens_mean"] == pytest.approx(1155, rel=0.01)
    assert s["output_tokens_mean"] == pytest.approx(211, rel=0.01)


def test_crosscheck_figures_and_compare() -> None:
    from voltana.sim.crosscheck import compare, sim_figures

    wl = synthetic(rate_rps=2, duration_s=20, seed=9)
    figs = sim_figures(wl, window_s=(0.0, 20.0), policy="ecofreq")
    assert figs["finished"] == figs["requests"] == len(wl.requests)
    assert set(figs["energy_j_by_instance"]) == {"p0", "d0"}
    live = dict(figs, energy_j=figs["energy_j"] * 1.03, slo_attainment=figs["slo_attainment"] - 0.1)
    rows = {r["figure"]: r for r in compare(figs, live)}
    assert rows["energy_j"]["ok"] and not rows["slo_attainment"]["ok"]
    assert rows["energy_j"]["diff"] == pytest.approx(0.03 / 1.03, rel=1e-3)


def test_gzip_traces_and_unreadable_ones(tmp_path: Path) -> None:
    import gzip

    p = tmp_path / "t.csv.gz"
    p.write_bytes(
        gzip.compress(
            b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
        )
    )
    wl = load_trace(p)
    assert wl.name == "t" and len(wl.requests) == 1 and wl.requests[0].input_tokens == 374
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="cannot read"):
        load_trace(bad)


def test_prompt_token_ids_share_exactly_the_workloads_prefix_blocks() -> None:
    from voltana.groundtruth.prefix_cache import PrefixIdentity
    from voltana.sim.workload import SimRequest, prompt_token_ids

    a = SimRequest("a", 0.0, 1000, 8, PrefixIdentity((5, 6), 512))
    b = SimRequest("b", 0.0, 700, 8, PrefixIdentity((5, 7), 512))
    ia, ib = prompt_token_ids(a), prompt_token_ids(b)
    assert len(ia) == 1000 and len(ib) == 700
    assert ia[:512] == ib[:512]  # the shared first block
    assert ia[512:700] != ib[512:700]  # the second block differs
    assert prompt_token_ids(a) == ia  # the same request, the same prompt
    # no prefix identity: no two prompts share even their first tokens
    plain = [prompt_token_ids(SimRequest(f"r{i}", 0.0, 64, 8)) for i in range(50)]
    assert len({tuple(p[:4]) for p in plain}) == 50
    assert all(0 < t < 32000 for p in plain for t in p)
    assert prompt_token_ids(SimRequest("z", 0.0, 0, 8)) == []
