"""Decode-step time and power with the clock- and bucket-only parts computed once.

A decode step is the hot path of every emulated worker and of the simulator
(one per token round). Its roofline term depends only on the clock and the
CUDA-graph bucket, its bandwidth, launch, voltage and idle terms only on the
clock; this module memoises those and evaluates the rest with the very same
expressions, in the same order, as ``GpuModel._time_parts`` and
``GpuModel._power_w`` (results are bit-identical, which a test checks). A
power-capped step returns None: the caller takes the general path, which
searches for the throttled clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from voltana.groundtruth.gpu_clock import (
    dynamic_power_scale,
    idle_power_w,
    mem_bw_bytes_s,
    nearest_clock_mhz,
)
from voltana.groundtruth.gpu_specs import GpuSpec, ModelShape
from voltana.predictor.buckets import decode_bucket

__all__ = ["DecodeTerms"]


class DecodeTerms:
    """Memoised decode terms of one GPU type, model and TP degree (none of which change).

    ``ascending_clocks`` are the GPU's supported clocks, lowest first.
    """

    def __init__(
        self, gpu: GpuSpec, model: ModelShape, tp: int, ascending_clocks: Sequence[int]
    ) -> None:
        self._gpu = gpu
        self._tp = tp
        self._ascending = ascending_clocks
        self._peak_per_clock = gpu.peak_flop_per_clock
        self._weight_bytes = model.weight_bytes / tp
        self._kv_per_token = model.kv_bytes_per_token
        self._lin_per_req = 2.0 * model.params / tp
        self._ring = 2.0 * (tp - 1) / tp
        self._allreduce_calls = 2 * model.layers if tp > 1 else 0
        self._hidden = model.hidden
        self._heads = model.heads
        self._head_dim = model.head_dim
        self._layers = model.layers
        self._clock: dict[float, tuple[float, float, float, float, float, float]] = {}
        self._roof: dict[tuple[float, int], float] = {}

    def _per_clock(self, clock_mhz: float) -> tuple[float, float, float, float, float, float]:
        """(requested clock, bw, launch term, idle power, SM dynamic power, peak FLOP/s)."""
        hit = self._clock.get(clock_mhz)
        if hit is None:
            g = self._gpu
            f = nearest_clock_mhz(self._ascending, clock_mhz)
            hit = (
                f,
                mem_bw_bytes_s(g, f),
                g.launch_cycles / (f * 1e6),
                idle_power_w(g, f),
                g.sm_power_w * dynamic_power_scale(g, f),
                self._peak_per_clock * f * 1e6,
            )
            self._clock[clock_mhz] = hit
        return hit

    def time_power(
        self, clock_mhz: float, batch_size: int, kv_tokens: int
    ) -> tuple[int, float, float] | None:
        """(clock run, step time s, power W per GPU) before noise; None when power-capped."""
        g, tp = self._gpu, self._tp
        f, bw, launch, idle, sm_dyn, peak = self._per_clock(clock_mhz)
        bucket = decode_bucket(batch_size)
        roof = self._roof.get((f, bucket))
        if roof is None:
            t_w = self._weight_bytes / (bw * g.weight_bw_eff)
            t_c = self._lin_per_req * bucket / (peak * g.decode_compute_eff)
            p = g.roofline_sharpness
            roof = self._roof[(f, bucket)] = (t_w**p + t_c**p) ** (1.0 / p)
        kv_bytes = kv_tokens * self._kv_per_token / tp
        t = roof + kv_bytes / (bw * g.kv_bw_eff)
        if self._allreduce_calls:
            t += self._allreduce_calls * g.allreduce_latency_s
            allreduce_bytes = 2.0 * bucket * self._hidden * 2
            t += self._ring * allreduce_bytes * self._layers / g.nvlink_bw_bytes_s
        t = t + g.decode_fixed_s + launch
        # GpuModel._power_w, decode branch
        u_w = self._weight_bytes / (t * g.hbm_bw_bytes_s)
        u_kv = kv_bytes / (t * g.hbm_bw_bytes_s)
        u_mem = min(1.0, u_w + u_kv)
        linear = self._lin_per_req * batch_size
        attn = 4.0 * kv_tokens * self._heads * self._head_dim * self._layers / tp
        u_comp = min(1.0, (linear + attn) / (t * self._peak_per_clock * f * 1e6))
        u_sm = g.mem_sm_activity * u_w + g.kv_sm_activity * u_kv + u_comp
        power = idle + g.hbm_power_w * u_mem + sm_dyn * u_sm
        if power > g.power_limit_w:
            return None
        return int(f), t, power
