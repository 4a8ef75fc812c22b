"""Refit a GPU spec's knobs to probe runs (``compare_model.py --fit``; needs scipy).

One objective over every run at once: squared log errors plus steep penalties where the
emulator's tests would fail, searched between fixed physical bounds per knob, seeded, so
the result does not depend on the constants it starts from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voltana_path import ensure_voltana

ensure_voltana()

from probe_data import Point, model_cost  # noqa: E402
from voltana.groundtruth.gpu_model import GPUS, GpuModel  # noqa: E402

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
