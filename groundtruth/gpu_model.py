"""Ground-truth GPU model: iteration time and power of an LLM engine vs. SM clock.

This plays the hardware for the emulator and the simulator. The control plane never
reads it (controllers learn profiles from measurements), so it can stay physical:

    f_eff   = highest supported clock <= requested whose power stays under the cap
    t_lin   = soft-max(weights_bytes / bw(f_eff), linear_flops / (peak * eff * f_eff))
    t_iter  = t_lin + kv_bytes / bw(f_eff) + attention_flops / (...) + t_fixed
              + launch_cycles / f_eff + all-reduce time (TP)
    bw(f)   = hbm_bw * eff * min(1, f / mem_knee)^mem_knee_exp   (slows below a knee)
    P       = static(f) + hbm_w * u_mem + sm_w * dyn(f) * (a_mem * u_w + a_kv * u_kv + u_comp)
              (u_w, u_kv: HBM time share of weight and KV reads; a_kv = kv_sm_activity in
              decode, where attention keeps the SMs busier per byte than GEMV does)
    dyn(f)  = (f / f_max) * (V(f) / V(f_max))^2, V flat below a knee, linear above

Decode batches are padded to the engine's CUDA-graph buckets for the compute term
(1, 2, 4, 8, 16, ... 128, then steps of 128): decode time steps up across a boundary.

API (stable, used by the emulator server and the simulator):
    GPUS["h100" | "a100" | "h200"] -> GpuSpec, MODELS["llama-3.1-8b" | "llama-3.1-70b"] -> ModelShape
    m = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], tp=1, noise=0.0, seed=None)
    m.prefill(clock_mhz, new_tokens, context_tokens=0) -> IterCost
    m.prefill_batch(clock_mhz, [(new_tokens, context_tokens), ...]) -> IterCost
    m.decode(clock_mhz, batch_size, kv_tokens) -> IterCost   (kv_tokens: sum over the batch)
    m.idle_power_w(clock_mhz), m.kv_transfer_s(tokens), m.supported_clocks_mhz (descending),
    m.max_clock_mhz, m.min_clock_mhz, m.kv_capacity_tokens(mem_fraction)
IterCost.power_w and .energy_j are per GPU; an instance's energy is tp * energy_j.

Every knob lives in ``GpuSpec`` (hardware plus how efficiently an engine uses it) and
``ModelShape`` (:mod:`.gpu_specs`, sources beside the constants). Calibration: docs/gpu-model.md;
``bench/emulator_calibrate.py`` refits the efficiency and power knobs to new anchors.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import msgspec
import numpy as np
from voltana.groundtruth.gpu_clock import (
    dynamic_power_scale,
    idle_power_w,
    mem_bw_bytes_s,
    nearest_clock_mhz,
    supported_clocks_mhz,
)
from voltana.groundtruth.gpu_decode import DecodeTerms
from voltana.groundtruth.gpu_specs import GPUS, MODELS, GpuSpec, ModelShape
from voltana.predictor.buckets import decode_bucket

__all__ = [
    "GPUS",
    "MODELS",
    "GpuModel",
    "GpuSpec",
    "IterCost",
    "ModelShape",
]


class IterCost(msgspec.Struct, frozen=True, gc=False):
    """Cost of one engine iteration on one GPU of the instance."""

    time_s: float
    power_w: float  # per GPU, average over the iteration
    energy_j: float  # per GPU
    effective_clock_mhz: int
    power_capped: bool


class _Work(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Clock-independent description of one iteration on one GPU."""

    linear_flops: float
    attn_flops: float
    weight_bytes: float
    kv_bytes: float
    padded_linear_flops: float  # compute term of decode (bucket-padded)
    allreduce_bytes: float
    allreduce_calls: int
    fixed_s: float
    is_decode: bool
    tokens: int


