"""Routing policies: pure, table-driven checks of each algorithm's choices."""

from __future__ import annotations

import numpy as np
import pytest
from voltana.common.errors import ConfigError
from voltana.predictor.profile import default_profile
from voltana.schemas.config import SloConfig
from voltana.services.router.policies import (
    POLICY_NAMES,
    ClusterView,
    InstanceView,
    RouteRequest,
    RoutingPolicy,
    Selection,
    make_policy,
)
from voltana.services.router.policies.ecoroute import EcoRoutePolicy, cheapest_within
from voltana.services.router.policies.ecoroute_tile import buckets_used

REQ = RouteRequest(request_id="r", input_tokens=500, max_new_tokens=64, arrival_t=0.0)


def dec(
    name: str, n: int = 0, *, healthy: bool = True, clock: int | None = None, kv: int | None = None
) -> InstanceView:
    return InstanceView(
        instance=name,
        role="decode",
        in_flight_requests=n,
        running_batch=n,
        kv_tokens=kv if kv is not None else n * 1000,
        healthy=healthy,
        clock_mhz=clock,
    )


def pre(name: str, queued: int = 0, *, wait: float = 0.0, healthy: bool = True) -> InstanceView:
    return InstanceView(
        instance=name,
        role="prefill",
        queued_prefill_tokens=queued,
        in_flight_requests=1 if queued else 0,
        oldest_wait_s=wait,
        healthy=healthy,
    )


def dispatched(
    pol: RoutingPolicy, view: ClusterView, rng: np.random.Generator, n: int
) -> list[str]:
    """The instances ``pol`` picks for ``n`` requests in a row, each dispatched at t=0."""
    picks = []
    for _ in range(n):
        s = pol.select(view, REQ, 0.0, rng)
        assert s is not None
        pol.on_dispatch(s.instance, REQ, 0.0)
        picks.append(s.instance)
    return picks


@pytest.fixture(scope="module")
def profile():
    return default_profile("h100", "llama-3.1-8b")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_follows_the_protocol_and_skips_unhealthy(name: str, profile) -> None:
    pol = make_policy(name, profile=profile)
    assert isinstance(pol, RoutingPolicy) and pol.name == name
    view = ClusterView([dec("a", 3, healthy=False), dec("b", 9), dec("c", 5, healthy=False)])
    rng = np.random.default_rng(1)
    for _ in range(20):
        sel = pol.select(view, REQ, 0.0, rng)
        assert sel == Selection("b", sel.reason if sel else "")
        pol.on_dispatch("b", REQ, 0.0)
        pol.on_complete("b", REQ, 1.0)
    assert pol.select(ClusterView([dec("a", healthy=False)]), REQ, 0.0, rng) is None
    assert pol.select(ClusterView(), REQ, 0.0, rng) is None


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_select_does_not_mutate_and_is_repeatable(name: str, profile) -> None:
    view = ClusterView([dec("a", 3), dec("b", 9), dec("c", 5)])
    picks = [
        dispatched(make_policy(name, profile=profile), view, np.random.default_rng(7), 30)
        for _ in range(2)
    ]
    assert picks[0] == picks[1]


def test_round_robin_cycles_and_moves_only_on_dispatch() -> None:
    pol = make_policy("round_robin")
    view = ClusterView([dec("a"), dec("b"), dec("c")])
    rng = np.random.default_rng(0)
    assert pol.select(view, REQ, 0, rng).instance == "a"
    assert pol.select(view, REQ, 0, rng).instance == "a"
    assert dispatched(pol, view, rng, 6) == ["a", "b", "c", "a", "b", "c"]
    view2 = ClusterView([dec("a"), dec("b", healthy=False), dec("c")])
    pol.on_dispatch("a", REQ, 0)
    assert pol.select(view2, REQ, 0, rng).instance == "c"


@pytest.mark.parametrize(
    ("views", "expect"),
    [
        ([dec("a", 5), dec("b", 2), dec("c", 7)], "b"),
        ([pre("a", 4000), pre("b", 100), pre("c", 900)], "b"),
        ([dec("a", 2, healthy=False), dec("b", 3)], "b"),
    ],
)
def test_least_load(views: list[InstanceView], expect: str) -> None:
    s = make_policy("least-load").select(ClusterView(views), REQ, 0, np.random.default_rng(0))
    assert s is not None and s.instance == expect


def test_power_of_two_never_picks_the_most_loaded_of_three() -> None:
    view = ClusterView([dec("a", 1), dec("b", 50), dec("c", 2)])
    rng = np.random.default_rng(3)
    pol = make_policy("power-of-two")
    picks = {pol.select(view, REQ, 0, rng).instance for _ in range(200)}
    assert "b" not in picks and picks == {"a", "c"}


