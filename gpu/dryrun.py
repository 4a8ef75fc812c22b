"""Dry-run clock backend: real reads, no writes.

Wraps a real backend (NVML on a GPU host) for GPU indices and supported
clocks, validates every request exactly as the real backend would, and records
what it would have applied instead of applying it. Used to check a deployment
on a GPU one must not touch, and to run the actuator without privilege.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal

from voltana.common.logs import get_logger
from voltana.gpu.backends import BackendName, ClockBackend, check_gpu, check_supported


@dataclass(frozen=True, slots=True)
class DryRunAction:
    """One driver call the dry-run backend did not make."""

    t_ns: int
    gpu: int
    action: Literal["lock", "reset"]
    sm_clock_mhz: int | None
    call: str


class DryRunBackend:
    """Reads through ``inner``; setters only record and log the call they would make."""

    name: BackendName = "dry-run"

    def __init__(self, inner: ClockBackend) -> None:
        self.inner = inner
        self._mu = threading.Lock()
        self._gpus = inner.gpu_indices()
        self._locked: dict[int, int | None] = {}
        self.actions: list[DryRunAction] = []
        self._log = get_logger("actuator", backend="dry-run", source=inner.name)

    def gpu_indices(self) -> list[int]:
        return list(self._gpus)

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        check_gpu(gpu, self._gpus)
        return self.inner.supported_sm_clocks_mhz(gpu)

    def _record(self, gpu: int, action: Literal["lock", "reset"], mhz: int | None) -> None:
        source = self.inner.name
        if action == "lock":
            call = (
                f"nvmlDeviceSetGpuLockedClocks(gpu={gpu}, min={mhz}, max={mhz})"
                if source == "nvml"
                else f"POST /voltana/gpus/{gpu}/locked_clocks min={mhz} max={mhz}"
            )
        else:
            call = (
                f"nvmlDeviceResetGpuLockedClocks(gpu={gpu})"
                if source == "nvml"
                else f"DELETE /voltana/gpus/{gpu}/locked_clocks"
            )
        self.actions.append(DryRunAction(time.time_ns(), gpu, action, mhz, call))
        self._log.info("dry_run_would_apply", gpu=gpu, action=action, sm_clock_mhz=mhz, call=call)

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        with self._mu:
            if gpu in self._locked and self._locked[gpu] == mhz:
                return False
            self._record(gpu, "lock", mhz)
            self._locked[gpu] = mhz
            return True

    def reset_locked_clocks(self, gpu: int) -> bool:
        check_gpu(gpu, self._gpus)
        with self._mu:
            if gpu in self._locked and self._locked[gpu] is None:
                return False
            self._record(gpu, "reset", None)
            self._locked[gpu] = None
            return True

    def locked_clock_mhz(self, gpu: int) -> int | None:
        check_gpu(gpu, self._gpus)
        return self._locked.get(gpu)

    def close(self) -> None:
        self.inner.close()
