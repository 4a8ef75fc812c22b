"""A stand-in for the pynvml module with NVML's calling conventions (no GPU on CI machines)."""

from __future__ import annotations

import types
from typing import Any

H100_SM_MHZ = list(range(1980, 344, -15))


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


def fake_pynvml(
    count: int = 2,
    *,
    unsupported: frozenset[str] = frozenset(),
    energy_mj: list[int] | None = None,
    pstate_max: int = 1980,
    fail: dict[str, int] | None = None,
    privileged: bool = True,
) -> Any:
    """A pynvml-shaped module.

    ``unsupported`` names calls answering NOT_SUPPORTED, ``fail`` calls answering
    the given code; setters answer NO_PERMISSION unless ``privileged``. ``calls``
    counts some reads; ``driver`` records every set and reset.
    """
    energy = list(energy_mj or [1_000_000, 1_050_000, 1_100_000])
    calls = {"init": 0, "shutdown": 0, "energy": 0, "app_clock": 0, "pstate": 0}
    driver: list[tuple[Any, ...]] = []
    fail = fail or {}

    def guard(name: str) -> None:
        if name in fail:
            raise FakeNvmlError(fail[name])
        if name in unsupported:
            raise FakeNvmlError(3)

    def dev(name: str, value: Any) -> Any:
        def fn(handle: int, *args: Any) -> Any:
            guard(name)
            if name in calls:
                calls[name] += 1
            return value(handle, *args) if callable(value) else value

        return fn

    def setter(name: str) -> Any:
        def fn(*args: Any) -> None:
            driver.append((name, *args))
            guard(name)
            if not privileged:
                raise FakeNvmlError(4)

        return fn

    def init() -> None:
        guard("init")
        calls["init"] += 1

    def total_energy(handle: int) -> int:
        guard("energy")
        calls["energy"] += 1
        return energy.pop(0) if len(energy) > 1 else energy[0]

    field = types.SimpleNamespace(nvmlReturn=0, value=types.SimpleNamespace(uiVal=312_500))
    return types.SimpleNamespace(
        NVMLError=FakeNvmlError,
        NVML_CLOCK_GRAPHICS=0,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0,
        NVML_PSTATE_0=0,
        NVML_FI_DEV_POWER_INSTANT=186,
        calls=calls,
        driver=driver,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: 100 + i,
        nvmlDeviceGetName=dev("name", b"NVIDIA H100 80GB HBM3"),
        nvmlDeviceGetMaxClockInfo=dev("max_clock", 1980),
        nvmlDeviceGetPowerUsage=dev("power", 300_000),
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetClockInfo=dev("clock", lambda h, t: 1755 if t == 1 else 2619),
        nvmlDeviceGetApplicationsClock=dev("app_clock", 1755),
        nvmlDeviceGetMinMaxClockOfPState=dev("pstate", (345, pstate_max)),
        nvmlDeviceGetCurrentClocksEventReasons=dev("throttle", 0x4),
        nvmlDeviceGetUtilizationRates=dev("util", types.SimpleNamespace(gpu=87, memory=40)),
        nvmlDeviceGetMemoryInfo=dev("memory", types.SimpleNamespace(used=2 * 2**30)),
        nvmlDeviceGetEnforcedPowerLimit=dev("power_limit", 700_000),
        nvmlDeviceGetTemperature=dev("temperature", 51),
        nvmlDeviceGetFieldValues=dev("fields", lambda h, ids: [field]),
        nvmlDeviceGetSupportedMemoryClocks=dev("memory_clocks", [2619]),
        nvmlDeviceGetSupportedGraphicsClocks=dev("sm_clocks", lambda h, mem: list(H100_SM_MHZ)),
        nvmlDeviceSetGpuLockedClocks=setter("set"),
        nvmlDeviceResetGpuLockedClocks=setter("reset"),
    )
