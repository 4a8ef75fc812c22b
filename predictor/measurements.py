"""Raw profiling measurements and the ``Prober`` protocol that produces them.

A prober is "the hardware" seen from the profiler: it locks a clock, runs one
prefill or decode shape, and reports latency and energy per iteration. The
same fitting routine (:mod:`voltana.predictor.fitting`) turns the
measurements of any prober into a profile. Energies are instance totals.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "DecodeSample",
    "HardwareInfo",
    "IdleSample",
    "Measurements",
    "PrefillSample",
    "Prober",
]


class PrefillSample(msgspec.Struct, frozen=True, kw_only=True):
    """One prefill of ``batched_tokens`` new tokens at a locked clock, over
    ``context_tokens`` already cached (a prefix-cache hit; 0: a fresh prompt)."""

    clock_mhz: int
    batched_tokens: int
    latency_s: float
    energy_j: float
    effective_clock_mhz: float | None = None
    context_tokens: int = 0


class DecodeSample(msgspec.Struct, frozen=True, kw_only=True):
    """Mean decode iteration for ``batch_size`` requests holding ``kv_tokens`` in all."""

    clock_mhz: int
    batch_size: int
    kv_tokens: float
    latency_s: float
    energy_j: float
    effective_clock_mhz: float | None = None


class IdleSample(msgspec.Struct, frozen=True, kw_only=True):
    """Instance power with nothing running at a locked clock."""

    clock_mhz: int
    power_w: float


class HardwareInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a prober drives: GPU kind, model, TP size and the clock table (ascending)."""

    gpu: str
    model: str
    tp: int
    supported_clocks_mhz: list[int]
    power_limit_w: float | None = None


class Measurements(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one profiling run measured; enough to refit without re-measuring."""

    hardware: HardwareInfo
    source: Literal["simulated", "live", "synthetic"]
    prefill: list[PrefillSample]
    decode: list[DecodeSample]
    idle: list[IdleSample]
    prefill_context: list[PrefillSample] = msgspec.field(default_factory=list)  # cached context


@runtime_checkable
class Prober(Protocol):
    """Measures one shape at one locked clock (blocking; may take real time)."""

    source: Literal["simulated", "live", "synthetic"]

    def hardware(self) -> HardwareInfo:
        """The GPU, model, TP and clock table being profiled."""
        ...

    def measure_prefill(self, clock_mhz: int, batched_tokens: int) -> PrefillSample:
        """Prefill ``batched_tokens`` tokens at ``clock_mhz``."""
        ...

    def measure_decode(self, clock_mhz: int, batch_size: int, context_tokens: int) -> DecodeSample:
        """Decode ``batch_size`` requests of about ``context_tokens`` tokens each."""
        ...

    def measure_idle(self, clock_mhz: int) -> IdleSample:
        """Idle power at ``clock_mhz``."""
        ...

    def close(self) -> None:
        """Restore default clocks and release resources."""
        ...
