"""What the SM clock does to a GPU: its supported steps, memory bandwidth, dynamic and idle power.

Pure functions of a ``GpuSpec`` (and a clock), shared by the general cost path
(``GpuModel``) and the memoised decode path (``DecodeTerms``), so both evaluate
the very same expressions.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from voltana.groundtruth.gpu_specs import GpuSpec

__all__ = [
    "dynamic_power_scale",
    "idle_power_w",
    "mem_bw_bytes_s",
    "nearest_clock_mhz",
    "supported_clocks_mhz",
]


def supported_clocks_mhz(g: GpuSpec) -> list[int]:
    """The GPU's clock steps, highest first (as NVML lists them)."""
    n = (g.max_clock_mhz - g.min_clock_mhz) // g.clock_step_mhz
    return [g.max_clock_mhz - i * g.clock_step_mhz for i in range(n + 1)]


def nearest_clock_mhz(ascending: Sequence[int], clock_mhz: float) -> int:
    """The highest of ``ascending`` not above ``clock_mhz`` (the lowest if below all)."""
    if not clock_mhz >= ascending[0]:  # below all (or NaN): the min clock
        return ascending[0]
    return ascending[bisect.bisect_right(ascending, clock_mhz) - 1]


def idle_power_w(g: GpuSpec, clock_mhz: float) -> float:
    """Power of one idle GPU held at ``clock_mhz`` (static part of the power model)."""
    f = min(max(clock_mhz, g.min_clock_mhz), g.max_clock_mhz)
    x = (f - g.min_clock_mhz) / (g.max_clock_mhz - g.min_clock_mhz)
    return g.idle_min_clock_w + (g.idle_max_clock_w - g.idle_min_clock_w) * x


def _volt(g: GpuSpec, f: float) -> float:
    """V(f) / V(f_max): flat below the knee, linear above it."""
    if f <= g.volt_knee_mhz:
        return g.volt_floor
    x = (f - g.volt_knee_mhz) / (g.max_clock_mhz - g.volt_knee_mhz)
    return g.volt_floor + (1.0 - g.volt_floor) * x


def dynamic_power_scale(g: GpuSpec, f: float) -> float:
    """Relative dynamic power per unit activity: f * V(f)^2, 1.0 at f_max."""
    return (f / g.max_clock_mhz) * _volt(g, f) ** 2


def mem_bw_bytes_s(g: GpuSpec, f: float) -> float:
    """HBM bandwidth reachable at SM clock ``f`` (memory-bound kernels slow below a knee)."""
    return g.hbm_bw_bytes_s * min(1.0, f / g.mem_knee_mhz) ** g.mem_knee_exp
