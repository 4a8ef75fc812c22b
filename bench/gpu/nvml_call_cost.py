"""Wall and CPU time of each NVML read the telemetry source makes (read-only).

    python bench/gpu/nvml_call_cost.py --gpu 0

Also reports how often the energy counter and the power reading change, and
whether energy reads from two threads overlap. Needs only pynvml. Nothing
here changes a GPU setting.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pynvml as nv


def _cost(fn: Callable[[], Any], n: int) -> dict[str, float]:
    fn()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return {
        "wall_ms": (time.perf_counter() - t0) / n * 1e3,
        "cpu_ms": (time.process_time() - c0) / n * 1e3,
    }


def _change_times_ms(fn: Callable[[], Any], seconds: float) -> list[int]:
    prev, out, t0 = fn(), [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        v = fn()
        if v != prev:
            out.append(round((time.perf_counter() - t0) * 1e3))
            prev = v
        time.sleep(0.001)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("-n", type=int, default=50, help="reads per call (default 50)")
    args = ap.parse_args()
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(args.gpu)
    calls: dict[str, Callable[[], Any]] = {
        "power_usage": lambda: nv.nvmlDeviceGetPowerUsage(h),
        "total_energy": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
        "sm_clock": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        "mem_clock": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
        "app_clock": lambda: nv.nvmlDeviceGetApplicationsClock(h, nv.NVML_CLOCK_SM),
        "utilization": lambda: nv.nvmlDeviceGetUtilizationRates(h),
        "memory": lambda: nv.nvmlDeviceGetMemoryInfo(h),
        "power_limit": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h),
        "temperature": lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
        "clocks_event_reasons": lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
        "p0_clock_range": lambda: nv.nvmlDeviceGetMinMaxClockOfPState(
            h, nv.NVML_CLOCK_GRAPHICS, nv.NVML_PSTATE_0
        ),
        "power_instant_field": lambda: nv.nvmlDeviceGetFieldValues(
            h, [nv.NVML_FI_DEV_POWER_INSTANT]
        ),
    }
    result: dict[str, Any] = {"driver": nv.nvmlSystemGetDriverVersion(), "calls": {}}
    for name, fn in calls.items():
        try:
            result["calls"][name] = _cost(fn, args.n)
        except nv.NVMLError as exc:
            result["calls"][name] = {"error": str(exc)}

    def reader() -> None:
        for _ in range(25):
            nv.nvmlDeviceGetTotalEnergyConsumption(h)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["two_threads_50_energy_reads_wall_ms"] = (time.perf_counter() - t0) * 1e3
    result["energy_change_times_ms"] = _change_times_ms(calls["total_energy"], 1.5)
    result["power_usage_change_times_ms"] = _change_times_ms(calls["power_usage"], 1.0)
    nv.nvmlShutdown()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
