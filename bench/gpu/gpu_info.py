"""What the GPU is and how it was set when the probe found it: NVML getters only.

Nothing here changes a setting (no ``nvmlDeviceSet*``/``Reset*`` call): the
probe measures the card as found, and records enough to tell whether its
clocks or power limit had been changed by someone else beforehand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _get(fn: Callable[..., Any], *args: Any) -> Any:
    """One optional NVML reading: None (never an exception) where it is not available."""
    try:
        value = fn(*args)
    except Exception:  # NVMLError subclasses, or a function this pynvml lacks
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _uuid_hash(uuid: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(uuid.encode()).hexdigest()[:12] if uuid else None


def nvml_info(index: int) -> dict[str, Any]:
    """Device name, driver, power limits, clocks and modes of GPU ``index``, read-only.

    Returns ``{"nvml_error": ...}`` where NVML is not usable (no GPU, no driver).
    """
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception as exc:
        return {"nvml_error": f"{type(exc).__name__}: {exc}"}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        mem_clocks = _get(nv.nvmlDeviceGetSupportedMemoryClocks, h) or []
        sm_clocks = (
            _get(nv.nvmlDeviceGetSupportedGraphicsClocks, h, max(mem_clocks))
            if mem_clocks
            else None
        )
        limits = _get(nv.nvmlDeviceGetPowerManagementLimitConstraints, h)
        pstate0 = _get(
            nv.nvmlDeviceGetMinMaxClockOfPState, h, nv.NVML_CLOCK_GRAPHICS, nv.NVML_PSTATE_0
        )
        mem = _get(nv.nvmlDeviceGetMemoryInfo, h)

        def mw_to_w(v: Any) -> float | None:
            return float(v) / 1000.0 if v is not None else None

        return {
            "name": _get(nv.nvmlDeviceGetName, h),
            "driver": _get(nv.nvmlSystemGetDriverVersion),
            "nvml_version": _get(nv.nvmlSystemGetNVMLVersion),
            "cuda_driver_version": _get(nv.nvmlSystemGetCudaDriverVersion),
            # A short hash of the GPU's UUID tells two runs' cards apart without naming them.
            "gpu_uuid_sha256_12": _uuid_hash(_get(nv.nvmlDeviceGetUUID, h)),
            "memory_total_mib": mem.total / 2**20 if mem is not None else None,
            "power_limit_w": mw_to_w(_get(nv.nvmlDeviceGetEnforcedPowerLimit, h)),
            "power_limit_default_w": mw_to_w(_get(nv.nvmlDeviceGetPowerManagementDefaultLimit, h)),
            "power_limit_min_w": mw_to_w(limits[0]) if limits else None,
            "power_limit_max_w": mw_to_w(limits[1]) if limits else None,
            "max_sm_clock_mhz": _get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": _get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
            "app_sm_clock_mhz": _get(nv.nvmlDeviceGetApplicationsClock, h, nv.NVML_CLOCK_SM),
            "default_app_sm_clock_mhz": _get(
                nv.nvmlDeviceGetDefaultApplicationsClock, h, nv.NVML_CLOCK_SM
            ),
            "pstate0_sm_clock_range_mhz": list(pstate0) if pstate0 else None,
            "supported_mem_clocks_mhz": list(mem_clocks),
            "supported_sm_clocks_mhz": list(sm_clocks) if sm_clocks else None,
            "persistence_mode": _get(nv.nvmlDeviceGetPersistenceMode, h),
            "compute_mode": _get(nv.nvmlDeviceGetComputeMode, h),
            "sm_clock_mhz_now": _get(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            "temperature_c_now": _get(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            "pynvml_version": getattr(nv, "__version__", None),
        }
    finally:
        _get(nv.nvmlShutdown)


def torch_info() -> dict[str, Any]:
    """The framework and device as PyTorch sees them."""
    import platform

    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(
            device_name=p.name,
            sm_count=p.multi_processor_count,
            memory_total_gib=p.total_memory / 2**30,
            capability=f"{p.major}.{p.minor}",
            l2_cache_mib=getattr(p, "L2_cache_size", 0) / 2**20,
        )
    return out
