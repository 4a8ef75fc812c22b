"""Compare the emulator's GPU model with real probe runs, and refit its H100 knobs to them.

Usage:

    .venv/bin/python bench/gpu/compare_model.py                 # table: model vs the H100 runs
    .venv/bin/python bench/gpu/compare_model.py --fit           # refit (needs scipy)
    .venv/bin/python bench/gpu/compare_model.py --gpu h200      # the model's prediction, no run
    .venv/bin/python bench/gpu/compare_model.py --gpu h200 --runs bench/results/h200_llm_probe.json

Every comparison ends with one line: ``time MAPE x%, power MAPE y%, energy MAPE z%
over N points`` (the points the model describes; excluded points are listed, not
counted). Without a run (``--gpu NAME`` other than h100, or ``--predict``) it prints
the model's time, power, energy and clock at the points ``llm_probe.py`` measures.

``bench/emulator_calibrate.py`` is the calibration entry point and runs ``--fit``
here: one fit, one set of data. Reads the probe files written by
``bench/gpu/llm_probe.py`` (default: the two H100 runs in bench/results/). The lent
GPU ran at default clocks, which is what the model calls a request for the maximum
clock (1980 MHz on an H100): the model throttles that request to its power cap
itself, so its effective clock is compared with the median SM clock NVML reported. A
run made under a locked clock (on a GPU of your own, see docs/gpu-in-the-loop.md) is
compared at that clock. The earlier probe in bench/results/h100_llama8b_shape_probe.json (``--legacy``;
the emulator's own tests hold the model to it) is compared and fitted as well, and
ML.ENERGY's serving runs bound the fit; ``--fit`` fits the knobs in ``FIT_KNOBS`` to
all of them at once and prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voltana_path import ensure_voltana

ensure_voltana()

from probe_points import DECODE_POINTS, PREFILL_EAGER_TOKENS, PREFILL_TOKENS  # noqa: E402
from voltana.groundtruth.gpu_model import (  # noqa: E402
    GPUS,
    MODELS,
    GpuModel,
    IterCost,
)
from voltana.groundtruth.spec_file import spec_changes  # noqa: E402
from voltana.predictor.buckets import decode_bucket  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUNS = [ROOT / "bench/results/h100_llm_probe.json", ROOT / "bench/results/h100_llm_probe_run2.json"]
LEGACY = ROOT / "bench" / "results" / "h100_llama8b_shape_probe.json"
TOLERANCE = 0.10
FIT_KNOBS = [
    "sm_power_w",
    "hbm_power_w",
    "mem_sm_activity",
    "kv_sm_activity",
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
    throttle: float = 0.0  # share of samples with NVML's power-cap throttle reason set

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
                source,
                "prefill",
                r["tokens"],
                0,
                r["time_s_median"],
                r["avg_power_w"],
                r["sm_clock_mhz_median"],
                exclusion("prefill", r["tokens"], 0, r["graph"]),
                lock,
                r["throttle_fraction"],
            )
        )
    for r in doc.get("decode", []):
        if "error" in r:
            continue
        b, k = r["batch"], r["kv_tokens"]
        out.append(
            Point(
                source,
                "decode",
                b,
                k,
                r["time_s_median"],
                r["avg_power_w"],
                r["sm_clock_mhz_median"],
                exclusion("decode", b, k),
                lock,
                r["throttle_fraction"],
            )
        )
    return out


def legacy_points(doc: dict[str, Any]) -> list[Point]:
    """Points of the earlier probe (bench/results/h100_llama8b_shape_probe.json), in its own format.

    Its single sequence at 2048 KV tokens read that KV at normal speed (7.23 ms against
    7.14 ms at 512), unlike the later runs', so only the batch-129 row is excluded.
    """
    out = []
    for r in doc["prefill"]:
        why = "eager prefill (launch-bound)" if r["tokens"] < 1024 else ""
        out.append(
            Point(
                "legacy",
                "prefill",
                r["tokens"],
                0,
                r["ms"] / 1e3,
                r["avg_power_w"],
                r["sm_mhz_med"],
                why,
            )
        )
    for r in doc["decode"]:
        b, k = r["batch"], r["context"]
        out.append(
            Point(
                "legacy",
                "decode",
                b,
                k,
                r["ms"] / 1e3,
                r["avg_power_w"],
                r["sm_mhz_med"],
                exclusion("decode", b, 0),
            )
        )
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
ML_ENERGY = [
    (8, 7.3e-3, 486),
    (32, 8.9e-3, 560),
    (128, 16.5e-3, 669),
    (256, 26.1e-3, 691),
    (512, 47.4e-3, 688),
]
# Physical bounds of each fitted knob (units as in GpuSpec).
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "sm_power_w": (600.0, 2000.0),
    "hbm_power_w": (50.0, 400.0),
    "mem_sm_activity": (0.05, 1.0),
    "kv_sm_activity": (0.05, 1.2),
    "weight_bw_eff": (0.5, 1.0),
    "kv_bw_eff": (0.5, 1.0),
    "decode_compute_eff": (0.3, 1.0),
    "prefill_linear_eff": (0.4, 1.0),
    "prefill_attn_eff": (0.2, 1.0),
    "prefill_half_tokens": (10.0, 500.0),
    "prefill_linear_activity": (0.3, 1.0),
    "prefill_attn_activity": (0.3, 1.2),
    "decode_fixed_s": (0.1e-3, 3e-3),
    "prefill_fixed_s": (0.1e-3, 5e-3),
    "roofline_sharpness": (1.0, 4.0),
}
HINGE = 0.07
"""Relative error from which a run's residual grows steeply (the 10% bound, with margin)."""
LEGACY_POWER_WEIGHT = 0.25
"""Weight of the earlier probe's decode power in the sum of squares (1 for the rest).

At 8-128 sequences it reads 7-16% below the later runs' mean at the same shapes, which
agree with each other within 5% and with ML.ENERGY's serving runs; its method is not
recorded. It still counts, at a quarter, and its penalty bounds follow the emulator's
tests: within 10% of the range the measurements of that shape span."""