@pytest.mark.parametrize(
    ("counts", "clocks", "expect"),
    [
        ((10, 20, 5), (1410, 1005, 1410), "b"),  # all below the bucket: lowest clock
        ((10, 20, 5), (1005, 1005, 1005), "c"),  # same clock: fewest requests
        ((130, 200, 300), (None, None, None), "b"),  # fewest buckets (2), fullest that fits
        ((128, 256, 300), (None, None, None), "c"),  # a, b on an edge: c has room
        ((128, 256), (None, None), "a"),  # every bucket full: the emptiest opens one
        ((129, 100, 140), (None, None, None), "b"),  # b alone has 1 bucket, with room
        ((129, 128, 140), (None, None, None), "c"),  # b full: fullest open bucket
        ((128, 150), (None, None), "b"),  # b holds 2 buckets and has room; a would open one
    ],
)
def test_ecoroute_tile_packs_into_buckets(
    counts: tuple[int, ...], clocks: tuple[int | None, ...], expect: str
) -> None:
    view = ClusterView(dec(n, c, clock=f) for n, c, f in zip("abc", counts, clocks, strict=False))
    s = make_policy("ecoroute-tile").select(view, REQ, 0, np.random.default_rng(0))
    assert s is not None and s.instance == expect, s


def test_buckets_used() -> None:
    assert [buckets_used(n) for n in (0, 1, 128, 129, 256, 257)] == [0, 1, 1, 2, 2, 3]


def test_cheapest_within_prefers_least_energy_then_top_clock_when_infeasible() -> None:
    clocks = (500, 1000, 1500, 2000)
    lat = np.array([0.4, 0.2, 0.15, 0.1])
    en = np.array([5.0, 3.0, 4.0, 6.0])  # U-shaped
    assert cheapest_within(clocks, lat, en, 1.0).clock_mhz == 1000  # bottom of the U
    assert cheapest_within(clocks, lat, en, 0.16).clock_mhz == 1500
    ch = cheapest_within(clocks, lat, en, 0.05)
    assert ch.clock_mhz == 2000 and not ch.feasible


def test_ecoroute_consolidates_at_light_load(profile) -> None:
    pol = make_policy("ecoroute", profile=profile)
    s = pol.select(ClusterView([dec("idle", 0), dec("busy", 10)]), REQ, 0, None)
    assert s is not None and s.instance == "busy", s


def test_ecoroute_avoids_crossing_a_batch_bucket(profile) -> None:
    pol = EcoRoutePolicy(profile)
    edge = max(b for b in profile.buckets if b <= 128)
    # "a" sits exactly on a bucket edge: one more request moves it to the next fit
    view = ClusterView([dec("a", edge), dec("b", edge - 20)])
    w = {x.instance: x for x in pol.evaluate(view, REQ, 0)}
    s = pol.select(view, REQ, 0, None)
    assert s is not None
    assert s.instance == min(w, key=lambda k: w[k].added_energy_j)
    assert w["a"].added_energy_j > w["b"].added_energy_j
    assert s.instance == "b"


def test_ecoroute_prefill_respects_ttft_budget_and_queue(profile) -> None:
    slo = SloConfig(ttft_s=0.5, itl_s=0.05, margin=0.1)
    pol = make_policy("ecoroute", profile=profile, slo=slo)
    big = RouteRequest(request_id="r", input_tokens=4000, max_new_tokens=16, arrival_t=0.0)
    view = ClusterView([pre("long-queue", 60000, wait=0.3), pre("short", 0)])
    s = pol.select(view, big, 0.0, None)
    assert s is not None and s.instance == "short"
    # nobody can make it: fall back to the fastest at the top clock, never None
    view2 = ClusterView([pre("x", 200000, wait=0.4), pre("y", 100000, wait=0.4)])
    s2 = pol.select(view2, big, 0.0, None)
    assert s2 is not None and s2.instance == "y" and "no candidate meets SLO" in s2.reason


def test_ecoroute_counts_the_time_already_waited(profile) -> None:
    pol = EcoRoutePolicy(profile, SloConfig(ttft_s=1.0, itl_s=0.05, margin=0.0))
    req = RouteRequest(request_id="r", input_tokens=2000, max_new_tokens=16, arrival_t=0.0)
    view = ClusterView([pre("p", 0)])
    fresh = pol.evaluate(view, req, 0.0)[0]
    late = pol.evaluate(view, req, 0.95)[0]
    assert late.clock_after_mhz >= fresh.clock_after_mhz
    assert late.latency_after_s <= 0.05 or not late.feasible


def test_factory_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown routing policy"):
        make_policy("consistent_hashing")


def test_cluster_view_forms() -> None:
    a, b = dec("a"), dec("b")
    assert ClusterView([a, b]) == ClusterView(instances=(a, b)) == (a, b)
    assert ClusterView([a, b]).by_name("b") is b and ClusterView().by_name("x") is None
