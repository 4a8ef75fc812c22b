"""Prefix identity in the simulator: Mooncake hash_ids, the multi-turn generator, hit rates in
results, determinism with the cache on."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from voltana.common.errors import ConfigError
from voltana.groundtruth.prefix_cache import chain_keys
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.multiturn import MultiTurnSpec, multiturn
from voltana.sim.policies import POLICIES
from voltana.sim.runner import evaluate
from voltana.sim.workload import LengthDist, Workload, load_trace, scale_rate, window

SPEC = MultiTurnSpec(
    sessions_per_s=1.0,
    duration_s=20.0,
    turns_mean=4.0,
    system_prompt_tokens=512,
    system_prompts=2,
    document_tokens=LengthDist("lognormal", 1500, 0.5, 16, 8000),
    think_time_s=5.0,
)


def test_mooncake_hash_ids_become_chained_512_token_blocks(tmp_path: Path) -> None:
    p = tmp_path / "mc.jsonl"
    rows = [
        {"timestamp": 2000, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 0, "input_length": 700, "output_length": 9, "hash_ids": [1, 4]},
        {"timestamp": 1000, "input_length": 30, "output_length": 2},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    wl = load_trace(p)
    first, second, third = wl.requests
    assert [r.input_tokens for r in wl.requests] == [700, 30, 1100]
    assert first.prefix is not None and first.prefix.block_tokens == 512
    assert first.prefix.keys == chain_keys([1, 4]) and second.prefix is None
    assert third.prefix is not None and third.prefix.keys[0] == first.prefix.keys[0]
    assert third.prefix.keys[1] != first.prefix.keys[1]
    # rate scaling and windows keep the identity
    assert window(scale_rate(wl, 2.0), 0.0, 10.0).requests[2].prefix == third.prefix
    p.write_text(json.dumps({**rows[0], "hash_ids": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"mc\.jsonl:1"):
        load_trace(p)


def test_multiturn_sessions_grow_and_share_their_earlier_prompts() -> None:
    wl = multiturn(SPEC, seed=3)
    assert wl == multiturn(SPEC, seed=3) and wl != multiturn(SPEC, seed=4)
    by_session: dict[str, list] = {}
    for r in wl.requests:
        by_session.setdefault(r.request_id.split("t")[0], []).append(r)
    turns = [rs for rs in by_session.values() if len(rs) > 1]
    assert turns, "some session has more than one turn"
    for rs in turns:
        rs.sort(key=lambda r: int(r.request_id.split("t")[1]))
        for a, b in itertools.pairwise(rs):
            assert b.arrival_s > a.arrival_s and b.input_tokens > a.input_tokens + a.output_tokens
            assert b.prefix.keys[: len(a.prefix.keys)] == a.prefix.keys  # the whole prompt
    sys_blocks = 512 // SPEC.block_tokens
    firsts = [rs[0] for rs in by_session.values()]
    shared = {r.prefix.keys[sys_blocks - 1] for r in firsts}
    assert len(shared) <= 2  # two system prompts
    assert len({r.prefix.keys[sys_blocks] for r in firsts}) == len(firsts)  # then their own
    with pytest.raises(ConfigError):
        MultiTurnSpec(turns_mean=0.5)


def test_results_carry_prefix_hit_rates_and_are_deterministic() -> None:
    wl = multiturn(SPEC, seed=1)
    cfg = SimConfig(cluster=ClusterSpec(n_prefill=3, n_decode=1), seed=5)
    specs = [POLICIES["static-max"], POLICIES["cache-aware"]]
    a = evaluate(wl, specs, cfg, quick_profile=True, oracle=False)
    b = evaluate(wl, specs, cfg, quick_profile=True, oracle=False)
    drop = {"wall_s"}
    rows_a = {k: {f: v for f, v in r.items() if f not in drop} for k, r in a.policies.items()}
    rows_b = {k: {f: v for f, v in r.items() if f not in drop} for k, r in b.policies.items()}
    assert rows_a == rows_b
    ca, rnd = a.policies["cache-aware"], a.policies["static-max"]
    assert 0 < rnd["prefix_hit_rate"] < ca["prefix_hit_rate"] <= 1
    assert set(ca["prefix_hit_rate_by_instance"]) == {"p0", "p1", "p2"}
    # a workload without prefix identity reports no hit rate at all (results stay as they were)
    bare = Workload(wl.name, tuple(replace(r, prefix=None) for r in wl.requests))
    c = evaluate(bare, specs[:1], cfg, quick_profile=True, oracle=False)
    assert "prefix_hit_rate" not in c.policies["static-max"]


def test_default_clocks_behind_cache_aware_routing() -> None:
    """``default-ca`` is today's deployment: sglang-router's cache_aware, no clock lock. It
    routes as ``cache-aware`` does (same hit rate) and reports its saving against default."""
    wl = multiturn(SPEC, seed=1)
    cfg = SimConfig(cluster=ClusterSpec(n_prefill=3, n_decode=1), seed=5)
    specs = [POLICIES["cache-aware"], POLICIES["default-ca"], POLICIES["default"]]
    r = evaluate(wl, specs, cfg, quick_profile=True, oracle=False).policies
    assert r["default-ca"]["prefix_hit_rate"] == r["cache-aware"]["prefix_hit_rate"]
    assert r["default-ca"]["prefix_hit_rate"] > r["default"]["prefix_hit_rate"]
    assert r["default"]["saving_vs_default"] == 0.0
    assert r["default-ca"]["saving_vs_default"] is not None
