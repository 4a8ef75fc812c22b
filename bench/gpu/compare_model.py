"""Compare the emulator's GPU model with real probe runs, and refit its H100 knobs to them.

Usage:

    .venv/bin/python bench/gpu/compare_model.py                 # table: model vs run(s)
    python bench/gpu/compare_model.py --fit [--legacy PATH]     # refit (needs scipy)

Reads the probe files written by ``bench/gpu/llm_probe.py`` (default: the two H100
runs in bench/results/). The lent GPU ran at default clocks, which is what the model
calls a request for the maximum clock (1980 MHz on an H100): the model throttles
that request to its power cap itself, so its effective clock is compared with the
median SM clock NVML reported. A run made under a locked clock (on a GPU of your
own, see docs/gpu-in-the-loop.md) is compared at that clock. ``--fit`` also takes the earlier probe in
../shared/data/calibration (``--legacy``; the emulator's own tests hold the model
to it), fits the knobs in ``FIT_KNOBS`` to all runs at once, and prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from power_sampler import ensure_voltana

ensure_voltana()

from voltana.services.emulator.gpu_model import (  # noqa: E402
    GPUS,
    MODELS,
    GpuModel,
    IterCost,
    decode_bucket,
)

ROOT = Path(__file__).resolve().parents[2]
RUNS = [ROOT / "bench/results/h100_llm_probe.json", ROOT / "bench/results/h100_llm_probe_run2.json"]
LEGACY = ROOT.parent / "shared/data/calibration/h100_llama8b_shape_probe.json"
TOLERANCE = 0.10
FIT_KNOBS = [
    "sm_power_w",
    "hbm_power_w",
    "mem_sm_activity",
    "weight_bw_eff",
    "kv_bw_eff",
    "decode_compute_eff",
    "prefill_linear_eff",
    "prefill_attn_eff",
    "prefill_half_tokens",
    "prefill_linear_activity",
    "prefill_attn_activity",
    "decode_fixed_s",
    "prefill_fixed_s",
    "roofline_sharpness",
]


@dataclass(frozen=True)
class Point:
    """One measured point: what ran, and what the GPU did (default clocks)."""

    source: str
    kind: str  # "prefill" | "decode"
    size: int  # prefill: new tokens; decode: batch size
    kv_tokens: int  # decode: KV tokens per sequence before the step
    time_s: float
    power_w: float
    clock_mhz: float  # median SM clock NVML reported
    excluded: str  # why the model is not held to it ("" = it is)
    requested_mhz: int | None = None  # a locked clock, if the run had one (None: default)

    def label(self) -> str:
        if self.kind == "prefill":
            return f"prefill T={self.size}"
        return f"decode B={self.size} K={self.kv_tokens}"


def exclusion(kind: str, size: int, kv_tokens: int, graph: bool = True) -> str:
    """Why a measured point lies outside what the model describes ("" where it does not).

    - Eager prefill: launch-bound at small T; engines replay graphs or batch more.
    - Decode at a batch an engine would pad (129 -> 256): the probe ran it unpadded.
    - Decode of one sequence over >= 2048 KV tokens: PyTorch's attention kernel runs
      one block per (sequence, KV head), 8 blocks on 132 SMs, and read that KV at
      about 0.33 TB/s; serving engines split the KV length over blocks (FlashInfer,
      FA3 split-KV). From 16 sequences (128 blocks) on, the probe reads KV at the
      model's rate again.
    """
    if kind == "prefill" and not graph:
        return "eager prefill (launch-bound)"
    if kind == "decode" and decode_bucket(size) != size:
        return f"batch {size} unpadded (engine pads to {decode_bucket(size)})"
    if kind == "decode" and size == 1 and kv_tokens >= 2048:
        return "one sequence, long KV: probe attention not split over KV"
    return ""


def locked_clock_mhz(doc: dict[str, Any]) -> int | None:
    """The SM clock a run was locked to, from the P0 range NVML reported (None: default).

    NVML has no getter for locked clocks, but a lock narrows the P0 clock range:
    a P0 maximum under the board's maximum is the locked clock (as the telemetry
    source reports it).
    """
    nvml = doc.get("info", {}).get("nvml") or {}
    rng, top = nvml.get("pstate0_sm_clock_range_mhz"), nvml.get("max_sm_clock_mhz")
    if rng and top and 0 < int(rng[1]) < int(top):
        return int(rng[1])
    return None


def probe_points(doc: dict[str, Any], source: str) -> list[Point]:
    """Points of one ``llm_probe.py`` results file (errored points skipped)."""
    out = []
    lock = locked_clock_mhz(doc)
    for r in doc.get("prefill", []):
        if "error" in r:
            continue
        out.append(
            Point(
                source, "prefill", r["tokens"], 0, r["time_s_median"], r["avg_power_w"],
                r["sm_clock_mhz_median"], exclusion("prefill", r["tokens"], 0, r["graph"]), lock,
            )
        )  # fmt: skip
    for r in doc.get("decode", []):
        if "error" in r:
            continue
        b, k = r["batch"], r["kv_tokens"]
        out.append(
            Point(
                source, "decode", b, k, r["time_s_median"], r["avg_power_w"],
                r["sm_clock_mhz_median"], exclusion("decode", b, k), lock,
            )
        )  # fmt: skip
    return out


def legacy_points(doc: dict[str, Any]) -> list[Point]:
    """Points of the earlier probe (../shared/data/calibration), in its own format."""
    out = []
    for r in doc["prefill"]:
        why = "eager prefill (launch-bound)" if r["tokens"] < 1024 else ""
        out.append(
            Point("legacy", "prefill", r["tokens"], 0, r["ms"] / 1e3, r["avg_power_w"],
                  r["sm_mhz_med"], why)
        )  # fmt: skip
    for r in doc["decode"]:
        b, k = r["batch"], r["context"]
        out.append(
            Point("legacy", "decode", b, k, r["ms"] / 1e3, r["avg_power_w"], r["sm_mhz_med"],
                  exclusion("decode", b, k))
        )  # fmt: skip
    return out


def model_cost(model: GpuModel, p: Point) -> IterCost:
    """The model for point ``p`` at its locked clock, else at default clocks (the maximum)."""
    f = p.requested_mhz or model.max_clock_mhz
    if p.kind == "prefill":
        return model.prefill(f, p.size)
    return model.decode(f, p.size, p.size * p.kv_tokens)


def compare(model: GpuModel, points: list[Point]) -> list[dict[str, Any]]:
    """Per point: measured and modelled time, power, energy, clock, and relative errors."""
    rows = []
    for p in points:
        c = model_cost(model, p)
        e_meas = p.power_w * p.time_s
        rows.append(
            {
                "source": p.source,
                "point": p.label(),
                "excluded": p.excluded,
                "time_ms": 1e3 * p.time_s,
                "model_time_ms": 1e3 * c.time_s,
                "time_err": c.time_s / p.time_s - 1.0,
                "power_w": p.power_w,
                "model_power_w": c.power_w,
                "power_err": c.power_w / p.power_w - 1.0,
                "energy_j": e_meas,
                "model_energy_j": c.energy_j,
                "energy_err": c.energy_j / e_meas - 1.0,
                "clock_mhz": p.clock_mhz,
                "model_clock_mhz": c.effective_clock_mhz,
                "clock_err": c.effective_clock_mhz / p.clock_mhz - 1.0,
            }
        )
    return rows


# Published serving runs the emulator's own tests hold the model to (within 25%):
# ML.ENERGY leaderboard v3, vLLM, H100 at 700 W, Llama-3.1-8B, ~1.5k tokens of context.
# (batch, ITL s, power W)
ML_ENERGY = [(8, 7.3e-3, 486), (32, 8.9e-3, 560), (128, 16.5e-3, 669), (256, 26.1e-3, 691),
             (512, 47.4e-3, 688)]  # fmt: skip
HINGE = 0.095
"""Relative error from which a point's residual grows steeply (the 10% bound, less margin)."""


