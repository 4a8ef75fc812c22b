"""Routing with SGLang's prefix cache: energy, prefix hit rate and SLO attainment per policy.

A synthetic multi-turn conversation workload (``sim/multiturn.py``) on a simulated
PD cluster; every routing policy runs with every clock policy on the same
requests. ``--routings`` takes routing names (one for both sides, or
``PREFILL:DECODE``), ``--clocks`` the names of ``voltana sim`` policies whose clock
controller is used (``static-max``, ``voltana``, any other entry of
``sim/policies.py``). Savings are against the first clock policy with the first
routing (by default sglang-router's default routing, ``cache_aware``, at the
top clock). All figures are modelled (the simulator's ground truth).

    .venv/bin/python bench/prefix_cache_routing.py [--clocks static-max,voltana] \\
        [--routings cache_aware,random,round_robin,ecoroute] [--duration 300]
"""

from __future__ import annotations

import argparse
import sys
import time

from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.multiturn import MultiTurnSpec, multiturn
from voltana.sim.policies import POLICIES, PolicySpec
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import LengthDist

_ROUTES = {
    "random": "random",
    "round_robin": "round-robin",
    "cache_aware": "cache-aware",
    "ecoroute": "ecoroute",
}


def _routing(name: str) -> tuple[str, str]:
    parts = name.split(":")
    if len(parts) > 2 or any(p not in _ROUTES and p not in _ROUTES.values() for p in parts):
        raise SystemExit(f"unknown routing {name!r}; choose from {', '.join(_ROUTES)}")
    pre = _ROUTES.get(parts[0], parts[0])
    dec = _ROUTES.get(parts[-1], parts[-1])
    return pre, dec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routings", default="cache_aware,random,round_robin,ecoroute")
    ap.add_argument("--clocks", default="static-max,voltana", help="sim policy names")
    ap.add_argument("--cluster", default="4p2d")
    ap.add_argument("--sessions-per-s", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=300.0, help="sessions start in [0, s)")
    ap.add_argument("--turns-mean", type=float, default=4.0)
    ap.add_argument("--system-prompt-tokens", type=int, default=1000)
    ap.add_argument("--system-prompts", type=int, default=8)
    ap.add_argument("--document-mean", type=float, default=3000.0, help="first-turn document")
    ap.add_argument("--think-time-s", type=float, default=10.0)
    ap.add_argument("--slo-ttft-s", type=float, default=0.5)
    ap.add_argument("--slo-itl-s", type=float, default=0.05)
    ap.add_argument("--kv-capacity-tokens", type=int, default=None, help="per instance")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clocks = [c for c in args.clocks.split(",") if c]
    for c in clocks:
        if c not in POLICIES:
            raise SystemExit(f"unknown clock policy {c!r}; choose from {', '.join(POLICIES)}")
    routings = [r for r in args.routings.split(",") if r]
    spec = MultiTurnSpec(
        sessions_per_s=args.sessions_per_s,
        duration_s=args.duration,
        turns_mean=args.turns_mean,
        system_prompt_tokens=args.system_prompt_tokens,
        system_prompts=args.system_prompts,
        document_tokens=LengthDist("lognormal", args.document_mean, 0.8, 16, 16384)
        if args.document_mean > 0
        else None,
        think_time_s=args.think_time_s,
    )
    wl = multiturn(spec, seed=args.seed)
    cfg = SimConfig(
        cluster=ClusterSpec.parse(args.cluster),
        slo=SloConfig(ttft_s=args.slo_ttft_s, itl_s=args.slo_itl_s),
        seed=args.seed,
        kv_capacity_override_tokens=args.kv_capacity_tokens,
    )
    profile = profile_for(cfg)
    s = wl.summary()
    print(
        f"# prefix cache and routing: {args.cluster}, {s['requests']} requests of "
        f"{len({r.request_id.split('t')[0] for r in wl.requests})} sessions over "
        f"{s['duration_s']:.0f} s, prompt mean {s['input_tokens_mean']:.0f} tokens, output mean "
        f"{s['output_tokens_mean']:.0f}; SLO TTFT {args.slo_ttft_s} s, ITL {args.slo_itl_s} s; "
        f"KV per instance {cfg.kv_capacity_tokens()} tokens (modelled)\n"
    )
    print(
        "| routing | clocks | energy kJ | saving | prefix hit rate | SLO att. | TTFT att. "
        "| TTFT p90 ms | ITL p90 ms | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref: float | None = None
    for clock in clocks:
        base = POLICIES[clock]
        for r in routings:
            pre, dec = _routing(r)
            ps = PolicySpec(f"{r}/{clock}", base.controller, pre, dec, base.static_clock)
            w0 = time.perf_counter()
            run = run_policy(wl, ps, cfg, profile)
            wall = time.perf_counter() - w0
            row = run.summary()
            e = run.energy_j
            ref = e if ref is None else ref
            hit = row.get("prefix_hit_rate")
            print(
                f"| {r} | {clock} | {e / 1e3:.1f} | {1 - e / ref:+.1%} | "
                f"{float(hit or 0):.1%} | {float(row['slo_attainment'] or 0):.2%} | "
                f"{float(row['ttft_attainment'] or 0):.2%} | {row['ttft_p90_ms']} | "
                f"{row['itl_p90_ms']} | {wall:.1f} |",
                flush=True,
            )
    print(
        f"\nsaving: 1 - energy / energy of {routings[0]} with {clocks[0]} clocks "
        "(the first row); all figures modelled"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
