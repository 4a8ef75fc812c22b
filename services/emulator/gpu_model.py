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
    GPUS["h100" | "a100"] -> GpuSpec, MODELS["llama-3.1-8b" | "llama-3.1-70b"] -> ModelShape
    m = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], tp=1, noise=0.0, seed=None)
    m.prefill(clock_mhz, new_tokens, context_tokens=0) -> IterCost
    m.prefill_batch(clock_mhz, [(new_tokens, context_tokens), ...]) -> IterCost
    m.decode(clock_mhz, batch_size, kv_tokens) -> IterCost   (kv_tokens: sum over the batch)
    m.idle_power_w(clock_mhz), m.kv_transfer_s(tokens), m.supported_clocks_mhz (descending),
    m.max_clock_mhz, m.min_clock_mhz, m.kv_capacity_tokens(mem_fraction)
IterCost.power_w and .energy_j are per GPU; an instance's energy is tp * energy_j.

Every knob lives in ``GpuSpec`` (hardware plus how efficiently an engine uses it) and
``ModelShape``; sources are beside the constants. Calibration: docs/gpu-model.md;
``bench/emulator_calibrate.py`` refits the efficiency and power knobs to new anchors.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from voltana.services.emulator.gpu_decode import DecodeTerms

__all__ = [
    "GPUS",
    "MODELS",
    "GpuModel",
    "GpuSpec",
    "IterCost",
    "ModelShape",
    "decode_bucket",
]


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type: hardware constants and the engine-efficiency/power knobs fitted to it."""

    name: str
    # --- hardware (vendor data sheets, NVML probes) ---
    sm_count: int
    bf16_flop_per_clock_per_sm: int
    min_clock_mhz: int
    max_clock_mhz: int
    clock_step_mhz: int
    mem_clock_mhz: int
    hbm_bw_bytes_s: float
    mem_total_gib: float
    power_limit_w: float
    power_limit_min_w: float
    nvlink_bw_bytes_s: float  # per direction, per GPU, for TP all-reduce
    kv_link_bw_bytes_s: float  # per GPU, prefill -> decode KV transfer (RDMA NIC)
    kv_link_latency_s: float
    # --- static power: idle draw at the lowest and highest clock ---
    idle_min_clock_w: float
    idle_max_clock_w: float
    # --- dynamic power ---
    sm_power_w: float  # SM power at f_max with the tensor cores fully busy
    hbm_power_w: float  # memory power at full HBM bandwidth
    mem_sm_activity: float  # SM activity of memory-bound kernels, relative to GEMM
    kv_sm_activity: float  # SM activity of decode attention while it reads KV, likewise
    volt_floor: float  # V(f)/V(f_max) at and below volt_knee_mhz
    volt_knee_mhz: float
    # --- how well an engine uses the hardware ---
    mem_knee_mhz: float  # below this clock memory-bound kernels slow down
    mem_knee_exp: float
    weight_bw_eff: float  # fraction of hbm_bw reached streaming weights in decode
    kv_bw_eff: float  # fraction of hbm_bw reached reading KV in attention
    decode_compute_eff: float  # tensor efficiency of decode GEMMs
    prefill_linear_eff: float  # tensor efficiency of large prefill GEMMs
    prefill_half_tokens: float  # GEMM efficiency is half of that at this many tokens
    prefill_linear_activity: float  # SM power of prefill GEMM time, relative to a full GEMM
    prefill_attn_activity: float  # SM power of prefill attention time, relative to a full GEMM
    prefill_attn_eff: float  # tensor efficiency of prefill attention
    roofline_sharpness: float  # p of the soft max (t_w^p + t_c^p)^(1/p)
    decode_fixed_s: float  # per-step overhead not tied to the SM clock
    prefill_fixed_s: float
    launch_cycles: float  # per-iteration SM-clock-bound overhead (cycles)
    allreduce_latency_s: float  # per all-reduce call (TP > 1)

    @property
    def peak_flop_per_clock(self) -> float:
        return float(self.sm_count * self.bf16_flop_per_clock_per_sm)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (bf16 weights and KV cache)."""

    name: str
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    bytes_per_param: int = 2
    bytes_per_kv: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 128 KiB per token for Llama-3.1-8B."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_kv


@dataclass(frozen=True)
class IterCost:
    """Cost of one engine iteration on one GPU of the instance."""

    time_s: float
    power_w: float  # per GPU, average over the iteration
    energy_j: float  # per GPU
    effective_clock_mhz: int
    power_capped: bool


