"""GPU clock control behind one interface: NVML, the emulator's admin HTTP, or dry-run.

Every backend is synchronous and may block (NVML calls, HTTP to an emulator):
async shells call it through :class:`AsyncClockBackend`, which runs each call in
``asyncio.to_thread``. Setters skip a value already applied (and say so by
returning False), so a lease renewal costs no driver call. Every failure is a
:class:`~voltana.common.errors.GpuError` carrying the backend's error name.

Implementations live in their own modules and are built by :func:`make_backend`:

- ``nvml``     :mod:`voltana.gpu.nvml_clocks` (needs root to set clocks)
- ``emulated`` :mod:`voltana.gpu.emulated_clocks` (emulator admin HTTP)
- ``dry-run``  :mod:`voltana.gpu.dryrun` (reads from a wrapped
  backend, applies nothing, records what it would have applied)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from voltana.common.errors import GpuError

BackendName = Literal["nvml", "emulated", "dry-run"]
BACKEND_NAMES: tuple[BackendName, ...] = ("nvml", "emulated", "dry-run")


@runtime_checkable
class ClockBackend(Protocol):
    """Read and lock the SM clock of the GPUs of one node (indices are node-global)."""

    name: BackendName

    def gpu_indices(self) -> list[int]:
        """The GPU indices this backend controls, ascending."""
        ...

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        """Every SM clock the GPU accepts, descending (NVML's order), without duplicates."""
        ...

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        """Lock the SM clock to ``mhz`` (min = max = mhz).

        Returns:
            True if the lock was applied, False if ``mhz`` was already locked.

        Raises:
            GpuError: ``mhz`` is not a supported clock, the GPU is unknown, or the
                driver refused (e.g. ``NVML_ERROR_NO_PERMISSION``).
        """
        ...

    def reset_locked_clocks(self, gpu: int) -> bool:
        """Return the GPU to its default clocks.

        Returns:
            True if a reset was issued, False if the backend knows nothing is locked.
        """
        ...

    def locked_clock_mhz(self, gpu: int) -> int | None:
        """The SM clock this backend last locked on ``gpu`` (None: default clocks)."""
        ...

    def close(self) -> None:
        """Release the driver/HTTP resources (does not reset clocks: callers do that)."""
        ...


def check_supported(gpu: int, mhz: int, supported_mhz: Sequence[int]) -> None:
    """Raise GpuError unless ``mhz`` is one of the GPU's supported SM clocks."""
    if mhz not in supported_mhz:
        lo, hi = (min(supported_mhz), max(supported_mhz)) if supported_mhz else (0, 0)
        raise GpuError(
            f"GPU {gpu}: {mhz} MHz is not a supported SM clock (supported: {lo}-{hi} MHz, "
            f"{len(supported_mhz)} values)",
            gpu=gpu,
            code="UNSUPPORTED_CLOCK",
        )


def check_gpu(gpu: int, known: Sequence[int]) -> None:
    """Raise GpuError unless ``gpu`` is one of the backend's GPUs."""
    if gpu not in known:
        raise GpuError(
            f"GPU {gpu} is not controlled by this backend (GPUs: {list(known)})",
            gpu=gpu,
            code="UNKNOWN_GPU",
        )


class AsyncClockBackend:
    """Runs each call of a blocking backend in a worker thread, one call at a time per GPU.

    NVML and HTTP calls must not stall the event loop that serves the bus; the
    per-GPU lock keeps a lease expiry and a command for the same GPU from
    interleaving their driver calls.
    """

    def __init__(self, backend: ClockBackend) -> None:
        self.backend = backend
        self.name: BackendName = backend.name
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, gpu: int) -> asyncio.Lock:
        lock = self._locks.get(gpu)
        if lock is None:
            lock = self._locks[gpu] = asyncio.Lock()
        return lock

    async def gpu_indices(self) -> list[int]:
        return await asyncio.to_thread(self.backend.gpu_indices)

    async def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        return await asyncio.to_thread(self.backend.supported_sm_clocks_mhz, gpu)

    async def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        async with self._lock(gpu):
            return await asyncio.to_thread(self.backend.set_locked_sm_clock_mhz, gpu, mhz)

    async def reset_locked_clocks(self, gpu: int) -> bool:
        async with self._lock(gpu):
            return await asyncio.to_thread(self.backend.reset_locked_clocks, gpu)

    async def locked_clock_mhz(self, gpu: int) -> int | None:
        return await asyncio.to_thread(self.backend.locked_clock_mhz, gpu)

    async def close(self) -> None:
        await asyncio.to_thread(self.backend.close)


def make_backend(
    name: str,
    *,
    gpus: Sequence[int] | None = None,
    emulator_urls: Sequence[str] = (),
    dry_run_source: str = "nvml",
    http_timeout_s: float = 2.0,
) -> ClockBackend:
    """Build a backend by name.

    Args:
        name: ``nvml``, ``emulated`` or ``dry-run``.
        gpus: GPU indices to control (None: every GPU the backend finds).
        emulator_urls: base URLs of emulator servers (``emulated``, or ``dry-run``
            with ``dry_run_source="emulated"``).
        dry_run_source: what a dry-run backend reads supported clocks from.
        http_timeout_s: per-request timeout of the emulated backend.

    Raises:
        ConfigError: unknown name or missing emulator URL.
        GpuError: the backend could not reach its GPUs.
    """
    from voltana.common.errors import ConfigError

    if name == "nvml":
        from voltana.gpu.nvml_clocks import NvmlBackend

        return NvmlBackend(gpus)
    if name == "emulated":
        if not emulator_urls:
            raise ConfigError("the emulated clock backend needs at least one --emulator-url")
        from voltana.gpu.emulated_clocks import EmulatedBackend

        return EmulatedBackend(emulator_urls, gpus=gpus, timeout_s=http_timeout_s)
    if name == "dry-run":
        if dry_run_source == "dry-run":
            raise ConfigError("a dry-run backend cannot wrap another dry-run backend")
        from voltana.gpu.dryrun import DryRunBackend

        inner = make_backend(
            dry_run_source, gpus=gpus, emulator_urls=emulator_urls, http_timeout_s=http_timeout_s
        )
        return DryRunBackend(inner)
    raise ConfigError(f"unknown clock backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
