"""NVML return codes onto ``GpuError``: one table for readings and clock setters.

The codes are NVML's (``nvml.h``, stable across driver versions), copied so the
table needs no pynvml; a ``GpuError.code`` is the NVML constant's name.
"""

from __future__ import annotations

from types import ModuleType

from voltana.common.errors import GpuError

NVML_ERRORS: dict[int, tuple[str, str | None]] = {
    1: ("NVML_ERROR_UNINITIALIZED", "NVML was not initialised"),
    2: ("NVML_ERROR_INVALID_ARGUMENT", "invalid argument (GPU index, handle or clock)"),
    3: ("NVML_ERROR_NOT_SUPPORTED", "not supported on this GPU or driver"),
    4: (
        "NVML_ERROR_NO_PERMISSION",
        "permission denied: this needs root (CAP_SYS_ADMIN); run the actuator as the "
        "voltana-actuator systemd unit or use --backend dry-run",
    ),
    5: ("NVML_ERROR_ALREADY_INITIALIZED", None),
    6: ("NVML_ERROR_NOT_FOUND", "not found (no such GPU)"),
    7: ("NVML_ERROR_INSUFFICIENT_SIZE", None),
    8: ("NVML_ERROR_INSUFFICIENT_POWER", "the GPU's power cables are not connected properly"),
    9: (
        "NVML_ERROR_DRIVER_NOT_LOADED",
        "the NVIDIA kernel driver is not loaded; on a machine without GPUs use gpu "
        "backend 'emulated'",
    ),
    10: ("NVML_ERROR_TIMEOUT", "the GPU did not answer in time"),
    11: ("NVML_ERROR_IRQ_ISSUE", None),
    12: (
        "NVML_ERROR_LIBRARY_NOT_FOUND",
        "the NVML library (libnvidia-ml.so.1) was not found: install the NVIDIA driver, "
        "or use gpu backend 'emulated' on a machine without GPUs",
    ),
    13: ("NVML_ERROR_FUNCTION_NOT_FOUND", "this driver's NVML lacks the function"),
    14: ("NVML_ERROR_CORRUPTED_INFOROM", None),
    15: (
        "NVML_ERROR_GPU_IS_LOST",
        "the GPU fell off the bus or is otherwise inaccessible; it needs a reset or reboot",
    ),
    16: ("NVML_ERROR_RESET_REQUIRED", "the GPU needs a reset"),
    17: ("NVML_ERROR_OPERATING_SYSTEM", "the operating system blocked the request"),
    18: (
        "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
        "the NVML library and the kernel driver versions differ (reload the driver)",
    ),
    19: ("NVML_ERROR_IN_USE", "another process holds the setting"),
    20: ("NVML_ERROR_MEMORY", None),
    21: ("NVML_ERROR_NO_DATA", None),
    22: ("NVML_ERROR_VGPU_ECC_NOT_SUPPORTED", None),
    23: ("NVML_ERROR_INSUFFICIENT_RESOURCES", None),
    24: ("NVML_ERROR_FREQ_NOT_SUPPORTED", None),
    25: ("NVML_ERROR_ARGUMENT_VERSION_MISMATCH", None),
    26: ("NVML_ERROR_DEPRECATED", None),
    27: ("NVML_ERROR_NOT_READY", None),
    28: ("NVML_ERROR_GPU_NOT_FOUND", "GPU not found"),
    29: ("NVML_ERROR_INVALID_STATE", None),
    30: ("NVML_ERROR_RESET_TYPE_NOT_SUPPORTED", None),
    999: ("NVML_ERROR_UNKNOWN", "NVML reported an unknown error"),
}
"""NVML return code -> (constant name, what it means here; None: NVML's own message)."""

OPTIONAL_MISSING = frozenset({3, 4, 13})
"""NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND: an optional reading is None, not an error."""


def nvml_error(exc: BaseException, action: str, gpu: int | None = None) -> GpuError:
    """Map one NVML exception onto ``GpuError`` through :data:`NVML_ERRORS`."""
    value = getattr(exc, "value", None)
    if isinstance(value, int):
        code_name, hint = NVML_ERRORS.get(value, (f"NVML_ERROR_{value}", None))
    else:
        code_name, hint = "NVML_ERROR_UNKNOWN", None
    where = f" on GPU {gpu}" if gpu is not None else ""
    return GpuError(
        f"NVML {action}{where} failed: {hint or exc} ({code_name})", gpu=gpu, code=code_name
    )


def import_pynvml() -> ModuleType:
    """The pynvml module, or a ``GpuError`` saying how to install it."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - pynvml is a declared dependency
        raise GpuError(
            "the pynvml module is missing: pip install nvidia-ml-py", code="NO_PYNVML"
        ) from exc
    return pynvml
