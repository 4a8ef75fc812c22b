"""Dry-run device: real reads, no writes.

Wraps a real device (NVML on a GPU host) for readings, GPU indices and
supported clocks, validates every request exactly as the real device would,
and records what it would have applied instead of applying it. Used to check a
deployment on a GPU one must not touch, and to run the actuator without
privilege.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from voltana.common.logs import get_logger
from voltana.gpu.device import (
    AppliedClocks,
    BackendName,
    GpuDevice,
    GpuSample,
    check_gpu,
    check_supported,
)


@dataclass(frozen=True, slots=True)
class DryRunAction:
    """One driver call the dry-run device did not make."""

    t_ns: int
    gpu: int
    action: Literal["lock", "reset"]
    sm_clock_mhz: int | None
    call: str


class DryRunDevice:
    """Reads through ``inner``; setters only record and log the call they would make."""

    name: BackendName = "dry-run"

    def __init__(self, inner: GpuDevice) -> None:
        self.inner = inner
        self._applied = AppliedClocks()
        self.actions: list[DryRunAction] = []
        self._log = get_logger("actuator", backend="dry-run", source=inner.name)

    @property
    def indices(self) -> tuple[int, ...]:
        return self.inner.indices

    def sample(self) -> list[GpuSample]:
        return self.inner.sample()

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        check_gpu(gpu, self.indices)
        return self.inner.supported_sm_clocks_mhz(gpu)

    def _record(self, gpu: int, action: Literal["lock", "reset"], mhz: int | None) -> None:
        nvml = self.inner.name == "nvml"
        if action == "lock":
            call = (
                f"nvmlDeviceSetGpuLockedClocks(gpu={gpu}, min={mhz}, max={mhz})"
                if nvml
                else f"POST /voltana/gpus/{gpu}/locked_clocks min={mhz} max={mhz}"
            )
        else:
            call = (
                f"nvmlDeviceResetGpuLockedClocks(gpu={gpu})"
                if nvml
                else f"DELETE /voltana/gpus/{gpu}/locked_clocks"
            )
        self.actions.append(DryRunAction(time.time_ns(), gpu, action, mhz, call))
        self._log.info("dry_run_would_apply", gpu=gpu, action=action, sm_clock_mhz=mhz, call=call)

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        return self._applied.lock(gpu, mhz, lambda: self._record(gpu, "lock", mhz))

    def reset_locked_clocks(self, gpu: int) -> bool:
        check_gpu(gpu, self.indices)
        return self._applied.reset(gpu, lambda: self._record(gpu, "reset", None))

    def locked_clock_mhz(self, gpu: int) -> int | None:
        check_gpu(gpu, self.indices)
        return self._applied.get(gpu)

    def close(self) -> None:
        self.inner.close()
