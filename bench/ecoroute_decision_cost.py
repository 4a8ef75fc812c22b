"""CPU cost of one EcoRoute decision, prefill side and decode side (us/decision).

Drives the policy as the router does (``select`` then ``on_dispatch``) through a
sequence of 2P2D cluster states: two prefill candidates whose queues grow and
drain by whole prompts, two decode candidates whose batches and KV follow the
requests in flight. ``--workload fixed`` sends one prompt size (the router
benchmark's minimal workers: states repeat, so most per-state tables are kept
from earlier requests); ``--workload varied`` draws prompt and output sizes from
wide ranges, so most states are new (the cost of a table the policy has not
seen). With ``--before REF`` the same run also times the policy as it was at git
commit ``REF`` (loaded from ``git show`` into a temporary module) and checks
that both pick the same instances with the same reasons.

    python bench/ecoroute_decision_cost.py [--before 777f860] [--requests 3000]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from voltana.predictor.profile import default_profile
from voltana.schemas.config import SloConfig
from voltana.services.router.policies import ClusterView, InstanceView, RouteRequest
from voltana.services.router.policies.ecoroute import EcoRoutePolicy

POLICY_PATH = "services/router/policies/ecoroute.py"


def load_old(ref: str) -> type:
    """EcoRoutePolicy as it was at ``ref`` (a temporary module, never committed)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{ref}:{POLICY_PATH}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "ecoroute_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ecoroute_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ecoroute_before"] = mod
    spec.loader.exec_module(mod)
    return mod.EcoRoutePolicy  # type: ignore[no-any-return]


def workload(n: int, varied: bool, seed: int) -> list[tuple[Any, ...]]:
    """(prefill view, decode view, request, now) per request of a 2P2D cluster."""
    rnd = random.Random(seed)
    out = []
    queued = [0, 0]
    decode: list[list[tuple[int, int]]] = [[], []]  # per decode instance: (tokens, ends at step)
    now = 100.0
    for i in range(n):
        now += 0.004
        n_in = rnd.randint(50, 6000) if varied else 1024
        n_out = rnd.randint(1, 800) if varied else 128
        keys = tuple(rnd.randint(0, 50) * 100 + j for j in range(n_in // 256)) if varied else ()
        req = RouteRequest(
            request_id=f"r{i}",
            input_tokens=n_in,
            max_new_tokens=n_out,
            arrival_t=now - 0.001,
            prefix_keys=keys,
            prefix_block_tokens=256 if keys else 0,
        )
        for d in decode:
            d[:] = [x for x in d if x[1] > i]
        queued = [max(q - n_in * rnd.randint(0, 2), 0) for q in queued]
        pv = ClusterView(
            InstanceView(
                instance=f"p{j}", role="prefill", queued_prefill_tokens=q, oldest_wait_s=0.002
            )
            for j, q in enumerate(queued)
        )
        dv = ClusterView(
            InstanceView(
                instance=f"d{j}",
                role="decode",
                in_flight_requests=len(d),
                in_flight_tokens=sum(t for t, _ in d),
            )
            for j, d in enumerate(decode)
        )
        out.append((pv, dv, req, now))
        queued[i % 2] += n_in
        decode[i % 2].append((n_in + n_out, i + rnd.randint(1, 40)))
    return out


def run(cls: type, steps: list[tuple[Any, ...]], side: int) -> tuple[float, list[Any]]:
    """us per decision of one side (0 prefill, 1 decode) and the selections."""
    pol = cls(default_profile("h100", "llama-3.1-8b"), SloConfig())
    rng = np.random.default_rng(0)
    picks = []
    clock = time.process_time
    spent = 0.0
    for step in steps:
        view, req, now = step[side], step[2], step[3]
        t0 = clock()
        sel = pol.select(view, req, now, rng)
        pol.on_dispatch(sel.instance, req, now)
        spent += clock() - t0
        picks.append((sel.instance, sel.reason))
    return spent / len(steps) * 1e6, picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="decisions per side and run")
    ap.add_argument("--before", default=None, help="git commit of the policy to compare with")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the best is kept)")
    args = ap.parse_args()
    policies: dict[str, type] = {"now": EcoRoutePolicy}
    if args.before:
        policies = {f"at {args.before}": load_old(args.before), **policies}
    for name in ("fixed", "varied"):
        steps = workload(args.requests, name == "varied", seed=1)
        picks: dict[str, list[Any]] = {}
        for label, cls in policies.items():
            cost = []
            for side in (0, 1):
                best = min(run(cls, steps, side)[0] for _ in range(args.repeats))
                cost.append(best)
                picks.setdefault(label, []).extend(run(cls, steps, side)[1])
            print(
                f"{name:6s} {label:>14s}: prefill {cost[0]:6.1f} us  decode {cost[1]:6.1f} us"
                f"  both {sum(cost):6.1f} us/request"
            )
        if len(picks) == 2:
            a, b = picks.values()
            print(f"{name:6s} same picks and reasons: {a == b} ({len(a)} decisions)")


if __name__ == "__main__":
    main()