def fit(model: GpuModel, points: list[Point]) -> GpuModel:
    """Refit ``FIT_KNOBS`` to the in-domain points of every run at once.

    The objective is the sum of squared log errors of time, power and clock, plus a
    steep penalty on every error past ``HINGE`` (so the fit prefers many points
    inside 10% to a smaller sum of squares), on power-capped clocks past 15% and on
    the ML.ENERGY serving runs past 22% (the emulator's tests hold those at 25%).
    Derivative-free search copes with the kinks of the penalty and the clock steps.
    """
    from scipy.optimize import differential_evolution, minimize

    pts = [p for p in points if not p.excluded]
    base = model.gpu
    x0 = np.array([getattr(base, k) for k in FIT_KNOBS], dtype=float)

    def build(x: np.ndarray) -> GpuModel:
        spec = replace(base, **dict(zip(FIT_KNOBS, (float(v) for v in x), strict=True)))
        return GpuModel(spec, model.model, model.tp)

    def over(err: float, bound: float) -> float:
        return max(0.0, abs(err) - bound) ** 2

    def objective(x: np.ndarray) -> float:
        m = build(x)
        total = 0.0
        for p in pts:
            c = model_cost(m, p)
            et, ep = c.time_s / p.time_s - 1.0, c.power_w / p.power_w - 1.0
            ef = c.effective_clock_mhz / p.clock_mhz - 1.0
            ee = (1.0 + et) * (1.0 + ep) - 1.0
            total += np.log1p(et) ** 2 + np.log1p(ep) ** 2 + 0.1 * np.log1p(ef) ** 2
            # The earlier probe is what the emulator's own tests hold the model to
            # (10% on time and power, 12% on decode energy, 16% on capped clocks): keep
            # it inside those bounds first, then bring the new runs inside 10%.
            # (The emulator's tests use the table's rounded values: hence 9% there.)
            w, h = (30000.0, 0.09) if p.source == "legacy" else (300.0, HINGE)
            hinge_e = 0.11 if p.kind == "decode" else h
            total += w * (over(et, h) + over(ep, h) + over(ee, hinge_e) + over(ef, 0.15))
        for b, itl_s, pw in ML_ENERGY:
            c = m.decode(m.max_clock_mhz, b, b * 1500)
            e = over(c.time_s / itl_s - 1.0, 0.22) + over(c.power_w / pw - 1.0, 0.22)
            total += 3000.0 * e
        return float(total)

    lo, hi = x0 * 0.3, x0 * 3.0
    for i, k in enumerate(FIT_KNOBS):
        if k.endswith("_eff") or k in ("mem_sm_activity", "prefill_linear_activity"):
            hi[i] = 1.0
        if k.endswith("_activity"):
            hi[i] = min(hi[i], 1.2)
    # Fit in units of the starting values so every knob moves on the same scale: a
    # global search (differential evolution, seeded) and a local polish (Powell).
    bounds = list(zip(lo / x0, hi / x0, strict=True))
    glob = differential_evolution(
        lambda z: objective(z * x0), bounds, seed=1, popsize=12, maxiter=60,
        polish=False, tol=1e-8, init="sobol", x0=np.ones_like(x0),
    )  # fmt: skip
    res = minimize(
        lambda z: objective(z * x0),
        glob.x,
        method="Powell",
        bounds=bounds,
        options={"maxfev": 4000, "xtol": 1e-4, "ftol": 1e-8},
    )
    print(f"fit: objective {objective(x0):.4g} -> {res.fun:.4g}")
    return build(res.x * x0)


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'run':7s} {'point':22s} {'t_ms':>7s} {'model':>7s} {'err':>6s}  {'P_W':>5s} "
        f"{'model':>5s} {'err':>6s}  {'MHz':>5s} {'model':>5s}  note"
    )
    for r in rows:
        print(
            f"{r['source']:7s} {r['point']:22s} {r['time_ms']:7.2f} {r['model_time_ms']:7.2f} "
            f"{100 * r['time_err']:+5.1f}%  {r['power_w']:5.0f} {r['model_power_w']:5.0f} "
            f"{100 * r['power_err']:+5.1f}%  {r['clock_mhz']:5.0f} {r['model_clock_mhz']:5d}  "
            f"{r['excluded'] or ''}"
        )
    held = [r for r in rows if not r["excluded"]]
    worst_t = max(abs(r["time_err"]) for r in held)
    worst_p = max(abs(r["power_err"]) for r in held)
    worst_e = max(abs(r["energy_err"]) for r in held)
    print(
        f"in-domain points: {len(held)}; worst |error|: time {100 * worst_t:.1f}%, "
        f"power {100 * worst_p:.1f}%, energy {100 * worst_e:.1f}%"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, default=RUNS)
    ap.add_argument("--legacy", type=Path, default=LEGACY, help="earlier probe (old format)")
    ap.add_argument("--fit", action="store_true", help="refit FIT_KNOBS (needs scipy)")
    ap.add_argument("--out", type=Path, default=None, help="write the comparison as JSON")
    args = ap.parse_args(argv)

    points: list[Point] = []
    for i, path in enumerate(args.runs):
        points += probe_points(json.loads(path.read_text()), f"run{i + 1}")
    if args.legacy.exists():
        points += legacy_points(json.loads(args.legacy.read_text()))
    else:
        print(f"(earlier probe {args.legacy} absent: comparing with the runs only)")
    model = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
    if args.fit:
        fitted = fit(model, points)
        print("fitted knobs (GPUS['h100']):")
        for k in FIT_KNOBS:
            print(f"    {k}={getattr(fitted.gpu, k):.4g},")
        model = fitted
    rows = compare(model, points)
    _print(rows)
    if args.out:
        args.out.write_text(json.dumps({"tolerance": TOLERANCE, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
