"""Seeded EcoRoute decision sequences: made once, replayed by the tests.

``python -m voltana.tests.ecoroute_decisions`` (from a checkout on ``PYTHONPATH``)
drives one policy per packaged profile through seeded random cluster states and
requests (decode and prefill candidates, telemetry or not, queues past the
profile's chunk size, prompts sharing prefixes, tight and loose SLOs), and writes
every input and every answer (the selection, its reason and each candidate's
what-if) to ``data/ecoroute_decisions.json``. The replay feeds the same inputs to
the policy as it is now and expects the same answers, float for float.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from voltana.predictor.profile import default_profile
from voltana.schemas.config import SloConfig
from voltana.services.router.policies import ClusterView, InstanceView, RouteRequest
from voltana.services.router.policies.ecoroute import EcoRoutePolicy

FIXTURE = Path(__file__).parent / "data" / "ecoroute_decisions.json"
PROFILES = ("h100", "a100", "h200")
STEPS = 160


def _view(rnd: random.Random, role: str, i: int) -> dict[str, Any]:
    v: dict[str, Any] = {"instance": f"{role[0]}{i}", "role": role}
    if rnd.random() < 0.1:
        v["healthy"] = False
    if role == "decode":
        b = rnd.choice([0, 0, 1, 3, 17, 64, 127, 128, 129, 300, 700])
        v["in_flight_requests"] = b
        v["in_flight_tokens"] = b * rnd.choice([200, 1500, 8000])
        if rnd.random() < 0.4:
            v["running_batch"] = max(b + rnd.randint(-2, 2), 0)
            v["kv_tokens"] = v["in_flight_tokens"] + rnd.randint(-100, 5000)
        if rnd.random() < 0.3:
            v["kv_capacity_tokens"] = rnd.choice([50_000, 400_000, 2_000_000])
    else:
        v["queued_prefill_tokens"] = rnd.choice([0, 0, 0, 512, 4096, 8192, 9000, 30_000])
        v["oldest_wait_s"] = rnd.choice([0.0, 0.01, 0.2, 0.9])
    return v


def _step(rnd: random.Random, t: float) -> dict[str, Any]:
    role = rnd.choice(["prefill", "decode"])
    views = [_view(rnd, role, i) for i in range(rnd.randint(1, 4))]
    base = rnd.randint(0, 5)
    keys = [base * 1000 + j for j in range(rnd.randint(0, 6))] if rnd.random() < 0.6 else []
    return {
        "views": views,
        "request": {
            "request_id": f"r{t:.3f}",
            "input_tokens": rnd.choice([0, 1, 20, 700, 3000, 9000]),
            "max_new_tokens": rnd.choice([0, 1, 64, 512]),
            "arrival_t": t - rnd.choice([0.0, 0.05, 0.3, 2.0]),
            "prefix_keys": keys,
            "prefix_block_tokens": 64 if keys else 0,
        },
        "now": t,
    }


def _whatif(w: Any) -> list[Any]:
    return [
        w.instance,
        w.feasible,
        w.clock_before_mhz,
        w.clock_after_mhz,
        w.latency_after_s,
        w.latency_at_max_s,
        w.added_energy_j,
        w.load,
        w.kv_fits,
    ]


def _inputs(step: dict[str, Any]) -> tuple[ClusterView, RouteRequest, float]:
    view = ClusterView(InstanceView(**v) for v in step["views"])
    req = RouteRequest(**dict(step["request"], prefix_keys=tuple(step["request"]["prefix_keys"])))
    return view, req, step["now"]


def replay(case: dict[str, Any], warm: bool = False) -> list[dict[str, Any]]:
    """Run one case's steps through a fresh policy; the answers in fixture form.

    ``warm``: the policy first evaluates every step (no dispatch, so its prefix
    tree stays empty) with tiny table caches, so the replay meets states it has
    seen and caches that were emptied on the way.
    """
    slo = SloConfig(**case["slo"])
    policy = EcoRoutePolicy(default_profile(case["gpu"], "llama-3.1-8b"), slo)
    if warm:
        for cache in (policy._decode_rows, policy._prefill_rows):
            cache.limit = 7
        for step in case["steps"]:
            policy.evaluate(*_inputs(step))
    rng = np.random.default_rng(0)
    out = []
    for step in case["steps"]:
        view, req, now = _inputs(step)
        whatifs = [_whatif(w) for w in policy.evaluate(view, req, now)]
        sel = policy.select(view, req, now, rng)
        if sel is not None:
            policy.on_dispatch(sel.instance, req, now)
        out.append(
            {
                "instance": None if sel is None else sel.instance,
                "reason": None if sel is None else sel.reason,
                "whatifs": whatifs,
            }
        )
    return out


def make() -> dict[str, Any]:
    rnd = random.Random(20261204)
    cases = []
    for gpu in PROFILES:
        for slo in ({"ttft_s": 0.5, "itl_s": 0.03}, {"ttft_s": 2.0, "itl_s": 0.08}):
            steps = [_step(rnd, 100.0 + 0.5 * k) for k in range(STEPS // 2)]
            case = {"gpu": gpu, "slo": slo, "steps": steps}
            case["answers"] = replay(case)
            cases.append(case)
    return {"cases": cases}


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(make(), separators=(",", ":")))
    print(FIXTURE, FIXTURE.stat().st_size, "bytes")
