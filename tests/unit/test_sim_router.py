"""The simulator's router keeps the live router's books: same events, same views."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.services.freqctl.controllers.factory import make_controller
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import WorkerSpec
from voltana.services.router.policies import RouteRequest, make_policy
from voltana.services.router.state import ClusterState
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.core import Simulator
from voltana.sim.router import SimRouter
from voltana.sim.runner import profile_for
from voltana.sim.workload import synthetic

ACCOUNTING = ("in_flight_requests", "in_flight_tokens", "queued_prefill_tokens", "oldest_wait_s")


def _rr(rid: str, n_in: int, n_out: int, t: float) -> RouteRequest:
    return RouteRequest(request_id=rid, input_tokens=n_in, max_new_tokens=n_out, arrival_t=t)


def _live() -> ClusterState:
    return ClusterState(
        [
            WorkerSpec(url="http://p0:1", role="prefill", name="p0"),
            WorkerSpec(url="http://d0:1", role="decode", name="d0"),
        ]
    )


def _accounting(view: object) -> tuple[object, ...]:
    return tuple(getattr(view, f) for f in ACCOUNTING)


Step = tuple[float, Callable[[], object], Callable[[], object]]


def request_events(
    sim: SimRouter,
    live: ClusterState,
    rid: str,
    n_in: int,
    n_out: int,
    times: tuple[float, float, float],
) -> list[Step]:
    """One request p0 -> d0 on both books: (time, sim event, live event) for its dispatch
    (= arrival), first token and end, at ``times``."""
    arrival, first, done = times
    r = _rr(rid, n_in, n_out, arrival)
    return [
        (
            arrival,
            lambda: sim.dispatched("p0", "d0", r, arrival),
            lambda: live.dispatched("p0", "d0", rid, n_in, n_out, arrival),
        ),
        (
            first,
            lambda: sim.first_token("p0", "d0", r, first),
            lambda: (
                live.prefill_done("p0", rid, n_in),
                live.first_token("d0", rid, first - arrival, first),
            ),
        ),
        (
            done,
            lambda: sim.decode_done("d0", r, done),
            lambda: live.decode_done("d0", rid, n_in, n_out, [], done),
        ),
    ]


def test_sim_router_and_live_state_agree_on_the_same_events() -> None:
    sim = SimRouter(
        {"p0": "prefill", "d0": "decode"},
        make_policy("random"),
        make_policy("round-robin"),
        np.random.default_rng(0),
    )
    live = _live()
    steps = sorted(
        request_events(sim, live, "a", 700, 50, (1.0, 2.0, 3.0))
        + request_events(sim, live, "b", 300, 20, (1.5, 3.5, 4.0)),
        key=lambda step: step[0],
    )
    seen = set()
    for t, on_sim, on_live in steps:
        on_sim()
        on_live()
        for role in ("prefill", "decode"):
            s, lv = sim.view(role, t + 0.25)[0], live.view(role, t + 0.25)[0]
            assert _accounting(s) == _accounting(lv), (t, role)
            seen.add(_accounting(s))
    assert len(seen) > 4  # the sequence moved the books, not only zeros
    assert _accounting(sim.view("prefill", 9.0)[0]) == (0, 0, 0, 0.0)


def test_every_request_closes_its_books_after_a_run() -> None:
    cfg = SimConfig(
        cluster=ClusterSpec(n_prefill=2, n_decode=2), slo=SloConfig(ttft_s=1.0), noise=0.0
    )
    profile = profile_for(cfg, quick=True)
    ctl = make_controller(
        ControllerConfig(policy="static", static_clock_mhz=profile.max_clock_mhz), profile
    )
    sim = Simulator(
        cfg,
        controllers={"prefill": ctl, "decode": ctl},
        prefill_policy=make_policy("ecoroute", profile=profile, slo=cfg.slo),
        decode_policy=make_policy("ecoroute", profile=profile, slo=cfg.slo),
        name="t",
    )
    run = sim.run(synthetic(rate_rps=8.0, duration_s=20.0, seed=3))
    assert run.unfinished == 0 and len(run.requests) > 100
    assert {r.prefill for r in run.requests} == {"p0", "p1"}  # the books steered both ways
    loads = sim.router.loads
    assert set(loads) == {"p0", "p1", "d0", "d1"}
    for load in loads.values():
        assert load == InstanceLoad()  # nothing in flight, queued or waiting
