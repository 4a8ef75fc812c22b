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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voltana.groundtruth.gpu_model import GpuModel

__all__ = ["DecodeTerms", "decode_bucket"]


def decode_bucket(batch_size: int) -> int:
    """CUDA-graph batch size an engine pads a decode batch to (1, 2, 4, 8..128 by 8, then by 128)."""
    if batch_size <= 0:
        return 0
    if batch_size <= 4:
        return 1 << (batch_size - 1).bit_length()
    if batch_size <= 128:
        return -(-batch_size // 8) * 8
    return -(-batch_size // 128) * 128


class DecodeTerms:
    """Memoised decode terms of one ``GpuModel`` (its spec, model and TP never change)."""

    def __init__(self, gm: GpuModel) -> None:
        self._gm = gm
        g, m, tp = gm.gpu, gm.model, gm.tp
        self._peak_per_clock = g.peak_flop_per_clock
        self._weight_bytes = m.weight_bytes / tp
        self._kv_per_token = m.kv_bytes_per_token
        self._lin_per_req = 2.0 * m.params / tp
        self._ring = 2.0 * (tp - 1) / tp
        self._allreduce_calls = 2 * m.layers if tp > 1 else 0
        self._clock: dict[float, tuple[float, float, float, float, float, float]] = {}
        self._roof: dict[tuple[float, int], float] = {}

    def _per_clock(self, clock_mhz: float) -> tuple[float, float, float, float, float, float]:
        """(requested clock, bw, launch term, idle power, SM dynamic power, peak FLOP/s)."""
        hit = self._clock.get(clock_mhz)
        if hit is None:
            gm, g = self._gm, self._gm.gpu
            f = gm.nearest_clock_mhz(clock_mhz)
            hit = (
                f,
                gm._bw(f),
                g.launch_cycles / (f * 1e6),
                gm.idle_power_w(f),
                g.sm_power_w * gm._dyn(f),
                self._peak_per_clock * f * 1e6,
            )
            self._clock[clock_mhz] = hit
        return hit

    def time_power(
        self, clock_mhz: float, batch_size: int, kv_tokens: int
    ) -> tuple[int, float, float] | None:
        """(clock run, step time s, power W per GPU) before noise; None when power-capped."""
        gm, g = self._gm, self._gm.gpu
        f, bw, launch, idle, sm_dyn, peak = self._per_clock(clock_mhz)
        bucket = decode_bucket(batch_size)
        roof = self._roof.get((f, bucket))
        if roof is None:
            t_w = self._weight_bytes / (bw * g.weight_bw_eff)
            t_c = self._lin_per_req * bucket / (peak * g.decode_compute_eff)
            p = g.roofline_sharpness
            roof = self._roof[(f, bucket)] = (t_w**p + t_c**p) ** (1.0 / p)
        kv_bytes = kv_tokens * self._kv_per_token / gm.tp
        t = roof + kv_bytes / (bw * g.kv_bw_eff)
        if self._allreduce_calls:
            t += self._allreduce_calls * g.allreduce_latency_s
            allreduce_bytes = 2.0 * bucket * gm.model.hidden * 2
            t += self._ring * allreduce_bytes * gm.model.layers / g.nvlink_bw_bytes_s
        t = t + g.decode_fixed_s + launch
        # GpuModel._power_w, decode branch
        u_w = self._weight_bytes / (t * g.hbm_bw_bytes_s)
        u_kv = kv_bytes / (t * g.hbm_bw_bytes_s)
        u_mem = min(1.0, u_w + u_kv)
        linear = self._lin_per_req * batch_size
        attn = 4.0 * kv_tokens * gm.model.heads * gm.model.head_dim * gm.model.layers / gm.tp
        u_comp = min(1.0, (linear + attn) / (t * self._peak_per_clock * f * 1e6))
        u_sm = g.mem_sm_activity * u_w + g.kv_sm_activity * u_kv + u_comp
        power = idle + g.hbm_power_w * u_mem + sm_dyn * u_sm
        if power > g.power_limit_w:
            return None
        return int(f), t, power
