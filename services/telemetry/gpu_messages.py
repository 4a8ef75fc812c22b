"""Turn GPU samples into ``GpuTelemetry`` messages: sequence numbers and interval power.

Pure: samples in, messages out. ``avg_power_w`` is the energy-counter delta
over the time since the same GPU's previous counter read, so summing
``avg_power_w * interval_s`` over messages reproduces the counter exactly.
Samples that did not re-read the counter carry no interval power.
"""

from __future__ import annotations

from dataclasses import dataclass

from voltana.gpu.device import GpuSample
from voltana.schemas.telemetry import GpuTelemetry, Role


@dataclass(slots=True)
class _Prev:
    seq: int = 0
    mono_ns: int | None = None
    energy_j: float = 0.0


class GpuMessageBuilder:
    """Builds the messages of the GPUs of one instance (or of a whole node)."""

    def __init__(self, node: str, instance: str | None = None, role: Role | None = None) -> None:
        self.node = node
        self.instance = instance
        self.role = role
        self._prev: dict[int, _Prev] = {}

    def build(self, s: GpuSample) -> GpuTelemetry:
        prev = self._prev.setdefault(s.index, _Prev())
        prev.seq += 1
        avg_power_w: float | None = None
        interval_s: float | None = None
        e_mono_ns = s.energy_mono_ns if s.energy_mono_ns is not None else s.mono_ns
        if s.energy_fresh:
            if prev.mono_ns is not None and e_mono_ns > prev.mono_ns:
                interval_s = (e_mono_ns - prev.mono_ns) / 1e9
                avg_power_w = (s.energy_j - prev.energy_j) / interval_s
            prev.mono_ns, prev.energy_j = e_mono_ns, s.energy_j
        return GpuTelemetry(
            t_ns=s.t_ns,
            node=self.node,
            gpu=s.index,
            seq=prev.seq,
            instance=self.instance,
            role=self.role,
            power_w=s.power_w,
            energy_j=s.energy_j,
            avg_power_w=avg_power_w,
            interval_s=interval_s,
            sm_clock_mhz=s.sm_clock_mhz,
            locked_clock_mhz=s.locked_clock_mhz,
            app_clock_mhz=s.app_clock_mhz,
            mem_clock_mhz=s.mem_clock_mhz,
            max_sm_clock_mhz=s.max_sm_clock_mhz,
            power_limit_w=s.power_limit_w,
            throttle_reasons=s.throttle_reasons,
            util_gpu_pct=s.util_gpu_pct,
            mem_used_mib=s.mem_used_mib,
            temperature_c=s.temperature_c,
            source=s.source,
            energy_t_ns=s.energy_t_ns if s.energy_t_ns is not None else s.t_ns,
            power_instant_w=s.power_instant_w,
        )
