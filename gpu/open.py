"""Open a GPU device by backend name (what ``--backend`` of the actuator and profiler picks)."""

from __future__ import annotations

from collections.abc import Sequence

from voltana.common.errors import ConfigError
from voltana.gpu.device import BACKEND_NAMES, GpuDevice
from voltana.gpu.dryrun import DryRunDevice
from voltana.gpu.emulated import EmulatedDevice
from voltana.gpu.nvml import NvmlDevice


def open_device(
    name: str,
    *,
    gpus: Sequence[int] | None = None,
    emulator_urls: Sequence[str] = (),
    dry_run_source: str = "nvml",
    http_timeout_s: float = 2.0,
) -> GpuDevice:
    """Open a device by name.

    Args:
        name: ``nvml``, ``emulated`` or ``dry-run``.
        gpus: GPU indices to use (None: every GPU the backend finds).
        emulator_urls: base URLs of emulator servers (``emulated``, or ``dry-run``
            with ``dry_run_source="emulated"``); they are asked for their GPUs now.
        dry_run_source: the device a dry-run device reads through.
        http_timeout_s: per-request timeout of the emulated device.

    Raises:
        ConfigError: unknown name or missing emulator URL.
        GpuError: the backend could not reach its GPUs.
    """
    if name == "nvml":
        return NvmlDevice(gpus)
    if name == "emulated":
        if not emulator_urls:
            raise ConfigError("the emulated GPU backend needs at least one --emulator-url")
        return EmulatedDevice.discover(emulator_urls, gpus=gpus, timeout_s=http_timeout_s)
    if name == "dry-run":
        if dry_run_source == "dry-run":
            raise ConfigError("a dry-run device cannot wrap another dry-run device")
        inner = open_device(
            dry_run_source, gpus=gpus, emulator_urls=emulator_urls, http_timeout_s=http_timeout_s
        )
        return DryRunDevice(inner)
    raise ConfigError(f"unknown GPU backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