class GpuModel:
    """Iteration time and power of one TP group of GPUs running ``model``.

    Pure apart from the seeded noise generator it owns: the same seed and calls give the
    same costs. ``noise`` is the relative standard deviation of the iteration time
    (log-normal); power gets a third of it.
    """

    def __init__(
        self,
        gpu: GpuSpec,
        model: ModelShape,
        tp: int = 1,
        noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self.supported_clocks_mhz: list[int] = supported_clocks_mhz(gpu)
        self._ascending = sorted(self.supported_clocks_mhz)
        self._decode_terms = DecodeTerms(gpu, model, tp, self._ascending)

    # ----- clocks and static power -------------------------------------------------
    @property
    def max_clock_mhz(self) -> int:
        return self.gpu.max_clock_mhz

    @property
    def min_clock_mhz(self) -> int:
        return self.gpu.min_clock_mhz

    def nearest_clock_mhz(self, clock_mhz: float) -> int:
        """The highest supported clock not above ``clock_mhz`` (min clock if below all)."""
        return nearest_clock_mhz(self._ascending, clock_mhz)

    def idle_power_w(self, clock_mhz: float) -> float:
        """Power of one idle GPU held at ``clock_mhz`` (static part of the power model)."""
        return idle_power_w(self.gpu, clock_mhz)

    # ----- work descriptions -------------------------------------------------------
    def _prefill_work(self, chunks: Sequence[tuple[int, int]]) -> _Work:
        m, tp = self.model, self.tp
        tokens = sum(n for n, _ in chunks)
        # QK^T and AV: 2 GEMMs x 2 FLOP x tokens x attended length x heads x head_dim
        pairs = sum(n * (ctx + (n + 1) / 2.0) for n, ctx in chunks)
        attn = 4.0 * pairs * m.heads * m.head_dim * m.layers / tp
        kv_read = sum(ctx for _, ctx in chunks) * m.kv_bytes_per_token / tp
        linear = 2.0 * m.params / tp * tokens
        return _Work(
            linear_flops=linear,
            attn_flops=attn,
            weight_bytes=m.weight_bytes / tp,
            kv_bytes=kv_read,
            padded_linear_flops=linear,
            allreduce_bytes=2.0 * tokens * m.hidden * 2,
            allreduce_calls=2 * m.layers if tp > 1 else 0,
            fixed_s=self.gpu.prefill_fixed_s,
            is_decode=False,
            tokens=tokens,
        )

    def _decode_work(self, batch_size: int, kv_tokens: int) -> _Work:
        m, tp = self.model, self.tp
        linear = 2.0 * m.params / tp * batch_size
        return _Work(
            linear_flops=linear,
            attn_flops=4.0 * kv_tokens * m.heads * m.head_dim * m.layers / tp,
            weight_bytes=m.weight_bytes / tp,
            kv_bytes=kv_tokens * m.kv_bytes_per_token / tp,
            padded_linear_flops=2.0 * m.params / tp * decode_bucket(batch_size),
            allreduce_bytes=2.0 * decode_bucket(batch_size) * m.hidden * 2,
            allreduce_calls=2 * m.layers if tp > 1 else 0,
            fixed_s=self.gpu.decode_fixed_s,
            is_decode=True,
            tokens=batch_size,
        )

    # ----- time and power at a given effective clock ------------------------------
    def _time_s(self, w: _Work, f: float) -> float:
        return self._time_parts(w, f)[0]

    def _time_parts(self, w: _Work, f: float) -> tuple[float, float]:
        """Iteration time and the SM-busy activity integral (s at full-GEMM power)."""
        g = self.gpu
        busy = 0.0
        peak = g.peak_flop_per_clock * f * 1e6
        bw = mem_bw_bytes_s(g, f)
        if w.is_decode:
            t_w = w.weight_bytes / (bw * g.weight_bw_eff)
            t_c = w.padded_linear_flops / (peak * g.decode_compute_eff)
            p = g.roofline_sharpness
            t = (t_w**p + t_c**p) ** (1.0 / p) + w.kv_bytes / (bw * g.kv_bw_eff)
        else:
            eff = g.prefill_linear_eff * w.tokens / (w.tokens + g.prefill_half_tokens)
            t_lin = w.linear_flops / (peak * eff)
            t_attn = w.attn_flops / (peak * g.prefill_attn_eff)
            # SM power follows the work done: an under-filled GEMM is slow, not hot.
            t_lin_full = w.linear_flops / (peak * g.prefill_linear_eff)
            busy = t_lin_full * g.prefill_linear_activity + t_attn * g.prefill_attn_activity
            t_m = (w.weight_bytes + w.kv_bytes) / (bw * g.weight_bw_eff)
            t = max(t_lin + t_attn, t_m)
        if self.tp > 1 and w.allreduce_calls:
            ring = 2.0 * (self.tp - 1) / self.tp
            t += w.allreduce_calls * g.allreduce_latency_s
            t += ring * w.allreduce_bytes * self.model.layers / g.nvlink_bw_bytes_s
        return t + w.fixed_s + g.launch_cycles / (f * 1e6), busy

    def _power_w(self, w: _Work, f: float, t: float) -> float:
        g = self.gpu
        u_w = w.weight_bytes / (t * g.hbm_bw_bytes_s)
        u_kv = w.kv_bytes / (t * g.hbm_bw_bytes_s)
        u_mem = min(1.0, u_w + u_kv)
        if w.is_decode:
            u_comp = min(
                1.0, (w.linear_flops + w.attn_flops) / (t * g.peak_flop_per_clock * f * 1e6)
            )
            # Decode attention reads KV with its SMs far busier than a GEMV streaming
            # weights (query tiles padded on the tensor cores, softmax on the FP32 units):
            # the same HBM byte costs more SM power there.
            u_sm = g.mem_sm_activity * u_w + g.kv_sm_activity * u_kv + u_comp
        else:
            # Prefill attention over cached KV is compute-bound: its SM power is in
            # prefill_attn_activity (through u_comp), its bytes count as plain reads.
            u_comp = min(1.0, self._time_parts(w, f)[1] / t)
            u_sm = g.mem_sm_activity * u_mem + u_comp
        dyn = g.sm_power_w * dynamic_power_scale(g, f) * u_sm
        return idle_power_w(g, f) + g.hbm_power_w * u_mem + dyn

    def _cost(self, w: _Work, clock_mhz: float) -> IterCost:
        """Throttle to the power cap (highest clock whose power fits), then add noise."""
        requested = self.nearest_clock_mhz(clock_mhz)
        f = requested
        t = self._time_s(w, f)
        p = self._power_w(w, f, t)
        capped = p > self.gpu.power_limit_w
        if capped:
            # Power rises monotonically with the clock: bisect the supported clocks.
            lo, hi = 0, bisect.bisect_left(self._ascending, requested)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                fm = self._ascending[mid]
                tm = self._time_s(w, fm)
                if self._power_w(w, fm, tm) <= self.gpu.power_limit_w:
                    lo = mid
                else:
                    hi = mid - 1
            f = self._ascending[lo]
            t = self._time_s(w, f)
            # Between two steps the firmware dithers: the average sits at the limit.
            p = min(self._power_w(w, f, t), self.gpu.power_limit_w)
        return self._noisy(t, p, f, capped)

    def _noisy(self, t: float, p: float, f: int, capped: bool) -> IterCost:
        if self.noise > 0:
            t *= math.exp(self.noise * float(self._rng.standard_normal()))
            p *= math.exp(self.noise / 3.0 * float(self._rng.standard_normal()))
        return IterCost(
            time_s=t, power_w=p, energy_j=p * t, effective_clock_mhz=f, power_capped=capped
        )

    # ----- public API -------------------------------------------------------------
    def prefill(self, clock_mhz: float, new_tokens: int, context_tokens: int = 0) -> IterCost:
        """One prefill (extend) iteration of ``new_tokens`` over ``context_tokens`` cached."""
        return self.prefill_batch(clock_mhz, [(new_tokens, context_tokens)])

    def prefill_batch(self, clock_mhz: float, chunks: Sequence[tuple[int, int]]) -> IterCost:
        """One prefill iteration over several sequences: (new_tokens, context_tokens) each."""
        if not chunks or any(n <= 0 or c < 0 for n, c in chunks):
            raise ValueError(f"prefill needs positive new_tokens per chunk, got {list(chunks)}")
        return self._cost(self._prefill_work(chunks), clock_mhz)

    def decode(self, clock_mhz: float, batch_size: int, kv_tokens: int) -> IterCost:
        """One decode step of ``batch_size`` sequences holding ``kv_tokens`` in total."""
        if batch_size <= 0 or kv_tokens < 0:
            raise ValueError(
                f"decode needs batch_size > 0, kv_tokens >= 0: {batch_size}, {kv_tokens}"
            )
        fast = self._decode_terms.time_power(clock_mhz, batch_size, kv_tokens)
        if fast is None:  # power-capped: find the throttled clock
            return self._cost(self._decode_work(batch_size, kv_tokens), clock_mhz)
        f, t, p = fast
        return self._noisy(t, p, f, False)

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move ``tokens`` of KV from a prefill to a decode instance (TP shards in parallel)."""
        g = self.gpu
        return g.kv_link_latency_s + tokens * self.model.kv_bytes_per_token / self.tp / (
            g.kv_link_bw_bytes_s
        )

    def kv_capacity_tokens(self, mem_fraction: float = 0.88) -> int:
        """KV tokens that fit once weights are loaded (SGLang's --mem-fraction-static)."""
        per_gpu = self.gpu.mem_total_gib * 2**30 * mem_fraction - self.model.weight_bytes / self.tp
        if per_gpu <= 0:
            return 0
        return int(per_gpu * self.tp / self.model.kv_bytes_per_token)

    def with_gpu(self, **changes: float) -> GpuModel:
        """A copy with some GpuSpec knobs changed (for refitting and what-if studies)."""
        return GpuModel(
            msgspec.structs.replace(self.gpu, **changes), self.model, self.tp, self.noise
        )
