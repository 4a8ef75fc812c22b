"""The simulator's router keeps the live router's books: same events, same views."""

from __future__ import annotations

import numpy as np
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.services.freqctl.controllers.factory import make_controller
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


def test_sim_router_and_live_state_agree_on_the_same_events() -> None:
    sim = SimRouter(
        {"p0": "prefill", "d0": "decode"},
        make_policy("random"),
        make_policy("round-robin"),
        np.random.default_rng(0),
    )
    live = _live()
    a, b = _rr("a", 700, 50, 1.0), _rr("b", 300, 20, 1.5)
    steps = [
        (
            1.0,
            lambda: sim.dispatched("p0", "d0", a, 1.0),
            lambda: live.dispatched("p0", "d0", "a", 700, 50, 1.0),
        ),
        (
            1.5,
            lambda: sim.dispatched("p0", "d0", b, 1.5),
            lambda: live.dispatched("p0", "d0", "b", 300, 20, 1.5),
        ),
        (
            2.0,
            lambda: sim.first_token("p0", "d0", a, 2.0),
            lambda: (live.prefill_done("p0", "a", 700), live.first_token("d0", "a", 1.0, 2.0)),
        ),
        (
            3.0,
            lambda: sim.decode_done("d0", a, 3.0),
            lambda: live.decode_done("d0", "a", 700, 50, [], 3.0),
        ),
        (
            3.5,
            lambda: sim.first_token("p0", "d0", b, 3.5),
            lambda: (live.prefill_done("p0", "b", 300), live.first_token("d0", "b", 2.0, 3.5)),
        ),
        (
            4.0,
            lambda: sim.decode_done("d0", b, 4.0),
            lambda: live.decode_done("d0", "b", 300, 20, [], 4.0),
        ),
    ]
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
        assert (load.in_flight_requests, load.in_flight_tokens) == (0, 0)
        assert load.queued_prefill_tokens == 0 and not load.waiting_since
