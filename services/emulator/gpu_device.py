"""One emulated GPU: what NVML would show of it (clocks, power, energy, throttle reasons).

The device integrates its energy counter from the ground-truth model: busy intervals at
the iteration's modelled power, idle time at the clock-dependent idle power. Time is
passed in (seconds, monotonic or virtual), so the same class serves the real-time
emulator and tests. Locked clocks mirror ``nvmlDeviceSetGpuLockedClocks``: busy work
runs at the top of the locked range, an idle GPU drops to its bottom. With no lock (the
driver's default clocks) work runs at the maximum clock and an idle GPU holds that clock
for a while after its last work, then decays to its idle floor
(``groundtruth.default_clock``; the emulator starts as just after work: it has loaded
the model).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from voltana.common.errors import GpuError
from voltana.groundtruth.default_clock import (
    default_idle_clock_mhz,
    default_idle_energy_j,
    default_idle_power_w,
)
from voltana.groundtruth.gpu_model import GpuModel, IterCost

__all__ = ["THROTTLE_GPU_IDLE", "THROTTLE_SW_POWER_CAP", "EmulatedGpu"]

THROTTLE_GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
THROTTLE_APP_CLOCKS = 0x2  # nvmlClocksEventReasonApplicationsClocksSetting (locked clocks)
THROTTLE_SW_POWER_CAP = 0x4  # nvmlClocksEventReasonSwPowerCap
_UTIL_WINDOW_S = 1.0


@dataclass
class _Busy:
    t_start: float
    t_end: float  # planned end; extended by end_busy if the iteration ran late
    cost: IterCost


class EmulatedGpu:
    """A GPU of an emulated instance. Not thread-safe; one event loop owns it."""

    def __init__(self, index: int, model: GpuModel, now_s: float) -> None:
        self.index = index
        self.model = model
        self.locked_min_mhz: int | None = None
        self.locked_max_mhz: int | None = None
        self._energy_j = 0.0
        self._t_accounted = now_s
        self._idle_from = now_s  # end of the last work (default clocks: the idle age's origin)
        self._busy: _Busy | None = None
        self._last_cost: IterCost | None = None
        self._busy_log: deque[tuple[float, float]] = deque()
        self.mem_used_mib = 0.0

    # ----- clocks ------------------------------------------------------------------
    @property
    def supported_sm_clocks_mhz(self) -> list[int]:
        return list(self.model.supported_clocks_mhz)

    def set_locked_clocks(self, min_mhz: int, max_mhz: int, now_s: float) -> None:
        """Lock the SM clock range; raises GpuError for unsupported values or min > max."""
        supported = set(self.model.supported_clocks_mhz)
        for v in (min_mhz, max_mhz):
            if v not in supported:
                raise GpuError(
                    f"{v} MHz is not a supported SM clock of GPU {self.index} "
                    f"({self.model.min_clock_mhz}-{self.model.max_clock_mhz} MHz in "
                    f"{self.model.gpu.clock_step_mhz} MHz steps)",
                    gpu=self.index,
                    code="NVML_ERROR_INVALID_ARGUMENT",
                )
        if min_mhz > max_mhz:
            raise GpuError(
                f"min_mhz {min_mhz} > max_mhz {max_mhz}",
                gpu=self.index,
                code="NVML_ERROR_INVALID_ARGUMENT",
            )
        self.advance(now_s)
        self.locked_min_mhz, self.locked_max_mhz = min_mhz, max_mhz

    def reset_locked_clocks(self, now_s: float) -> None:
        self.advance(now_s)
        self.locked_min_mhz = self.locked_max_mhz = None

    @property
    def busy_clock_mhz(self) -> int:
        """Clock requested for work: the top of the locked range, else the maximum."""
        return self.locked_max_mhz if self.locked_max_mhz is not None else self.model.max_clock_mhz

    @property
    def idle_clock_mhz(self) -> int:
        """Idle clock under a lock (its bottom); unlocked: the clock just after work."""
        return self.locked_min_mhz if self.locked_min_mhz is not None else self.model.max_clock_mhz

    def _idle_clock_at(self, now_s: float) -> int:
        if self.locked_min_mhz is not None:
            return self.locked_min_mhz
        f = default_idle_clock_mhz(self.model.gpu, now_s - self._idle_from)
        return self.model.nearest_clock_mhz(f + 1e-6)

    def _idle_power_at(self, now_s: float) -> float:
        if self.locked_min_mhz is not None:
            return self.model.idle_power_w(self.locked_min_mhz)
        return default_idle_power_w(self.model.gpu, now_s - self._idle_from)

    def _idle_energy(self, t0: float, t1: float) -> float:
        if self.locked_min_mhz is not None:
            return self.model.idle_power_w(self.locked_min_mhz) * (t1 - t0)
        return default_idle_energy_j(self.model.gpu, t0 - self._idle_from, t1 - self._idle_from)

    # ----- work and energy -----------------------------------------------------------
    def begin_busy(self, t_start: float, cost: IterCost) -> None:
        """An iteration of modelled cost ``cost`` starts at ``t_start``."""
        self.advance(t_start)
        self._busy = _Busy(t_start, t_start + cost.time_s, cost)
        self._last_cost = cost

    def switch_busy(self, t_switch: float, cost: IterCost, t_end: float) -> None:
        """The iteration in flight runs on at ``cost``'s power from ``t_switch`` to ``t_end``."""
        self.advance(t_switch)
        if self._busy is not None:
            self._busy = _Busy(self._busy.t_start, t_end, cost)
        self._last_cost = cost

    def end_busy(self, t_end: float) -> None:
        """The iteration ended at ``t_end`` (later than planned if the host lagged)."""
        if self._busy is not None:
            self._busy.t_end = max(self._busy.t_end, t_end)
        self.advance(t_end)
        self._busy = None
        self._idle_from = max(self._idle_from, t_end)

    def advance(self, now_s: float) -> None:
        """Integrate energy up to ``now_s``."""
        t0 = self._t_accounted
        if now_s <= t0:
            return
        b = self._busy
        if b is not None:
            busy_end = min(now_s, b.t_end)
            if busy_end > t0:
                self._energy_j += b.cost.power_w * (busy_end - t0)
                self._log_busy(t0, busy_end)
                t0 = busy_end
        if now_s > t0:
            if b is not None and now_s > b.t_end:
                # Ran past the model's time (host lag): still busy, at the same power.
                self._energy_j += b.cost.power_w * (now_s - t0)
                self._log_busy(t0, now_s)
            else:
                self._energy_j += self._idle_energy(t0, now_s)
        self._t_accounted = now_s

    def _log_busy(self, t0: float, t1: float) -> None:
        self._busy_log.append((t0, t1))
        while self._busy_log and self._busy_log[0][1] < t1 - _UTIL_WINDOW_S:
            self._busy_log.popleft()

    def energy_mj(self, now_s: float) -> int:
        self.advance(now_s)
        return int(self._energy_j * 1e3)

    def power_w(self, now_s: float) -> float:
        self.advance(now_s)
        if self._busy is not None:
            return self._busy.cost.power_w
        return self._idle_power_at(now_s)

    def sm_clock_mhz(self, now_s: float | None = None) -> int:
        """Clock now (``now_s``; default: the last accounted time)."""
        if self._busy is not None:
            return self._busy.cost.effective_clock_mhz
        return self._idle_clock_at(self._t_accounted if now_s is None else now_s)

    def throttle_reasons(self) -> int:
        bits = 0
        if self._busy is None:
            bits |= THROTTLE_GPU_IDLE
        elif self._busy.cost.power_capped:
            bits |= THROTTLE_SW_POWER_CAP
        if self.locked_max_mhz is not None and self.locked_max_mhz < self.model.max_clock_mhz:
            bits |= THROTTLE_APP_CLOCKS
        return bits

    def util_gpu_pct(self, now_s: float) -> float:
        self.advance(now_s)
        lo = now_s - _UTIL_WINDOW_S
        busy = sum(max(0.0, t1 - max(t0, lo)) for t0, t1 in self._busy_log)
        return min(100.0, 100.0 * busy / _UTIL_WINDOW_S)

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """The admin-API GPU object (docs/emulator.md)."""
        power = self.power_w(now_s)
        return {
            "index": self.index,
            "name": self.model.gpu.name,
            "sm_clock_mhz": self.sm_clock_mhz(now_s),
            "locked_clock_mhz": self.locked_max_mhz,
            "locked_min_clock_mhz": self.locked_min_mhz,
            "max_sm_clock_mhz": self.model.max_clock_mhz,
            "supported_sm_clocks_mhz": self.supported_sm_clocks_mhz,
            "mem_clock_mhz": self.model.gpu.mem_clock_mhz,
            "power_w": round(power, 3),
            "energy_mj": self.energy_mj(now_s),
            "power_limit_w": self.model.gpu.power_limit_w,
            "throttle_reasons": self.throttle_reasons(),
            "util_gpu_pct": round(self.util_gpu_pct(now_s), 2),
            "mem_used_mib": round(self.mem_used_mib, 1),
            "temperature_c": round(30.0 + 0.045 * power, 1),
        }
