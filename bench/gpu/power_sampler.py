"""Background sampling of a GPU source, and per-window power/clock/energy summaries.

The probe's main thread keeps the GPU busy; this thread reads the project's
telemetry source (``voltana.gpu.nvml.NvmlDevice``, read-only)
at a fixed rate. A measurement window is a pair of host monotonic times taken
after device synchronisation, so the samples inside it saw exactly that work.
Energy over a window comes from the cumulative counter, interpolated at the
window's edges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from voltana_path import ensure_voltana

COLUMNS = (
    "t_s",
    "power_w",
    "energy_j",
    "sm_clock_mhz",
    "throttle_reasons",
    "power_instant_w",
    "temperature_c",
)
"""Columns of :meth:`Sampler.rows` (NaN where a reading is not supported)."""


class _Sample(Protocol):
    mono_ns: int
    power_w: float
    energy_j: float
    sm_clock_mhz: int
    throttle_reasons: int
    power_instant_w: float | None
    temperature_c: float | None


class _Source(Protocol):
    def sample(self) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SyntheticSample:
    """A made-up reading, for checking the probe's bookkeeping on a machine without a GPU."""

    index: int
    mono_ns: int
    power_w: float
    energy_j: float
    sm_clock_mhz: int
    throttle_reasons: int = 0
    power_instant_w: float | None = None
    temperature_c: float | None = None


class SyntheticSource:
    """Constant power, integrated energy: lets the CPU dry run exercise every code path."""

    kind = "synthetic"

    def __init__(self, power_w: float = 100.0) -> None:
        self._power_w = power_w
        self._t0 = time.monotonic_ns()

    @property
    def indices(self) -> tuple[int, ...]:
        return (0,)

    def sample(self) -> list[SyntheticSample]:
        now = time.monotonic_ns()
        e = self._power_w * (now - self._t0) / 1e9
        return [SyntheticSample(0, now, self._power_w, e, 0, 0, self._power_w, 30.0)]

    def close(self) -> None:
        return None


def open_source(kind: str, gpu: int) -> tuple[_Source, str]:
    """Open the telemetry source named ``kind``; returns it and a label for the results."""
    if kind == "synthetic":
        return SyntheticSource(), "synthetic (no GPU: constant 100 W)"
    ensure_voltana()
    from voltana.gpu.nvml import NvmlDevice

    return NvmlDevice([gpu]), "voltana.gpu.nvml.NvmlDevice"


class Sampler:
    """Reads ``source`` every ``period_s`` in a daemon thread; keeps every sample.

    Args:
        source: anything with ``sample() -> list[sample]`` (one GPU is read).
        period_s: target interval between reads.
    """

    def __init__(self, source: _Source, period_s: float = 0.02) -> None:
        self._source = source
        self._period_s = period_s
        self._rows: list[tuple[float, float, float, int, int, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self.errors: list[str] = []
        self.call_s: list[float] = []

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            c0 = time.perf_counter()
            try:
                s: _Sample = self._source.sample()[0]
                inst, temp = s.power_instant_w, s.temperature_c
                row = (
                    s.mono_ns / 1e9,
                    float(s.power_w),
                    float(s.energy_j),
                    int(s.sm_clock_mhz),
                    int(s.throttle_reasons),
                    float(inst) if inst is not None else float("nan"),
                    float(temp) if temp is not None else float("nan"),
                )
                with self._lock:
                    self._rows.append(row)
            except Exception as exc:  # the probe must finish: keep the error, go on
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self.call_s.append(time.perf_counter() - c0)
            next_t += self._period_s
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()

    def rows(self) -> np.ndarray:
        """All samples: columns t_s, power_w, energy_j, sm_mhz, throttle, instant_w, temp_c."""
        with self._lock:
            return np.array(self._rows, dtype=np.float64).reshape(-1, len(COLUMNS))

    def wait_past(self, t_s: float, timeout_s: float = 1.0) -> None:
        """Block until a sample later than ``t_s`` exists (so the window's end is bracketed)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if self._rows and self._rows[-1][0] > t_s:
                    return
            time.sleep(self._period_s / 4)


def summarize(rows: np.ndarray, t0_s: float, t1_s: float) -> dict[str, Any]:
    """Power, clock, throttle and energy of the window [t0_s, t1_s] (host monotonic s).

    Energy is the counter interpolated at both edges; average power is that over
    the window's length. Sampled power (NVML's averaged reading) and the
    instantaneous reading are reported as medians of the samples inside.
    """
    out: dict[str, Any] = {"window_s": t1_s - t0_s}
    if rows.shape[0] < 2 or t1_s <= t0_s:
        out["n_samples"] = 0
        return out
    t, e = rows[:, 0], rows[:, 2]
    inside = (t >= t0_s) & (t <= t1_s)
    bracketed = bool(t[0] <= t0_s and t[-1] >= t1_s)
    e0, e1 = np.interp([t0_s, t1_s], t, e)
    energy_j = float(e1 - e0)
    out.update(
        n_samples=int(inside.sum()),
        bracketed=bracketed,
        energy_j=energy_j,
        avg_power_w=energy_j / (t1_s - t0_s),
    )
    if inside.any():
        w = rows[inside]
        inst = w[:, 5][~np.isnan(w[:, 5])]
        throttle = 0
        for v in w[:, 4].astype(np.int64):
            throttle |= int(v)
        out.update(
            power_w_median=float(np.median(w[:, 1])),
            power_w_max=float(w[:, 1].max()),
            power_instant_w_median=float(np.median(inst)) if inst.size else None,
            sm_clock_mhz_median=float(np.median(w[:, 3])),
            sm_clock_mhz_min=int(w[:, 3].min()),
            sm_clock_mhz_max=int(w[:, 3].max()),
            sm_clock_mhz_mean=float(w[:, 3].mean()),
            throttle_reasons_or=throttle,
            throttle_fraction=float((w[:, 4] != 0).mean()),
            temperature_c_max=float(np.nanmax(w[:, 6])) if np.isfinite(w[:, 6]).any() else None,
        )
    return out


def timed_window(
    sampler: Sampler | None, sync: Callable[[], None], body: Callable[[], Any]
) -> tuple[float, float, Any]:
    """Run ``body`` between two synchronised host timestamps; returns (t0_s, t1_s, result)."""
    sync()
    t0 = time.monotonic()
    result = body()
    sync()
    t1 = time.monotonic()
    if sampler is not None:
        sampler.wait_past(t1)
    return t0, t1, result
