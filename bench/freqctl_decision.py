"""Decision time of every clock controller (the pure part), p50/p99 in microseconds.

Each policy decides on the same seeded stream of engine states (decode and
prefill instances, busy and idle, occasional queues), with time advancing as
telemetry would (every 50 ms). Also times the profile lookups controllers and
routers make. Run:

    .venv/bin/python bench/freqctl_decision.py [--n 20000] [--gpu h100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from voltana.predictor.profile import default_profile
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.services.freqctl.controllers import POLICIES, ControlInput, make_controller


def states(n: int, seed: int) -> list[ControlInput]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        role = "decode" if rng.random() < 0.5 else "prefill"
        busy = rng.random() < 0.9
        b = int(rng.integers(1, 400)) if busy else 0
        out.append(
            ControlInput(
                instance=f"{role}-{i % 4}",
                role=role,
                t=0.05 * i,
                queue_reqs=int(rng.random() < 0.1) * int(rng.integers(1, 5)),
                running_reqs=b,
                batch_size=float(b),
                kv_tokens=float(b * rng.integers(100, 2000)),
                prefill_tokens=float(rng.integers(1, 16_000)) if busy else 0.0,
                oldest_wait_s=float(rng.uniform(0, 0.5)) if busy else 0.0,
                observed_itl_s=float(rng.uniform(0.01, 0.05)) if role == "decode" else None,
                observed_ttft_s=float(rng.uniform(0.1, 1.0)) if role == "prefill" else None,
                current_clock_mhz=None,
            )
        )
    return out


def timed(fn: Callable[..., object], args_list: Sequence[tuple[object, ...]]) -> np.ndarray:
    out = np.empty(len(args_list))
    clock = time.perf_counter_ns
    for i, a in enumerate(args_list):
        t0 = clock()
        fn(*a)
        out[i] = clock() - t0
    return out / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the figures as JSON")
    args = ap.parse_args()
    prof = default_profile(args.gpu, args.model)
    inputs = states(args.n, args.seed)
    slo = SloConfig(ttft_s=0.6, itl_s=0.03)
    rows: dict[str, dict[str, float]] = {}
    for policy in POLICIES:
        ctl = make_controller(ControllerConfig(policy=policy, slo=slo, static_clock_mhz=1410), prof)
        for inp in inputs[:500]:  # warm-up
            ctl.decide(inp, inp.t + 0.01)
        ctl.reset()
        us = timed(ctl.decide, [(inp, inp.t + 0.01) for inp in inputs])
        rows[f"decide {policy}"] = summary(us)
    lookups: dict[str, tuple[Callable[..., object], Sequence[tuple[object, ...]]]] = {
        "profile.decode_latency_s": (prof.decode_latency_s, [(1410, 37.5, 40_000)] * args.n),
        "profile.prefill_latency_s": (prof.prefill_latency_s, [(1395.5, 3000)] * args.n),
        "profile.decode_latency_table_s": (prof.decode_latency_table_s, [(37.5, 40_000)] * args.n),
    }
    for name, (fn, a) in lookups.items():
        rows[name] = summary(timed(fn, a))
    t = Table(
        title=f"freqctl decision time ({args.n} decisions, {prof.gpu} profile, "
        f"{len(prof.clocks_mhz)} clocks)"
    )
    for col in ("what", "p50 µs", "p99 µs", "mean µs"):
        t.add_column(col, justify="right" if col != "what" else "left")
    for name, r in rows.items():
        t.add_row(name, f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['mean_us']:.1f}")
    Console().print(t)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "n": args.n,
                    "gpu": prof.gpu,
                    "clocks": len(prof.clocks_mhz),
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


def summary(us: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
    }


if __name__ == "__main__":
    raise SystemExit(main())