def _shape_ranges(points: list[Point]) -> dict[tuple[str, int, int], tuple[float, ...]]:
    """(kind, size, kv) -> (min power, max power, min energy, max energy) over all runs."""
    acc: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for p in points:
        acc.setdefault((p.kind, p.size, p.kv_tokens), []).append((p.power_w, p.power_w * p.time_s))
    return {
        k: (min(w for w, _ in v), max(w for w, _ in v), min(e for _, e in v), max(e for _, e in v))
        for k, v in acc.items()
    }


def fit(
    model: GpuModel,
    points: list[Point],
    hinge: float = HINGE,
    legacy_power_weight: float = LEGACY_POWER_WEIGHT,
    maxiter: int = 150,
) -> GpuModel:
    """Refit ``FIT_KNOBS`` to the in-domain points of every run at once.

    The objective is the sum of squared log errors of time, power and clock, plus steep
    penalties where a test would fail: a run's time, power or energy past ``hinge``;
    the earlier probe's time past 9% and its prefill power past 9% (the emulator's tests
    hold it at 10% with rounded values), its decode power and energy outside 9% / 11%
    of the range all measurements of that shape span (the tests: 10% / 12%); a clock
    the GPU was capped at throughout past 11% (the test: 12%), a cap where it had
    none; and the ML.ENERGY serving runs past 22% (the tests: 25%). Derivative-free
    search copes with the kinks of the penalty and the clock steps.
    """
    from scipy.optimize import differential_evolution, minimize

    pts = [p for p in points if not p.excluded]
    ranges = _shape_ranges(pts)
    base = model.gpu
    h100 = base.name == GPUS["h100"].name  # ML.ENERGY's serving runs are H100 runs
    x0 = np.array([getattr(base, k) for k in FIT_KNOBS], dtype=float)

    def build(x: np.ndarray) -> GpuModel:
        spec = msgspec.structs.replace(
            base, **dict(zip(FIT_KNOBS, (float(v) for v in x), strict=True))
        )
        return GpuModel(spec, model.model, model.tp)

    def over(err: float, bound: float) -> float:
        return max(0.0, abs(err) - bound) ** 2

    def outside(value: float, lo: float, hi: float, tol: float) -> float:
        return over(value / lo - 1.0, tol) if value < lo else over(value / hi - 1.0, tol)

    def objective(x: np.ndarray) -> float:
        m = build(x)
        total = 0.0
        for p in pts:
            c = model_cost(m, p)
            et, ep = c.time_s / p.time_s - 1.0, c.power_w / p.power_w - 1.0
            ef = c.effective_clock_mhz / p.clock_mhz - 1.0
            ee = (1.0 + et) * (1.0 + ep) - 1.0
            legacy_decode = p.source == "legacy" and p.kind == "decode"
            wp = legacy_power_weight if legacy_decode else 1.0
            total += np.log1p(et) ** 2 + wp * np.log1p(ep) ** 2 + 0.1 * np.log1p(ef) ** 2
            if p.source != "legacy":
                total += 300.0 * (over(et, hinge) + over(ep, hinge) + over(ee, hinge))
            elif legacy_decode:
                p_lo, p_hi, e_lo, e_hi = ranges[(p.kind, p.size, p.kv_tokens)]
                total += 30000.0 * over(et, 0.09)
                total += 30000.0 * outside(c.power_w, p_lo, p_hi, 0.09)
                total += 30000.0 * outside(c.energy_j, e_lo, e_hi, 0.11)
            else:
                total += 30000.0 * (over(et, 0.09) + over(ep, 0.09) + over(ee, 0.09))
                total += 30000.0 * over(ef, 0.15)  # capped prefill clock (tests: 16%)
            # Capped throughout: the model caps too, near the measured clock; never
            # capped: neither is the model.
            if p.throttle >= 0.9:
                total += 300.0 * (over(ef, 0.11) + over(c.power_w / m.gpu.power_limit_w - 1, 0.04))
            elif p.source != "legacy" and p.throttle == 0.0 and c.power_capped:
                total += 3.0
        for b, itl_s, pw in ML_ENERGY if h100 else []:
            c = m.decode(m.max_clock_mhz, b, b * 1500)
            e = over(c.time_s / itl_s - 1.0, 0.22) + over(c.power_w / pw - 1.0, 0.22)
            total += 3000.0 * e
        return float(total)

    lo = np.array([FIT_BOUNDS[k][0] for k in FIT_KNOBS])
    hi = np.array([FIT_BOUNDS[k][1] for k in FIT_KNOBS])

    def knobs(z: np.ndarray) -> np.ndarray:
        return lo + z * (hi - lo)

    # Every knob on [0, 1] between its physical bounds: a global search (differential
    # evolution, seeded, not started from the current constants, so the result does
    # not depend on them) and a local polish (Powell).
    unit = [(0.0, 1.0)] * len(FIT_KNOBS)
    glob = differential_evolution(
        lambda z: objective(knobs(z)),
        unit,
        seed=1,
        popsize=12,
        maxiter=maxiter,
        polish=False,
        tol=1e-8,
        init="sobol",
    )
    res = minimize(
        lambda z: objective(knobs(z)),
        glob.x,
        method="Powell",
        bounds=unit,
        options={"maxfev": 6000, "xtol": 1e-5, "ftol": 1e-9},
    )
    print(f"fit: objective {objective(x0):.4g} (current constants) -> {res.fun:.4g}")
    return build(knobs(res.x))


