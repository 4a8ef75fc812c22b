"""NVML clock backend: ``nvmlDeviceSetGpuLockedClocks`` / ``nvmlDeviceResetGpuLockedClocks``.

Reading supported clocks needs no privilege; locking or resetting needs root
(CAP_SYS_ADMIN), otherwise NVML answers ``NVML_ERROR_NO_PERMISSION``. Locked
clocks outlive the process, so the actuator resets on every exit path and on
start (a crashed predecessor may have left a lock behind).

NVML errors are mapped once, through :data:`NVML_ERRORS`, onto ``GpuError``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from voltana.common.errors import GpuError
from voltana.gpu.backends import BackendName, check_gpu, check_supported

T = TypeVar("T")

NVML_ERRORS: dict[str, str] = {
    "NVML_ERROR_NO_PERMISSION": "setting clocks needs root (CAP_SYS_ADMIN); run the actuator "
    "as the voltana-actuator systemd unit or use --backend dry-run",
    "NVML_ERROR_NOT_SUPPORTED": "this GPU does not support locked clocks (Volta or later needed)",
    "NVML_ERROR_INVALID_ARGUMENT": "NVML rejected the argument (clock or GPU index out of range)",
    "NVML_ERROR_GPU_IS_LOST": "the GPU fell off the bus; it needs a reset or reboot",
    "NVML_ERROR_DRIVER_NOT_LOADED": "no NVIDIA driver is loaded on this host",
    "NVML_ERROR_LIBRARY_NOT_FOUND": "libnvidia-ml.so was not found (no NVIDIA driver installed?)",
    "NVML_ERROR_UNINITIALIZED": "NVML was not initialised",
    "NVML_ERROR_NOT_FOUND": "no such GPU",
    "NVML_ERROR_GPU_NOT_FOUND": "no such GPU",
    "NVML_ERROR_INSUFFICIENT_POWER": "the GPU's power cables are not connected properly",
    "NVML_ERROR_TIMEOUT": "NVML timed out",
    "NVML_ERROR_IN_USE": "another process holds the setting",
    "NVML_ERROR_RESET_REQUIRED": "the GPU needs a reset before clocks can change",
    "NVML_ERROR_UNKNOWN": "NVML reported an unknown error",
}
"""NVML error name -> what it means for clock control (the hint in the GpuError)."""


def _error_name(nvml: ModuleType, value: int) -> str:
    for attr in dir(nvml):
        if attr.startswith("NVML_ERROR_") and getattr(nvml, attr) == value:
            return attr
    return f"NVML_ERROR_{value}"


class NvmlBackend:
    """Locks SM clocks with NVML on the GPUs of this host.

    Args:
        gpus: indices to control (None: every GPU NVML reports).
        nvml: the pynvml module (tests of this adapter pass a stand-in).

    Raises:
        GpuError: NVML cannot be loaded/initialised or an index does not exist.
    """

    name: BackendName = "nvml"

    def __init__(
        self, gpus: Sequence[int] | None = None, *, nvml: ModuleType | None = None
    ) -> None:
        if nvml is None:
            try:
                import pynvml as nvml_mod
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise GpuError("nvidia-ml-py (pynvml) is not installed", code="NO_PYNVML") from exc
            nvml = nvml_mod
        self._nvml = nvml
        self._mu = threading.Lock()
        self._call(None, "nvmlInit", nvml.nvmlInit)
        try:
            count = int(self._call(None, "nvmlDeviceGetCount", nvml.nvmlDeviceGetCount))
            indices = list(range(count)) if gpus is None else sorted(set(gpus))
            for gpu in indices:
                if not 0 <= gpu < count:
                    raise GpuError(
                        f"GPU {gpu} does not exist on this host (NVML sees {count} GPUs)",
                        gpu=gpu,
                        code="NVML_ERROR_NOT_FOUND",
                    )
            self._handles: dict[int, Any] = {
                gpu: self._call(
                    gpu, "nvmlDeviceGetHandleByIndex", nvml.nvmlDeviceGetHandleByIndex, gpu
                )
                for gpu in indices
            }
        except BaseException:
            self._shutdown()
            raise
        self._supported: dict[int, list[int]] = {}
        # The lock NVML cannot report back: unknown at start, so the first reset is issued.
        self._locked: dict[int, int | None] = {}

    def _call(self, gpu: int | None, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Call one NVML function, mapping its errors through NVML_ERRORS."""
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            code = _error_name(self._nvml, int(getattr(exc, "value", -1)))
            hint = NVML_ERRORS.get(code, str(exc))
            where = f"GPU {gpu}: " if gpu is not None else ""
            raise GpuError(f"{where}{what} failed: {code}: {hint}", gpu=gpu, code=code) from exc

    def gpu_indices(self) -> list[int]:
        return sorted(self._handles)

    def _handle(self, gpu: int) -> Any:
        check_gpu(gpu, list(self._handles))
        return self._handles[gpu]

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        cached = self._supported.get(gpu)
        if cached is not None:
            return list(cached)
        handle = self._handle(gpu)
        nvml = self._nvml
        mem = self._call(
            gpu,
            "nvmlDeviceGetSupportedMemoryClocks",
            nvml.nvmlDeviceGetSupportedMemoryClocks,
            handle,
        )
        if not mem:
            raise GpuError(f"GPU {gpu}: NVML lists no memory clocks", gpu=gpu, code="NO_CLOCKS")
        sm = self._call(
            gpu,
            "nvmlDeviceGetSupportedGraphicsClocks",
            nvml.nvmlDeviceGetSupportedGraphicsClocks,
            handle,
            max(int(m) for m in mem),
        )
        clocks = sorted({int(c) for c in sm}, reverse=True)
        if not clocks:
            raise GpuError(f"GPU {gpu}: NVML lists no SM clocks", gpu=gpu, code="NO_CLOCKS")
        self._supported[gpu] = clocks
        return list(clocks)

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        with self._mu:
            if gpu in self._locked and self._locked[gpu] == mhz:
                return False
            self._call(
                gpu,
                "nvmlDeviceSetGpuLockedClocks",
                self._nvml.nvmlDeviceSetGpuLockedClocks,
                self._handle(gpu),
                mhz,
                mhz,
            )
            self._locked[gpu] = mhz
            return True

    def reset_locked_clocks(self, gpu: int) -> bool:
        handle = self._handle(gpu)
        with self._mu:
            if gpu in self._locked and self._locked[gpu] is None:
                return False
            # Forget the lock first: if the reset fails, the next attempt is issued again.
            self._locked.pop(gpu, None)
            self._call(
                gpu,
                "nvmlDeviceResetGpuLockedClocks",
                self._nvml.nvmlDeviceResetGpuLockedClocks,
                handle,
            )
            self._locked[gpu] = None
            return True

    def locked_clock_mhz(self, gpu: int) -> int | None:
        self._handle(gpu)
        return self._locked.get(gpu)

    def _shutdown(self) -> None:
        with contextlib.suppress(Exception):  # nothing useful to do at shutdown
            self._nvml.nvmlShutdown()

    def close(self) -> None:
        self._shutdown()
