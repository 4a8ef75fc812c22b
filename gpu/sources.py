"""GPU power/clock sources behind one protocol.

A source reads a fixed set of GPUs and returns one :class:`GpuSample` per GPU
per call. Sources are synchronous on purpose: NVML calls block, so the
telemetry service runs ``sample()`` in a worker thread and the same classes
serve plain scripts (``bench/gpu/nvml_sample.py``) without an event loop.

This module imports only msgspec and the standard library, so it can be used
on a GPU host with nothing but pynvml, msgspec, structlog and numpy installed.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import msgspec

SourceKind = Literal["nvml", "emulated"]


class GpuSample(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one GPU.

    ``energy_j`` is the source's cumulative energy counter, corrected so that it
    never goes backwards (see :class:`EnergyCounter`). ``t_ns`` is wall-clock
    Unix ns (for messages); ``mono_ns`` is ``time.monotonic_ns()`` at the same
    moment (for intervals, immune to clock steps). Optional readings are None
    where the GPU or driver does not support them.
    """

    index: int
    t_ns: int
    mono_ns: int
    power_w: float
    energy_j: float
    sm_clock_mhz: int
    source: SourceKind
    name: str | None = None
    power_instant_w: float | None = None
    app_clock_mhz: int | None = None
    locked_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    util_gpu_pct: float | None = None
    mem_used_mib: float | None = None
    temperature_c: float | None = None
    energy_from_power: bool = False
    """True when the GPU has no energy counter and ``energy_j`` integrates ``power_w``."""
    energy_fresh: bool = True
    """False when the counter was not re-read for this sample (``energy_j`` repeats)."""
    energy_t_ns: int | None = None
    """Wall time of the counter read (None = ``t_ns``)."""
    energy_mono_ns: int | None = None
    """Monotonic time of the counter read (None = ``mono_ns``)."""


@runtime_checkable
class GpuSource(Protocol):
    """Anything that can read a fixed set of GPUs."""

    kind: SourceKind

    @property
    def indices(self) -> tuple[int, ...]:
        """The node-global GPU indices this source reads, in sample order."""
        ...

    def sample(self) -> list[GpuSample]:
        """Read every GPU once. Raises ``GpuError`` when a required reading fails."""
        ...

    def close(self) -> None:
        """Release the backend (NVML handle, HTTP connection). Idempotent."""
        ...


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
