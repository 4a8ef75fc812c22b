"""NVML device (pynvml): readings, and SM clock locks.

Reading needs no privilege; locking or resetting the SM clock needs root
(CAP_SYS_ADMIN), otherwise NVML answers ``NVML_ERROR_NO_PERMISSION``. Locked
clocks outlive the process, so the actuator resets on every exit path and on
start (a crashed predecessor may have left a lock behind, and NVML cannot
report a lock back, so the first reset is always issued).

Power, energy and SM clock are required readings; every other reading is
optional and becomes None where the GPU or driver answers NOT_SUPPORTED (the
answer is remembered so unsupported calls are not retried at 20 Hz).

Read costs differ by three orders of magnitude. Measured on an H100 (driver
580.159.04, see docs/telemetry.md): power, clocks, utilisation, memory,
temperature, throttle reasons and the instantaneous-power field take about
5 us each; the total-energy counter takes about 4 ms of CPU per read (reads
of two threads do not overlap) and only moves every 100 ms; the applications
clock about 1 ms and the P0 clock range about 1.5 ms. So the counter is read
every ``energy_period_s`` and those two clocks every ``slow_period_s``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from voltana.common.errors import GpuError
from voltana.gpu.device import AppliedClocks, BackendName, GpuSample, check_gpu, check_supported
from voltana.gpu.energy import EnergyCounter, PowerIntegrator
from voltana.gpu.nvml_errors import OPTIONAL_MISSING, import_pynvml, nvml_error


class NvmlDevice:
    """The GPUs of this host through NVML.

    Args:
        gpus: NVML device indices (as ``nvidia-smi`` numbers them), in sample
            order; None: every GPU NVML reports.
        nvml: the pynvml module (injectable so the mapping logic can be tested
            on machines without GPUs).
        energy_period_s: least time between reads of a GPU's energy counter;
            0 (default) reads it on every ``sample()``, which callers measuring
            energy over short windows need. The telemetry service passes
            ``1 / rates.energy_hz``.
        slow_period_s: least time between reads of the applications clock and
            the P0 clock range (which change only when someone sets clocks).

    Raises:
        GpuError: NVML cannot be loaded/initialised, or an index does not exist.
    """

    name: BackendName = "nvml"

    def __init__(
        self,
        gpus: Sequence[int] | None = None,
        *,
        nvml: ModuleType | None = None,
        energy_period_s: float = 0.0,
        slow_period_s: float = 1.0,
    ) -> None:
        if gpus is not None and not gpus:
            raise GpuError("no GPU indices given to the NVML device")
        self._nvml = nvml if nvml is not None else import_pynvml()
        self._energy_period_ns = int(0.9 * energy_period_s * 1e9)  # tick jitter tolerance
        self._slow_period_ns = int(0.9 * slow_period_s * 1e9)
        self._open = False
        self._unsupported: set[tuple[int, str]] = set()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise nvml_error(exc, "initialisation") from exc
        self._open = True
        try:
            self._indices = self._check_indices(gpus)
            self._handles = [
                self._call(self._nvml.nvmlDeviceGetHandleByIndex, "get handle", i, i)
                for i in self._indices
            ]
            self._names = [
                self._optional(i, "name", self._nvml.nvmlDeviceGetName, h)
                for h, i in zip(self._handles, self._indices, strict=True)
            ]
            self._max_clock = [
                self._optional(
                    i,
                    "max_clock",
                    self._nvml.nvmlDeviceGetMaxClockInfo,
                    h,
                    self._nvml.NVML_CLOCK_SM,
                )
                for h, i in zip(self._handles, self._indices, strict=True)
            ]
        except BaseException:
            self.close()
            raise
        self._slot = {gpu: k for k, gpu in enumerate(self._indices)}
        self._energy = [EnergyCounter() for _ in self._indices]
        self._integrators = [PowerIntegrator() for _ in self._indices]
        # per GPU: (mono_ns, t_ns, energy_j) of the last counter read
        self._last_energy: list[tuple[int, int, float] | None] = [None] * len(self._indices)
        self._energy_due_ns = [0] * len(self._indices)
        # per GPU: (mono_ns, app_clock_mhz, locked_clock_mhz) of the last slow read
        self._slow: list[tuple[int, int | None, int | None] | None] = [None] * len(self._indices)
        self._supported: dict[int, list[int]] = {}
        self._applied = AppliedClocks()

    def _check_indices(self, gpus: Sequence[int] | None) -> tuple[int, ...]:
        count = int(self._call(self._nvml.nvmlDeviceGetCount, "count GPUs", None))
        if gpus is None:
            if not count:
                raise GpuError("NVML sees no GPU on this host")
            return tuple(range(count))
        indices = tuple(dict.fromkeys(int(i) for i in gpus))
        bad = [i for i in indices if i < 0 or i >= count]
        if bad:
            raise GpuError(
                f"GPU index {bad[0]} out of range: this node has {count} GPU(s)"
                + (f" (indices 0..{count - 1})" if count else ""),
                gpu=bad[0],
                code="INDEX_OUT_OF_RANGE",
            )
        return indices

    @property
    def indices(self) -> tuple[int, ...]:
        return self._indices

    def _call(self, fn: Any, action: str, gpu: int | None, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise nvml_error(exc, action, gpu) from exc

    def _optional(self, gpu: int, field: str, fn: Any, *args: Any) -> Any:
        """An optional reading: None where unsupported (and never asked again)."""
        key = (gpu, field)
        if key in self._unsupported:
            return None
        try:
            value = fn(*args)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) in OPTIONAL_MISSING:
                self._unsupported.add(key)
                return None
            raise nvml_error(exc, f"read {field}", gpu) from exc
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return value

    # -- readings ---------------------------------------------------------------------

    def _instant_power_w(self, handle: Any, gpu: int) -> float | None:
        nv = self._nvml
        fid = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        if fid is None:
            return None
        values = self._optional(gpu, "power_instant", nv.nvmlDeviceGetFieldValues, handle, [fid])
        if values is None:
            return None
        v = values[0]
        if int(v.nvmlReturn) != 0:
            self._unsupported.add((gpu, "power_instant"))
            return None
        return float(v.value.uiVal) / 1000.0

    def _pstate_locked_clock_mhz(self, handle: Any, gpu: int, max_clock: int | None) -> int | None:
        """Upper bound of the P0 SM clock range, where below the GPU's max clock.

        NVML has no getter for locked clocks; a lock narrows the P0 range, so a
        P0 maximum under the board maximum is reported as the locked clock.
        """
        nv = self._nvml
        fn = getattr(nv, "nvmlDeviceGetMinMaxClockOfPState", None)
        if fn is None or max_clock is None:
            return None
        rng = self._optional(
            gpu, "pstate_range", fn, handle, nv.NVML_CLOCK_GRAPHICS, nv.NVML_PSTATE_0
        )
        if not rng:
            return None
        hi = int(rng[1])
        return hi if 0 < hi < int(max_clock) else None

    def _throttle(self, handle: Any, gpu: int) -> int:
        nv = self._nvml
        fn = (
            getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        value = self._optional(gpu, "throttle", fn, handle)
        return int(value) if value is not None else 0

    def _read_energy(
        self, k: int, mono_ns: int, t_ns: int, power_w: float
    ) -> tuple[float, bool, bool, int, int]:
        """(energy_j, from_power, fresh, read t_ns, read mono_ns) for GPU ``k``."""
        h, gpu = self._handles[k], self._indices[k]
        last = self._last_energy[k]
        if last is not None and mono_ns < self._energy_due_ns[k]:
            return last[2], False, False, last[1], last[0]
        raw_mj = self._optional(gpu, "energy", self._nvml.nvmlDeviceGetTotalEnergyConsumption, h)
        if raw_mj is None:
            return self._integrators[k].update(mono_ns, power_w), True, True, t_ns, mono_ns
        energy_j = self._energy[k].update(int(raw_mj))
        if last is None:  # spread the GPUs' later reads over the period, not one tick
            n = len(self._indices)
            self._energy_due_ns[k] = mono_ns + self._energy_period_ns * (k + 1) // n
        else:
            self._energy_due_ns[k] = mono_ns + self._energy_period_ns
        self._last_energy[k] = (mono_ns, t_ns, energy_j)
        return energy_j, False, True, t_ns, mono_ns

    def _slow_clocks(self, k: int, mono_ns: int) -> tuple[int | None, int | None]:
        """Applications clock and locked clock, re-read every ``slow_period_s``."""
        cached = self._slow[k]
        if cached is not None and mono_ns - cached[0] < self._slow_period_ns:
            return cached[1], cached[2]
        nv, h, gpu = self._nvml, self._handles[k], self._indices[k]
        app = self._optional(
            gpu, "app_clock", nv.nvmlDeviceGetApplicationsClock, h, nv.NVML_CLOCK_SM
        )
        app_mhz = int(app) if app is not None else None
        locked = self._pstate_locked_clock_mhz(h, gpu, self._max_clock[k])
        self._slow[k] = (mono_ns, app_mhz, locked)
        return app_mhz, locked

    def _read_one(self, k: int) -> GpuSample:
        nv = self._nvml
        h, gpu = self._handles[k], self._indices[k]
        t_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        power_w = self._call(nv.nvmlDeviceGetPowerUsage, "read power", gpu, h) / 1000.0
        sm_clock = int(
            self._call(nv.nvmlDeviceGetClockInfo, "read SM clock", gpu, h, nv.NVML_CLOCK_SM)
        )
        energy_j, from_power, fresh, e_t_ns, e_mono_ns = self._read_energy(
            k, mono_ns, t_ns, power_w
        )
        util = self._optional(gpu, "util", nv.nvmlDeviceGetUtilizationRates, h)
        mem = self._optional(gpu, "memory", nv.nvmlDeviceGetMemoryInfo, h)
        limit_mw = self._optional(gpu, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
        temp = self._optional(
            gpu, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
        )
        app, locked = self._slow_clocks(k, mono_ns)
        mem_clock = self._optional(
            gpu, "mem_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM
        )
        max_clock = self._max_clock[k]
        return GpuSample(
            index=gpu,
            t_ns=t_ns,
            mono_ns=mono_ns,
            power_w=power_w,
            energy_j=energy_j,
            sm_clock_mhz=sm_clock,
            source="nvml",
            name=self._names[k],
            power_instant_w=self._instant_power_w(h, gpu),
            app_clock_mhz=app,
            locked_clock_mhz=locked,
            mem_clock_mhz=int(mem_clock) if mem_clock is not None else None,
            max_sm_clock_mhz=int(max_clock) if max_clock is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            throttle_reasons=self._throttle(h, gpu),
            util_gpu_pct=float(util.gpu) if util is not None else None,
            mem_used_mib=mem.used / 2**20 if mem is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            energy_from_power=from_power,
            energy_fresh=fresh,
            energy_t_ns=e_t_ns,
            energy_mono_ns=e_mono_ns,
        )

    def sample(self) -> list[GpuSample]:
        """Read every GPU once (a few ms for 8 GPUs)."""
        if not self._open:
            raise GpuError("NVML device is closed", code="CLOSED")
        return [self._read_one(k) for k in range(len(self._indices))]

    # -- clock setters ------------------------------------------------------------------

    def _handle(self, gpu: int) -> Any:
        check_gpu(gpu, self._indices)
        return self._handles[self._slot[gpu]]

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        cached = self._supported.get(gpu)
        if cached is None:
            cached = self._supported[gpu] = self._read_supported_clocks(gpu)
        return list(cached)

    def _read_supported_clocks(self, gpu: int) -> list[int]:
        """The SM clocks listed for the highest memory clock, descending."""
        nv, handle = self._nvml, self._handle(gpu)
        mem = self._call(
            nv.nvmlDeviceGetSupportedMemoryClocks, "read supported memory clocks", gpu, handle
        )
        if not mem:
            raise GpuError(f"GPU {gpu}: NVML lists no memory clocks", gpu=gpu, code="NO_CLOCKS")
        sm = self._call(
            nv.nvmlDeviceGetSupportedGraphicsClocks,
            "read supported SM clocks",
            gpu,
            handle,
            max(int(m) for m in mem),
        )
        clocks = sorted({int(c) for c in sm}, reverse=True)
        if not clocks:
            raise GpuError(f"GPU {gpu}: NVML lists no SM clocks", gpu=gpu, code="NO_CLOCKS")
        return clocks

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        handle = self._handle(gpu)

        def lock() -> None:
            self._call(
                self._nvml.nvmlDeviceSetGpuLockedClocks, "set locked clocks", gpu, handle, mhz, mhz
            )

        return self._applied.lock(gpu, mhz, lock)

    def reset_locked_clocks(self, gpu: int) -> bool:
        handle = self._handle(gpu)
        return self._applied.reset(
            gpu,
            lambda: self._call(
                self._nvml.nvmlDeviceResetGpuLockedClocks, "reset locked clocks", gpu, handle
            ),
        )

    def locked_clock_mhz(self, gpu: int) -> int | None:
        check_gpu(gpu, self._indices)
        return self._applied.get(gpu)

    def read_locked_clock_mhz(self, gpu: int) -> int | None:
        """The lock the driver reports now (P0 range top under the board maximum), uncached."""
        handle = self._handle(gpu)
        return self._pstate_locked_clock_mhz(handle, gpu, self._max_clock[self._slot[gpu]])

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
