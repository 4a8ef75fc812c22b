"""The emulated hardware and models: every constant of the GPU model, with its source.

``GpuSpec`` holds one GPU type's hardware constants and the engine-efficiency and
power knobs fitted to it (docs/gpu-model.md; ``bench/emulator_calibrate.py``
refits them); ``ModelShape`` a decoder-only transformer's shape. ``GPUS`` and
``MODELS`` are the calibrated instances the emulator and the simulator use.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["GPUS", "MODELS", "GpuSpec", "ModelShape"]


class GpuSpec(msgspec.Struct, frozen=True, kw_only=True):
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
    # --- the driver's own behaviour with no lock (groundtruth/default_clock.py) ---
    # After work stops an unlocked GPU holds its boost clock (and that clock's idle
    # power) this long, then its clock decays toward the floor with this time
    # constant. Hold: measured on the lent H200 (bench/results/h200_idle_decay.json,
    # bench/gpu/idle_decay.py): while a process holds a CUDA context, as every serving
    # worker does, the clock stays at the maximum (1980 MHz, ~120 W) through 30-40 s of
    # idle, so it is held for as long as the worker lives: ``math.inf``. The H100 and
    # the A100 are assumed to behave the same (same driver; the H100's own 1.8 s sample
    # after work, bench/results/h100_nvml_sample.json, stays at 1965-1980 MHz, and a
    # published A100 report shows 146 W at 0% utilisation for 11+ minutes; docs/gpu-
    # model.md "The default clock policy"). The decay and the floor apply only to a
    # finite hold (the GPU once no process holds it, ~1.4 s after the last exits on the
    # H200; ``--default-idle-hold-s`` sets one): the decay time constant is modelled.
    default_idle_hold_s: float = math.inf
    default_idle_decay_s: float = 1.0
    default_idle_floor_mhz: int | None = None  # None: min_clock_mhz

    @property
    def peak_flop_per_clock(self) -> float:
        return float(self.sm_count * self.bf16_flop_per_clock_per_sm)


class ModelShape(msgspec.Struct, frozen=True, kw_only=True):
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
    # bench/results/h100_llama8b_shape_probe.json (5 prefill + 13 decode points; its decode
    # power, 7-16% under both runs' mean at the same shapes, weighs less) and ML.ENERGY's vLLM
    # serving runs (within 22%). The comparison, point by point: docs/gpu-in-the-loop.md.
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
    # The clock dimension (no clock was locked on a lent GPU): checked against the runs'
    # power-capped points (1485-1965 MHz; time MAPE 3.6%, power 4.1% with the model
    # locked at the measured clock) and the published figures in
    # bench/data/clock_sweeps.json (bench/clock_sweeps.py; docs/gpu-model.md "The clock
    # dimension, per GPU"). No published sweep with numbers pins them below ~1.5 GHz.
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
# H100 fit's, inherited through ``msgspec.structs.replace`` so a refit of the H100
# carries over.
_A100 = msgspec.structs.replace(
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
    # VoltanaLLM (arXiv:2509.04827, A100, Llama-3.1-8B): 1410 -> 1005 MHz slows execution
    # sub-linearly and energy is U-shaped in the clock; with these knees the model meets
    # both, its energy per token lowest at 705-810 MHz (bench/clock_sweeps.py). Neither
    # statement pins a value: no A100 clock sweep with numbers was found.
    volt_floor=0.717,
    volt_knee_mhz=700.0,
    mem_knee_mhz=900.0,
    mem_knee_exp=1.0,
    allreduce_latency_s=15e-6,
)

# H200 SXM, predicted from public data before any H200 was measured here: the same
# GH100 die as the H100 SXM5 (132 SMs, the same dense bf16 rate: 989 TFLOP/s in both
# data sheets, so the same clock range), with 141 GB of HBM3e at 4.8 TB/s instead of
# 80 GB of HBM3 at 3.35 TB/s, and the same 700 W maximum TDP. Everything the two parts
# share (clocks, voltage curve, static power, SM power, the engine knobs fitted to the
# H100 probe runs) is the H100's, inherited through ``msgspec.structs.replace`` like
# the A100's. Sources: NVIDIA H200 Tensor Core GPU data sheet (2024: "141GB HBM3e,
# 4.8TB/s, up to 700W (configurable)", BF16 1,979 TFLOPS with sparsity = 989 dense,
# NVLink 900 GB/s); NVIDIA H100 data sheet for the shared figures. The measured
# comparison, unfitted and refitted: docs/gpu-in-the-loop.md ("H200").
_H200 = msgspec.structs.replace(
    _H100,
    name="NVIDIA H200",  # the SXM part's NVML name
    hbm_bw_bytes_s=4.8e12,  # H200 data sheet
    mem_total_gib=141.0,  # data sheet "141GB" (KV capacity; slightly generous)
    # Reported memory clock only (telemetry): 4.8 TB/s over six 1024-bit HBM3e stacks
    # is ~6.3-6.4 Gb/s per pin, and NVML counts half the data rate (H100: 2619 MHz for
    # 5.2 Gb/s over 5120 bits = 3.35 TB/s).
    mem_clock_mhz=3200,
    # Same energy per HBM byte as the H100 fit (78.21 W at 3.35 TB/s): the memory
    # side's full-bandwidth power scales with the bandwidth, 78.21 * 4.8 / 3.35.
    hbm_power_w=112.1,
    # The voltage curve and knees are the H100's (same die). Ma et al. 2026 (arXiv:
    # 2605.11999, one H200): clock locking recovers up to 32% of decode energy at minimal
    # throughput loss; the model's best within 5% of the top-clock time is 34%
    # (bench/clock_sweeps.py).
    # NVLink 4 (data sheet: 900 GB/s bidirectional) and one 400 Gb/s NIC per GPU (DGX
    # H200 = DGX H100 network): the H100's values, inherited.
)

GPUS: dict[str, GpuSpec] = {"h100": _H100, "a100": _A100, "h200": _H200}

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