def predicted_points() -> list[Point]:
    """The points ``llm_probe.py`` measures by default, with nothing measured (NaN)."""
    nan = float("nan")
    pts = [
        Point("model", "prefill", t, 0, nan, nan, nan, exclusion("prefill", t, 0, graph))
        for graph, toks in ((True, PREFILL_TOKENS), (False, PREFILL_EAGER_TOKENS))
        for t in toks
    ]
    pts += [
        Point("model", "decode", b, k, nan, nan, nan, exclusion("decode", b, k))
        for b, k in DECODE_POINTS
    ]
    return pts


def predict(model: GpuModel, points: list[Point]) -> list[dict[str, Any]]:
    """The model alone at each point (default clocks): time, power, energy, clock, cap."""
    rows = []
    for p in points:
        c = model_cost(model, p)
        label = p.label() + ("" if p.kind == "decode" or not p.excluded else " eager")
        rows.append(
            {
                "point": label,
                "kind": p.kind,
                "size": p.size,
                "kv_tokens": p.kv_tokens,
                "excluded": p.excluded,
                "model_time_ms": 1e3 * c.time_s,
                "model_power_w": c.power_w,
                "model_energy_j": c.energy_j,
                "model_clock_mhz": c.effective_clock_mhz,
                "power_capped": c.power_capped,
            }
        )
    return rows


def _print_prediction(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"model prediction for {name} at default clocks (no measurement)")
    print(f"{'point':26s} {'t_ms':>8s} {'P_W':>6s} {'E_J':>8s} {'MHz':>5s} cap  note")
    for r in rows:
        print(
            f"{r['point']:26s} {r['model_time_ms']:8.2f} {r['model_power_w']:6.0f} "
            f"{r['model_energy_j']:8.3f} {r['model_clock_mhz']:5d} "
            f"{'yes' if r['power_capped'] else 'no ':3s}  {r['excluded']}"
        )


