"""Cumulative energy that never goes backwards, from a device counter or from power.

Both NVML and the emulator report energy as a raw counter that restarts at zero
when the driver reloads or the emulator restarts; GPUs without a counter get one
integrated from power readings.
"""

from __future__ import annotations


class EnergyCounter:
    """Turns a raw cumulative energy counter into one that never resets or wraps.

    NVML's total-energy counter (mJ since the driver loaded) restarts at zero
    when the driver reloads; an emulator restart does the same. A reading below
    the previous one is taken as a restart from zero, so the increment is the
    new raw value itself. The published value starts at the first raw reading,
    so it matches the device's own counter until the first restart.
    """

    __slots__ = ("_last_raw", "_total", "resets")

    def __init__(self) -> None:
        self._last_raw: int | None = None
        self._total = 0
        self.resets = 0

    def update(self, raw_mj: int) -> float:
        """Feed one raw reading (mJ); return the corrected cumulative energy in J."""
        if self._last_raw is None:
            self._total = raw_mj
        elif raw_mj >= self._last_raw:
            self._total += raw_mj - self._last_raw
        else:
            self.resets += 1
            self._total += raw_mj
        self._last_raw = raw_mj
        return self._total / 1000.0


class PowerIntegrator:
    """Software energy counter for GPUs without one: trapezoid over power samples."""

    __slots__ = ("_last_mono_ns", "_last_power_w", "_total_j")

    def __init__(self) -> None:
        self._last_mono_ns: int | None = None
        self._last_power_w = 0.0
        self._total_j = 0.0

    def update(self, mono_ns: int, power_w: float) -> float:
        """Feed one power reading; return the integrated energy in J."""
        if self._last_mono_ns is not None and mono_ns > self._last_mono_ns:
            dt_s = (mono_ns - self._last_mono_ns) / 1e9
            self._total_j += 0.5 * (self._last_power_w + power_w) * dt_s
        self._last_mono_ns = mono_ns
        self._last_power_w = power_w
        return self._total_j
