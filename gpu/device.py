"""The GPU device interface: one reading per GPU, and SM clock locks.

A device stands for a fixed set of GPUs of one node (indices are node-global).
Its reader half returns one :class:`GpuSample` per GPU per call; its setter half
locks and resets the SM clock. Every backend (NVML, the emulator's admin HTTP,
dry-run) implements both in one object; callers that need one half type against
:class:`GpuReader` or :class:`ClockSetter`.

Devices are synchronous on purpose: NVML calls block, so async services call
them in worker threads and the same classes serve plain scripts. Every failure
is a :class:`~voltana.common.errors.GpuError` with the backend's error name as
``code``. This module imports only msgspec, the standard library and voltana's ground layers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec
from voltana.common.errors import GpuError
from voltana.schemas.telemetry import GpuSourceKind

BackendName = Literal["nvml", "emulated", "dry-run"]
BACKEND_NAMES: tuple[BackendName, ...] = ("nvml", "emulated", "dry-run")


class GpuSample(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one GPU.

    ``energy_j`` is the device's cumulative energy counter, corrected so that it
    never goes backwards (see :class:`~voltana.gpu.energy.EnergyCounter`). ``t_ns``
    is wall-clock Unix ns (for messages); ``mono_ns`` is ``time.monotonic_ns()``
    at the same moment (for intervals, immune to clock steps). Optional readings
    are None where the GPU or driver does not support them.
    """

    index: int
    t_ns: int
    mono_ns: int
    power_w: float
    energy_j: float
    sm_clock_mhz: int
    source: GpuSourceKind
    """A dry-run device passes on the kind of the device it reads through."""
    name: str | None = None
    power_instant_w: float | None = None
    app_clock_mhz: int | None = None
    locked_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    util_gpu_pct: float | None = None
    mem_used_mib: float | None = None
    temperature_c: float | None = None
    energy_from_power: bool = False
    """True when the GPU has no energy counter and ``energy_j`` integrates ``power_w``."""
    energy_fresh: bool = True
    """False when the counter was not re-read for this sample (``energy_j`` repeats)."""
    energy_t_ns: int | None = None
    """Wall time of the counter read (None = ``t_ns``)."""
    energy_mono_ns: int | None = None
    """Monotonic time of the counter read (None = ``mono_ns``)."""


@runtime_checkable
class GpuReader(Protocol):
    """Reads a fixed set of GPUs (what the telemetry service needs)."""

    name: BackendName

    @property
    def indices(self) -> tuple[int, ...]:
        """The node-global GPU indices of this device, in sample order."""
        ...

    def sample(self) -> list[GpuSample]:
        """Read every GPU once. Raises ``GpuError`` when a required reading fails."""
        ...

    def close(self) -> None:
        """Release the driver/HTTP resources (does not reset clocks: callers do that)."""
        ...


@runtime_checkable
class ClockSetter(Protocol):
    """Locks the SM clock of a fixed set of GPUs (what the actuator needs).

    Setters skip a value already applied (and say so by returning False), so a
    lease renewal costs no driver call.
    """

    name: BackendName

    @property
    def indices(self) -> tuple[int, ...]:
        """The node-global GPU indices of this device."""
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
        """Return the GPU to its default clocks: always a driver call, whatever the cache says.

        Returns:
            True if the device had a lock applied (or did not know), False if its
            cache already said default clocks (the reset was issued anyway).
        """
        ...

    def locked_clock_mhz(self, gpu: int) -> int | None:
        """The SM clock this device last locked on ``gpu`` (None: default or unknown)."""
        ...

    def close(self) -> None:
        """Release the driver/HTTP resources (does not reset clocks: callers do that)."""
        ...


@runtime_checkable
class LockReader(Protocol):
    """Reads the lock the hardware holds now, past any cache (what the actuator verifies).

    Something other than the actuator (an operator's ``nvidia-smi -lgc``, a crashed
    tool) may have locked a clock; only the hardware knows.
    """

    def read_locked_clock_mhz(self, gpu: int) -> int | None:
        """The locked SM clock the GPU reports now (None: default clocks or unknown)."""
        ...


@runtime_checkable
class GpuDevice(GpuReader, ClockSetter, Protocol):
    """Both halves: what every backend implements (the profiler needs both)."""


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
    """Raise GpuError unless ``gpu`` is one of the device's GPUs."""
    if gpu not in known:
        raise GpuError(
            f"GPU {gpu} is not controlled by this device (GPUs: {list(known)})",
            gpu=gpu,
            code="UNKNOWN_GPU",
        )


class AppliedClocks:
    """The lock each GPU was last given, so a setter can skip a value already applied.

    A lock the cache already holds is skipped (a lease renewal costs no driver
    call); a reset is always issued, since a lock made by anything else (or left
    by a crashed predecessor) is invisible to the cache and resets are the
    fail-safe. One lock serialises the driver calls of all GPUs of a device.
    """

    def __init__(self, known: dict[int, int | None] | None = None) -> None:
        self._mu = threading.Lock()
        self._locked: dict[int, int | None] = dict(known or {})

    def get(self, gpu: int) -> int | None:
        """The lock last applied (None: default clocks, or not known yet)."""
        return self._locked.get(gpu)

    def lock(self, gpu: int, mhz: int, apply: Callable[[], int | None]) -> bool:
        """Call ``apply`` unless ``mhz`` is already locked; it may return the lock it confirms."""
        with self._mu:
            if gpu in self._locked and self._locked[gpu] == mhz:
                return False
            confirmed = apply()
            self._locked[gpu] = mhz if confirmed is None else confirmed
            return True

    def reset(self, gpu: int, apply: Callable[[], object]) -> bool:
        """Call ``apply``; True unless the GPU was already known to be at default clocks."""
        with self._mu:
            was_default = gpu in self._locked and self._locked[gpu] is None
            # Forget the lock first: if the reset fails, the next lock is issued again.
            self._locked.pop(gpu, None)
            apply()
            self._locked[gpu] = None
            return not was_default