def summary_line(rows: list[dict[str, Any]]) -> str:
    """``time MAPE x%, power MAPE y%, energy MAPE z% over N points`` (in-domain points)."""
    held = [r for r in rows if not r["excluded"]]
    if not held:
        return "time MAPE n/a, power MAPE n/a, energy MAPE n/a over 0 points"
    m = {
        k: 100 * float(np.mean([abs(r[f"{k}_err"]) for r in held]))
        for k in ("time", "power", "energy")
    }
    return (
        f"time MAPE {m['time']:.1f}%, power MAPE {m['power']:.1f}%, "
        f"energy MAPE {m['energy']:.1f}% over {len(held)} points"
    )


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
    if held:
        worst_t = max(abs(r["time_err"]) for r in held)
        worst_p = max(abs(r["power_err"]) for r in held)
        worst_e = max(abs(r["energy_err"]) for r in held)
        print(
            f"in-domain points: {len(held)}; worst |error|: time {100 * worst_t:.1f}%, "
            f"power {100 * worst_p:.1f}%, energy {100 * worst_e:.1f}%"
        )
    print(summary_line(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_pos", nargs="*", type=Path, metavar="RUN", help="same as --runs")
    ap.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="llm_probe.py results to compare (default: the two H100 runs for --gpu h100, "
        "none otherwise)",
    )
    ap.add_argument(
        "--gpu",
        default="h100",
        choices=sorted(GPUS),
        help="GPU spec of the model (default: %(default)s)",
    )
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS), help="model shape")
    ap.add_argument("--predict", action="store_true", help="the model's table only, no run")
    ap.add_argument(
        "--legacy", type=Path, default=LEGACY, help="earlier H100 probe (old format; h100 only)"
    )
    ap.add_argument("--fit", action="store_true", help="refit FIT_KNOBS (needs scipy)")
    ap.add_argument("--hinge", type=float, default=HINGE, help="runs' error bound in the fit")
    ap.add_argument(
        "--legacy-power-weight",
        type=float,
        default=LEGACY_POWER_WEIGHT,
        help="weight of the earlier probe's decode power in the fit",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    ap.add_argument(
        "--spec-out",
        type=Path,
        default=None,
        help="with --fit: write the fitted GPU as a spec file (voltana sim/plan --gpu-spec)",
    )
    args = ap.parse_args(argv)
    if args.spec_out and not args.fit:
        ap.error("--spec-out writes the fitted GPU: it needs --fit")

    model = GpuModel(GPUS[args.gpu], MODELS[args.model])
    runs = [*args.runs_pos, *args.runs]
    if not runs and args.gpu == "h100" and not args.predict:
        runs = RUNS
    if args.predict or not runs:
        if args.fit:
            ap.error("--fit needs at least one run (--runs FILE...)")
        rows = predict(model, predicted_points())
        _print_prediction(f"{args.gpu} ({model.gpu.name}, {model.model.name})", rows)
        if args.out:
            doc = {"gpu": args.gpu, "spec": msgspec.to_builtins(model.gpu), "rows": rows}
            args.out.write_text(json.dumps(doc, indent=1))
        return 0

    points: list[Point] = []
    for i, path in enumerate(runs):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            ap.error(f"cannot read probe results {path}: {exc}")
        points += probe_points(doc, f"run{i + 1}")
    if args.gpu == "h100" and args.legacy.exists():
        points += legacy_points(json.loads(args.legacy.read_text()))
    elif args.gpu == "h100":
        print(f"(earlier probe {args.legacy} absent: comparing with the runs only)")
    if not points:
        ap.error("no measured point in the runs given")
    if args.fit:
        model = fit(model, points, args.hinge, args.legacy_power_weight)
        print(f"fitted knobs (GPUS[{args.gpu!r}]):")
        for k in FIT_KNOBS:
            print(f"    {k}={getattr(model.gpu, k):.4g},")
        if args.spec_out:
            refit = msgspec.structs.replace(model.gpu, name=f"{model.gpu.name} (refit)")
            args.spec_out.write_text(json.dumps(spec_changes(args.gpu, refit), indent=1) + "\n")
            print(f"wrote {args.spec_out}: voltana sim --gpu {args.gpu} --gpu-spec {args.spec_out}")
    rows = compare(model, points)
    _print(rows)
    if args.out:
        doc = {"gpu": args.gpu, "tolerance": TOLERANCE, "summary": summary_line(rows), "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