_H100 = GpuSpec(
    name="NVIDIA H100 80GB HBM3",
    sm_count=132,  # H100 SXM5 data sheet
    bf16_flop_per_clock_per_sm=4096,  # dense bf16: 989 TFLOP/s at 1830 MHz / 132 SMs
    min_clock_mhz=345,  # NVML supported graphics clocks (probe): 345-1980, step 15
    max_clock_mhz=1980,
    clock_step_mhz=15,
    mem_clock_mhz=2619,  # probe: fixed memory clock
    hbm_bw_bytes_s=3.35e12,  # data sheet; probe copy 3.0 TB/s, GEMV 3.05 TB/s
    mem_total_gib=80.0,
    power_limit_w=700.0,  # probe: default and max limit
    power_limit_min_w=200.0,
    nvlink_bw_bytes_s=450e9,  # NVLink 4: 900 GB/s bidirectional
    kv_link_bw_bytes_s=50e9,  # one 400 Gb/s ConnectX-7 per GPU (DGX H100)
    kv_link_latency_s=1.0e-3,
    idle_min_clock_w=69.0,  # probe: idle at 345 MHz
    idle_max_clock_w=117.0,  # probe: idle at 1980 MHz right after load
    # Knobs marked [fit] come from `bench/emulator_calibrate.py` (the one calibration
    # entry point; docs/gpu-model.md "Calibration"), fitted at once to every real
    # Llama-3.1-8B-shaped measurement there is: two runs of bench/gpu/llm_probe.py on
    # lent H100 80GB HBM3s (driver 580.159.04, default clocks, 700 W;
    # bench/results/h100_llm_probe{,_run2}.json, 9 prefill + 25 decode points each,
    # CUDA graphs, NVML energy counter), the earlier probe in
    # ../shared/data/calibration (5 prefill + 13 decode points; its decode power, 7-16%
    # under both runs' mean at the same shapes, weighs less) and ML.ENERGY's vLLM serving runs
    # (within 22%). The comparison, point by point: docs/gpu-in-the-loop.md.
    sm_power_w=1301.0,  # [fit]
    hbm_power_w=78.21,  # [fit]
    mem_sm_activity=0.263,  # [fit] GEMV streaming weights
    # [fit] Decode attention reading KV. The runs' marginal cost of KV is ~250 pJ/byte,
    # ~800 W while it is read at 3.1 TB/s (64 x 2048 -> 64 x 4096: +4.4 J over +5.6 ms),
    # where a plain GEMV streams a weight matrix at 3.05 TB/s for 501 W (gpu-model.md
    # probe). Likely why: a decode attention kernel pads its 1-4 query rows to a tensor-
    # core tile and runs the softmax on the FP32 units for every KV byte. With this
    # value the model draws ~715 W while reading KV, ~415 W streaming weights (1980 MHz).
    kv_sm_activity=0.4447,
    volt_floor=0.717,
    volt_knee_mhz=900.0,
    mem_knee_mhz=1050.0,  # energy/token bottom 0.9-1.3 GHz (gpu-model.md)
    mem_knee_exp=1.0,
    weight_bw_eff=0.7074,  # [fit]
    kv_bw_eff=0.9131,  # [fit] runs: 64 sequences read KV at 3.1 TB/s
    decode_compute_eff=0.6907,  # [fit] with the soft max below
    prefill_linear_eff=0.7503,  # [fit]
    prefill_half_tokens=77.67,  # [fit]
    prefill_linear_activity=0.6718,  # [fit]
    prefill_attn_activity=0.7562,  # [fit]
    prefill_attn_eff=0.5437,  # [fit]
    roofline_sharpness=1.534,  # [fit]
    decode_fixed_s=0.3817e-3,  # [fit]
    prefill_fixed_s=1.454e-3,  # [fit]
    launch_cycles=1.0e6,
    allreduce_latency_s=12e-6,
)

# No A100 measurement is available: its hardware, static power, dynamic-power scale,
# voltage and memory knees are its own (below); every engine knob (bandwidth and
# tensor efficiencies, SM activities, roofline sharpness, fixed overheads) is the
# H100 fit's, inherited through ``replace`` so a refit of the H100 carries over.
_A100 = replace(
    _H100,
    name="NVIDIA A100-SXM4-80GB",
    sm_count=108,  # A100 data sheet
    bf16_flop_per_clock_per_sm=2048,  # 312 TFLOP/s dense bf16 at 1410 MHz
    min_clock_mhz=210,  # NVML: 210-1410 MHz
    max_clock_mhz=1410,
    clock_step_mhz=15,
    mem_clock_mhz=1593,
    hbm_bw_bytes_s=2.039e12,  # data sheet (80 GB)
    mem_total_gib=80.0,
    power_limit_w=400.0,
    power_limit_min_w=100.0,
    nvlink_bw_bytes_s=300e9,  # NVLink 3: 600 GB/s bidirectional
    kv_link_bw_bytes_s=25e9,  # one 200 Gb/s HDR NIC per GPU (DGX A100)
    kv_link_latency_s=1.0e-3,
    idle_min_clock_w=50.0,  # public: idle 50-63 W
    idle_max_clock_w=63.0,
    # Scaled to splitwise-sim's ~400 W in prefill (at the cap) and ~250 W in decode.
    sm_power_w=500.0,
    hbm_power_w=100.0,
    volt_floor=0.717,
    volt_knee_mhz=700.0,
    mem_knee_mhz=900.0,  # energy/token bottom 0.9-1.2 GHz (derived estimate)
    mem_knee_exp=1.0,
    allreduce_latency_s=15e-6,
)

