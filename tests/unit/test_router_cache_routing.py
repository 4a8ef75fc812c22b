"""Cache-aware routing: sglang-router's ``cache_aware`` semantics, and ecoroute pricing a cache
hit (and a decode server's KV room) in its energy what-if."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from voltana.groundtruth.prefix_cache import chain_keys
from voltana.predictor.profile import default_profile
from voltana.schemas.config import SloConfig
from voltana.services.router.policies import ClusterView, InstanceView, RouteRequest, make_policy
from voltana.services.router.policies.cache_aware import (
    ApproxPrefixTree,
    CacheAwareConfig,
    CacheAwarePolicy,
)
from voltana.services.router.policies.ecoroute import EcoRoutePolicy

RNG = np.random.default_rng(0)


def req(rid: str, ids: list[int], tokens: int | None = None, bt: int = 100) -> RouteRequest:
    return RouteRequest(
        request_id=rid,
        input_tokens=tokens if tokens is not None else len(ids) * bt,
        max_new_tokens=32,
        arrival_t=0.0,
        prefix_keys=chain_keys(ids),
        prefix_block_tokens=bt,
    )


def worker(name: str, load: int = 0, role: str = "prefill", **kw: object) -> InstanceView:
    return InstanceView(instance=name, role=role, in_flight_requests=load, **kw)  # type: ignore[arg-type]


def route(pol: CacheAwarePolicy, view: ClusterView, r: RouteRequest, now: float = 0.0) -> str:
    s = pol.select(view, r, now, RNG)
    assert s is not None
    pol.on_dispatch(s.instance, r, now)
    return s.instance


def test_config_defaults_are_sglang_routers_and_bad_values_are_refused() -> None:
    c = CacheAwareConfig()
    assert (c.cache_threshold, c.balance_abs_threshold, c.balance_rel_threshold) == (0.3, 64, 1.5)
    assert (c.eviction_interval_secs, c.max_tree_size) == (120.0, 2**26)
    for bad in ({"cache_threshold": 1.5}, {"balance_rel_threshold": 0.5}, {"max_tree_size": 0}):
        with pytest.raises(ValueError):
            CacheAwareConfig(**bad)  # type: ignore[arg-type]
    assert isinstance(make_policy("cache_aware"), CacheAwarePolicy)


def test_prefix_match_above_threshold_sticks_and_below_goes_to_the_smallest_tree() -> None:
    pol = CacheAwarePolicy()
    view = ClusterView([worker("a"), worker("b"), worker("c")])
    first = route(pol, view, req("1", [1, 2, 3, 4]))
    assert first == "a"  # empty trees: the smallest, by name
    # a new conversation: no match, the smallest tree (b)
    assert route(pol, view, req("2", [9, 9, 9])) == "b"
    # the next turn of the first one: 4 of 6 blocks match (67% > 30%): back to a
    assert route(pol, view, req("3", [1, 2, 3, 4, 5, 6])) == "a"
    # a match of 1 block in 5 (20% <= 30%) does not count: the smallest tree (c)
    assert route(pol, view, req("4", [1, 7, 7, 7, 7])) == "c"
    # an unhealthy holder is never picked
    sick = ClusterView([replace(worker("a"), healthy=False), worker("b"), worker("c")])
    assert pol.select(sick, req("5", [1, 2, 3, 4, 5, 6, 7]), 0.0, RNG).instance != "a"  # type: ignore[union-attr]


def test_imbalanced_load_overrides_the_cache_with_both_thresholds() -> None:
    pol = CacheAwarePolicy(CacheAwareConfig(balance_abs_threshold=4, balance_rel_threshold=2.0))
    route(pol, ClusterView([worker("a"), worker("b")]), req("1", [1, 2, 3]))
    again = req("2", [1, 2, 3, 4])
    # 6 vs 3: abs gap 3 <= 4: still cache-aware
    assert pol.select(ClusterView([worker("a", 6), worker("b", 3)]), again, 0, RNG).instance == "a"  # type: ignore[union-attr]
    # 12 vs 6: gap 6 > 4 but 12 > 6 * 2 is false: still cache-aware
    assert pol.select(ClusterView([worker("a", 12), worker("b", 6)]), again, 0, RNG).instance == "a"  # type: ignore[union-attr]
    # 13 vs 6: both hold: the least loaded
    s = pol.select(ClusterView([worker("a", 13), worker("b", 6)]), again, 0, RNG)
    assert s is not None and s.instance == "b" and "imbalanced" in s.reason


def test_tree_eviction_runs_on_its_interval_and_keeps_recent_prefixes() -> None:
    pol = CacheAwarePolicy(CacheAwareConfig(eviction_interval_secs=10, max_tree_size=300))
    view = ClusterView([worker("a")])
    route(pol, view, req("1", [1, 2, 3]), now=0.0)
    route(pol, view, req("2", [5, 6, 7]), now=5.0)
    assert pol.tree.size("a") == 600  # not pruned before the interval
    route(pol, view, req("3", [5, 6, 7]), now=11.0)
    assert pol.tree.size("a") == 300
    n, holders = pol.tree.match(chain_keys([5, 6, 7]), {"a"})
    assert (n, holders) == (3, {"a"})  # the recent prefix stayed, the old one went
    assert pol.tree.match(chain_keys([1, 2, 3]), {"a"})[0] == 0


def test_tree_per_tenant_matches() -> None:
    t = ApproxPrefixTree()
    t.insert(chain_keys([1, 2, 3]), 16, "a")
    t.insert(chain_keys([1, 2]), 16, "b")
    assert t.match_each(chain_keys([1, 2, 3, 4]), ["a", "b", "c"]) == [3, 2, 0]
    assert t.match(chain_keys([1, 2, 3]), {"a", "b"}) == (3, {"a"})
    assert t.size("a") == 48 and t.size("b") == 32


def test_ecoroute_prices_a_predicted_hit_and_still_avoids_a_long_queue() -> None:
    prof = default_profile("h100", "llama-3.1-8b")
    pol = EcoRoutePolicy(prof, SloConfig(ttft_s=0.5, itl_s=0.05))
    turn1 = req("1", list(range(60)), bt=100)  # 6000 tokens
    view = ClusterView([worker("p0"), worker("p1")])
    s = pol.select(view, turn1, 0.0, RNG)
    assert s is not None
    pol.on_dispatch(s.instance, turn1, 0.0)
    other = "p1" if s.instance == "p0" else "p0"
    turn2 = req("2", [*range(60), 99], bt=100)
    w = {x.instance: x for x in pol.evaluate(view, turn2, 1.0)}
    assert w[s.instance].added_energy_j < w[other].added_energy_j / 10
    assert pol.select(view, turn2, 1.0, RNG).instance == s.instance  # type: ignore[union-attr]
    # the holder has a queue the SLO cannot absorb: the hit is not worth it
    busy = ClusterView(
        [
            replace(worker(s.instance, 3), queued_prefill_tokens=60_000, oldest_wait_s=0.2),
            worker(other),
        ]
    )
    assert pol.select(busy, turn2, 1.0, RNG).instance == other  # type: ignore[union-attr]


def test_ecoroute_decode_skips_a_server_whose_kv_pool_is_full() -> None:
    pol = EcoRoutePolicy(default_profile("h100", "llama-3.1-8b"), SloConfig(ttft_s=0.5, itl_s=0.05))
    r = RouteRequest(request_id="r", input_tokens=5000, max_new_tokens=200, arrival_t=0.0)

    def d(name: str, n: int, tokens: int) -> InstanceView:
        return InstanceView(
            instance=name,
            role="decode",
            in_flight_requests=n,
            in_flight_tokens=tokens,
            running_batch=n,
            kv_tokens=tokens,
            kv_capacity_tokens=100_000,
        )

    # d0 is cheaper to join (busy already), but its pool cannot take 5200 more tokens
    full, empty = d("d0", 18, 96_000), d("d1", 0, 0)
    assert pol.select(ClusterView([full, empty]), r, 0.0, RNG).instance == "d1"  # type: ignore[union-attr]
    roomy = replace(full, in_flight_tokens=50_000, kv_tokens=50_000)
    assert pol.select(ClusterView([roomy, empty]), r, 0.0, RNG).instance == "d0"  # type: ignore[union-attr]


def test_ecoroute_spreads_new_conversations_over_equal_candidates() -> None:
    pol = EcoRoutePolicy(default_profile("h100", "llama-3.1-8b"), SloConfig(ttft_s=0.5, itl_s=0.05))
    view = ClusterView([worker("p0"), worker("p1"), worker("p2")])
    picks = []
    for i in range(6):  # six unrelated conversations, every instance idle each time
        r = req(str(i), [1000 + i] * 20)
        s = pol.select(view, r, 0.0, RNG)
        assert s is not None
        pol.on_dispatch(s.instance, r, 0.0)
        picks.append(s.instance)
    assert picks == ["p0", "p1", "p2", "p0", "p1", "p2"]  # the smallest tree among equals
