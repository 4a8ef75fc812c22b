"""The driver's own clock behaviour with no lock (the ``default`` clock policy).

Under load an unlocked GPU boosts to its maximum clock (and the power cap throttles
it, as ``GpuModel`` does for every clock). When work stops it does not fall to its
idle floor at once: it holds the boost clock, and the idle power of that clock, for
``default_idle_hold_s``, then its clock decays exponentially (time constant
``default_idle_decay_s``) toward ``default_idle_floor_mhz``. Idle power follows the
clock through ``gpu_clock.idle_power_w`` (linear in the clock), so energy over an
idle stretch has a closed form. The constants live in ``GpuSpec``; their sources
and which of them are modelled are in docs/gpu-model.md ("The default clock policy").
The GPUs' hold is ``math.inf`` (measured: a serving process's CUDA context keeps the
boost clock), which every function here handles: the clock never leaves the maximum.
"""

from __future__ import annotations

import math

import msgspec
from voltana.groundtruth.gpu_clock import idle_power_w
from voltana.groundtruth.gpu_specs import GpuSpec

__all__ = [
    "default_idle_clock_mhz",
    "default_idle_energy_j",
    "default_idle_power_w",
    "with_idle_overrides",
]


def _floor_mhz(g: GpuSpec) -> float:
    f = g.default_idle_floor_mhz
    return float(g.min_clock_mhz if f is None else f)


def _excess(g: GpuSpec, idle_for_s: float) -> float:
    """Share (1 -> 0) of the held clock above the floor still held after ``idle_for_s``."""
    over = idle_for_s - g.default_idle_hold_s
    if over <= 0:
        return 1.0
    if g.default_idle_decay_s <= 0:
        return 0.0
    return math.exp(-over / g.default_idle_decay_s)


def default_idle_clock_mhz(g: GpuSpec, idle_for_s: float) -> float:
    """SM clock of an unlocked GPU idle for ``idle_for_s`` seconds (not rounded to a step)."""
    lo = _floor_mhz(g)
    return lo + (g.max_clock_mhz - lo) * _excess(g, idle_for_s)


def default_idle_power_w(g: GpuSpec, idle_for_s: float) -> float:
    """Power of one unlocked GPU idle for ``idle_for_s`` seconds."""
    return idle_power_w(g, default_idle_clock_mhz(g, idle_for_s))


def _excess_integral(g: GpuSpec, a: float, b: float) -> float:
    """Integral of ``_excess`` over idle ages [a, b] (seconds at the held clock, in effect)."""
    hold = g.default_idle_hold_s
    held = max(0.0, min(b, hold) - a)
    lo, hi = max(a, hold), b
    if hi <= lo:
        return held
    tau = g.default_idle_decay_s
    if tau <= 0:
        return held
    return held + tau * (math.exp(-(lo - hold) / tau) - math.exp(-(hi - hold) / tau))


def default_idle_energy_j(g: GpuSpec, idle_from_s: float, idle_to_s: float) -> float:
    """Energy of one unlocked GPU between idle ages ``idle_from_s`` and ``idle_to_s`` (seconds
    since its last work ended), exactly: power is linear in the clock, the clock exponential."""
    if idle_to_s <= idle_from_s:
        return 0.0
    p_floor = idle_power_w(g, _floor_mhz(g))
    p_held = idle_power_w(g, g.max_clock_mhz)
    return p_floor * (idle_to_s - idle_from_s) + (p_held - p_floor) * _excess_integral(
        g, idle_from_s, idle_to_s
    )


def with_idle_overrides(g: GpuSpec, hold_s: float | None, decay_s: float | None) -> GpuSpec:
    """``g`` with the default clocks' idle hold and decay replaced where given.

    Raises:
        ValueError: a negative or NaN override (the message says the idle hold and decay
            must be >= 0 s, or inf).
    """
    changes: dict[str, float] = {}
    if hold_s is not None:
        changes["default_idle_hold_s"] = hold_s
    if decay_s is not None:
        changes["default_idle_decay_s"] = decay_s
    if not all(v >= 0 for v in changes.values()):  # NaN fails too
        raise ValueError("the default clocks' idle hold and decay must be >= 0 s (or inf)")
    return msgspec.structs.replace(g, **changes) if changes else g