GPUS: dict[str, GpuSpec] = {"h100": _H100, "a100": _A100}

MODELS: dict[str, ModelShape] = {
    # meta-llama/Llama-3.1-8B config.json: 32 layers, 4096 hidden, 32 heads, 8 KV heads.
    "llama-3.1-8b": ModelShape(
        name="meta-llama/Llama-3.1-8B-Instruct",
        params=8.03e9,
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        head_dim=128,
    ),
    # meta-llama/Llama-3.1-70B config.json: 80 layers, 8192 hidden, 64 heads, 8 KV heads.
    "llama-3.1-70b": ModelShape(
        name="meta-llama/Llama-3.1-70B-Instruct",
        params=70.6e9,
        layers=80,
        hidden=8192,
        heads=64,
        kv_heads=8,
        head_dim=128,
    ),
}


def decode_bucket(batch_size: int) -> int:
    """CUDA-graph batch size an engine pads a decode batch to (1, 2, 4, 8..128 by 8, then by 128)."""
    if batch_size <= 0:
        return 0
    if batch_size <= 4:
        return 1 << (batch_size - 1).bit_length()
    if batch_size <= 128:
        return -(-batch_size // 8) * 8
    return -(-batch_size // 128) * 128


@dataclass(frozen=True)
class _Work:
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
        n = (gpu.max_clock_mhz - gpu.min_clock_mhz) // gpu.clock_step_mhz
        self.supported_clocks_mhz: list[int] = [
            gpu.max_clock_mhz - i * gpu.clock_step_mhz for i in range(n + 1)
        ]
        self._ascending = sorted(self.supported_clocks_mhz)
        self._decode_terms = DecodeTerms(self)

    # ----- clocks and static power -------------------------------------------------
    @property
    def max_clock_mhz(self) -> int:
        return self.gpu.max_clock_mhz

    @property
    def min_clock_mhz(self) -> int:
        return self.gpu.min_clock_mhz

    def nearest_clock_mhz(self, clock_mhz: float) -> int:
        """The highest supported clock not above ``clock_mhz`` (min clock if below all)."""
        asc = self._ascending
        if not clock_mhz >= asc[0]:  # below all (or NaN): the min clock
            return asc[0]
        return asc[bisect.bisect_right(asc, clock_mhz) - 1]

    def idle_power_w(self, clock_mhz: float) -> float:
        """Power of one idle GPU held at ``clock_mhz`` (static part of the power model)."""
        g = self.gpu
        f = min(max(clock_mhz, g.min_clock_mhz), g.max_clock_mhz)
        x = (f - g.min_clock_mhz) / (g.max_clock_mhz - g.min_clock_mhz)
        return g.idle_min_clock_w + (g.idle_max_clock_w - g.idle_min_clock_w) * x

    def _volt(self, f: float) -> float:
        g = self.gpu
        if f <= g.volt_knee_mhz:
            return g.volt_floor
        x = (f - g.volt_knee_mhz) / (g.max_clock_mhz - g.volt_knee_mhz)
        return g.volt_floor + (1.0 - g.volt_floor) * x

    def _dyn(self, f: float) -> float:
        """Relative dynamic power per unit activity: f * V(f)^2, 1.0 at f_max."""
        return (f / self.gpu.max_clock_mhz) * self._volt(f) ** 2

    def _bw(self, f: float) -> float:
        g = self.gpu
        return g.hbm_bw_bytes_s * min(1.0, f / g.mem_knee_mhz) ** g.mem_knee_exp

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
        bw = self._bw(f)
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
        dyn = g.sm_power_w * self._dyn(f) * u_sm
        return self.idle_power_w(f) + g.hbm_power_w * u_mem + dyn

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
        return GpuModel(replace(self.gpu, **changes), self.model, self.tp, self.noise)  # type: ignore[arg-type]
