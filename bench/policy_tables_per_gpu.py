"""The policy table on every GPU model: voltana against EcoFreq (both variants), static max and default clocks.

One simulated cluster (2 prefill + 2 decode instances of Llama-3.1-8B, TP 1) per GPU
model (``a100``, ``h100``, ``h200``), a ShareGPT-like Poisson load at two rates and two
SLOs, the same seeded workload for every policy. Lengths: lognormal, input mean 161 and
output mean 338 tokens (ShareGPT's means as the vLLM paper reports them, Kwon et al.,
SOSP 2023; not re-derived here). ``--lengths azure`` uses the simulator's defaults
(the packaged Azure conversation trace's means, 1155 / 211) instead.

The check it prints per cell: the project's controller (``voltana``) must not use more
energy than EcoFreq's two-level variant (``ecofreq-2level``) at equal or better SLO
attainment. A cell where it does is marked ``LOSES``; a cell where voltana's
attainment is lower is marked ``lower attainment`` (a different trade, reported as
such). Savings are stated against ``default`` (the driver's clocks, no lock) first, then
against ``static-max``; every figure is modelled (the simulator's GPU model).

    .venv/bin/python bench/policy_tables_per_gpu.py --jobs 2
    .venv/bin/python bench/policy_tables_per_gpu.py --gpus h100 --rates 4 --slos relaxed

Writes ``--out`` (JSON: every row, the workload, the settings, the check per cell).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from voltana.groundtruth.gpu_specs import GPUS
from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import LengthDist, synthetic

ROOT = Path(__file__).resolve().parents[1]
POLICY_NAMES = ["static-max", "default", "ecofreq", "ecofreq-2level", "voltana"]
LENGTHS = {"sharegpt": (161.0, 338.0), "azure": (1155.0, 211.0)}
# (TTFT s, ITL s). The project's tight and relaxed SLOs (docs/results.md); on the A100,
# whose top-clock decode step is 13-16 ms for this load, "tight" is 500 ms / 20 ms.
MATCH_MARGINS = (0.15, 0.2, 0.3, 0.4)
SLOS = {
    "relaxed": {"a100": (1.0, 0.03), "h100": (1.0, 0.03), "h200": (1.0, 0.03)},
    "tight": {"a100": (0.5, 0.02), "h100": (0.3, 0.015), "h200": (0.3, 0.015)},
}
KEYS = (
    "energy_j",
    "energy_per_output_token_j",
    "slo_attainment",
    "ttft_attainment",
    "itl_attainment",
    "itl_token_attainment",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "requests",
    "output_tokens",
)


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """All policies on one (GPU, rate, SLO): the same workload and profile for each."""
    t0 = time.perf_counter()
    inp, out = LENGTHS[cell["lengths"]]
    wl = synthetic(
        rate_rps=cell["rate"],
        duration_s=cell["duration"],
        arrival="poisson",
        input_len=LengthDist("lognormal", inp, 0.9, 16, 16384),
        output_len=LengthDist("lognormal", out, 1.0, 1, 4096),
        seed=cell["seed"],
    )
    ttft, itl = SLOS[cell["slo"]][cell["gpu"]]
    cfg = SimConfig(
        cluster=ClusterSpec.parse("2p2d", gpu=cell["gpu"], model="llama-3.1-8b", tp=1),
        slo=SloConfig(ttft_s=ttft, itl_s=itl),
        seed=cell["seed"],
    )
    profile = profile_for(cfg)
    rows = {}
    for name in POLICY_NAMES:
        s = run_policy(wl, POLICIES[name], cfg, profile).summary()
        rows[name] = {k: s.get(k) for k in KEYS}
    matched = None
    # Where voltana attains less than ecofreq-2level, find its energy at equal attainment:
    # voltana with a wider SLO margin (its own setting; the SLO itself is unchanged).
    target = rows["ecofreq-2level"]["slo_attainment"]
    if rows["voltana"]["slo_attainment"] < target:
        for margin in MATCH_MARGINS:
            slo = msgspec.structs.replace(cfg.slo, margin=margin)
            s = run_policy(
                wl, POLICIES["voltana"], msgspec.structs.replace(cfg, slo=slo), profile
            ).summary()
            matched = {"slo_margin": margin, **{k: s.get(k) for k in KEYS}}
            if s["slo_attainment"] >= target:
                break
    return {
        **cell,
        "slo_ttft_s": ttft,
        "slo_itl_s": itl,
        "rows": rows,
        "voltana_matched": matched,
        "wall_s": time.perf_counter() - t0,
    }


def check(rows: dict[str, dict[str, Any]], matched: dict[str, Any] | None) -> dict[str, Any]:
    """voltana against ecofreq-2level: energy at equal or better attainment.

    ``LOSES``: more energy at equal or better attainment. ``lower attainment``: voltana
    at its default margin attains less; then ``matched`` (voltana with a wider margin)
    decides, if it reached the attainment.
    """
    v, e = rows["voltana"], rows["ecofreq-2level"]
    out: dict[str, Any] = {
        "voltana_energy_vs_2level": round(v["energy_j"] / e["energy_j"] - 1.0, 4),
        "attainment_diff": round(v["slo_attainment"] - e["slo_attainment"], 6),
    }
    if v["slo_attainment"] >= e["slo_attainment"]:
        out["verdict"] = "ok" if v["energy_j"] <= e["energy_j"] else "LOSES"
        return out
    out["verdict"] = "lower attainment"
    if matched is not None and matched["slo_attainment"] >= e["slo_attainment"]:
        ratio = matched["energy_j"] / e["energy_j"]
        out["matched_margin"] = matched["slo_margin"]
        out["matched_energy_vs_2level"] = round(ratio - 1.0, 4)
        out["verdict"] = "ok at equal attainment" if ratio <= 1.0 else "LOSES"
    return out


def saving(row: dict[str, Any], ref: dict[str, Any]) -> float:
    return 1.0 - row["energy_j"] / ref["energy_j"]


def print_cell(c: dict[str, Any]) -> None:
    rows = c["rows"]
    print(
        f"\n{c['gpu']} | {c['rate']:g} req/s | {c['slo']} SLO (TTFT {c['slo_ttft_s'] * 1e3:.0f} ms, "
        f"ITL {c['slo_itl_s'] * 1e3:.0f} ms) | {rows['static-max']['requests']} requests"
    )
    print(
        "| policy | energy kJ | vs default | vs static max | SLO att. | ITL tok att. "
        "| TTFT p99 ms | ITL p50 ms | ITL p99 ms | J/out tok |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in POLICY_NAMES:
        r = rows[name]
        print(
            f"| {name} | {r['energy_j'] / 1e3:.1f} | {saving(r, rows['default']):+.1%} "
            f"| {saving(r, rows['static-max']):+.1%} | {r['slo_attainment']:.2%} "
            f"| {r['itl_token_attainment']:.2%} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} "
            f"| {r['itl_p99_ms']:.1f} | {r['energy_per_output_token_j']:.4f} |"
        )
    k, m = c["check"], c["voltana_matched"]
    if m is not None:
        print(
            f"| voltana, SLO margin {m['slo_margin']:.2f} | {m['energy_j'] / 1e3:.1f} "
            f"| {saving(m, rows['default']):+.1%} | {saving(m, rows['static-max']):+.1%} "
            f"| {m['slo_attainment']:.2%} | {m['itl_token_attainment']:.2%} | {m['ttft_p99_ms']:.0f} "
            f"| {m['itl_p50_ms']:.1f} | {m['itl_p99_ms']:.1f} | {m['energy_per_output_token_j']:.4f} |"
        )
    matched = (
        f"; at equal attainment (margin {k['matched_margin']:.2f}) {k['matched_energy_vs_2level']:+.1%}"
        if "matched_margin" in k
        else ""
    )
    print(
        f"voltana vs ecofreq-2level: energy {k['voltana_energy_vs_2level']:+.1%}, attainment "
        f"{k['attainment_diff'] * 100:+.2f} points{matched} -> {k['verdict']}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--gpus", default="a100,h100,h200", help="comma-separated (default: %(default)s)"
    )
    ap.add_argument(
        "--rates", default="4,12", help="requests/s, comma-separated (default: %(default)s)"
    )
    ap.add_argument(
        "--slos", default="relaxed,tight", help="comma-separated (default: %(default)s)"
    )
    ap.add_argument("--lengths", default="sharegpt", choices=sorted(LENGTHS), help="length means")
    ap.add_argument(
        "--duration", type=float, default=300.0, help="seconds of arrivals (default: %(default)s)"
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="workload and noise seed (default: %(default)s)"
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="cells run in parallel (default: %(default)s)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench/results/policy_tables_per_gpu.json",
        help="JSON to write",
    )
    args = ap.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    bad = [g for g in gpus if g not in GPUS]
    if bad:
        ap.error(f"unknown GPU {bad[0]!r}; choose from {', '.join(sorted(GPUS))}")
    slos = [s.strip() for s in args.slos.split(",") if s.strip()]
    if any(s not in SLOS for s in slos):
        ap.error(f"unknown SLO in {args.slos!r}; choose from {', '.join(SLOS)}")
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--rates must be numbers, got {args.rates!r}")
    if not rates or min(rates) <= 0 or args.duration <= 0 or args.jobs < 1:
        ap.error("rates and --duration must be positive, --jobs at least 1")
    cells = [
        {
            "gpu": g,
            "rate": r,
            "slo": s,
            "lengths": args.lengths,
            "duration": args.duration,
            "seed": args.seed,
        }
        for g in gpus
        for s in slos
        for r in rates
    ]
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, c in enumerate(pool.map(run_cell, cells), 1):
            c["check"] = check(c["rows"], c["voltana_matched"])
            done.append(c)
            print(
                f"[{i}/{len(cells)}] {c['gpu']} {c['rate']:g} req/s {c['slo']}: {c['wall_s']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    for c in done:
        print_cell(c)
    losses = [c for c in done if c["check"]["verdict"] == "LOSES"]
    print(
        f"\n{len(done)} cells; voltana uses more energy than ecofreq-2level at equal or better attainment in {len(losses)}"
    )
    doc = {
        "command": "bench/policy_tables_per_gpu.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "cluster": "2p2d, llama-3.1-8b, tp 1",
        "policies": POLICY_NAMES,
        "lengths": {
            "name": args.lengths,
            "input_mean": LENGTHS[args.lengths][0],
            "output_mean": LENGTHS[args.lengths][1],
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "cells": done,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(msgspec.to_builtins(doc), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if losses else 0


if __name__ == "__main__":
    sys.exit(main())
