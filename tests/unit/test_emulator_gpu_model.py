"""The ground-truth GPU model against measured anchors and the physics it must show.

Anchor numbers are copied here with their source; the raw probe JSON
(bench/results/h100_llama8b_shape_probe.json) is cross-checked too.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.buckets import decode_bucket, default_buckets, round_up_to_bucket

H100_8B = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
A100_8B = GpuModel(GPUS["a100"], MODELS["llama-3.1-8b"])
ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "bench/results/h100_llama8b_shape_probe.json"
# Two later runs of the same kind of probe on lent H100s (committed, bench/results/;
# tests/unit/test_gpu_in_the_loop.py holds the model within 10% of every point of them).
LATER_RUNS = [
    ROOT / "bench/results/h100_llm_probe.json",
    ROOT / "bench/results/h100_llm_probe_run2.json",
]


def _later_decode() -> dict[tuple[int, int], list[tuple[float, float]]]:
    """(batch, context) -> [(time_ms, power_w)] of the later runs' decode points."""
    out: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for path in LATER_RUNS:
        for r in json.loads(path.read_text())["decode"]:
            key = (r["batch"], r["kv_tokens"])
            out.setdefault(key, []).append((1e3 * r["time_s_median"], r["avg_power_w"]))
    return out


LATER = _later_decode()

# Source: H100 SXM5 80GB, Llama-3.1-8B-shaped decoder, default clocks, 700 W limit
# (docs/gpu-model.md table "Anchors: a Llama-3.1-8B-shaped decoder", probe JSON).
# (tokens, time_ms, avg_power_w, median_sm_clock_mhz)
PREFILL_ANCHORS = [
    (1024, 29.5, 691, 1725),
    (2048, 58.6, 711, 1665),
    (4096, 119.1, 684, 1635),
    (8192, 252.0, 689, 1605),
    (16384, 554.0, 683, 1500),
]
# (batch, context per sequence, time_ms, avg_power_w)
DECODE_ANCHORS = [
    (1, 512, 7.1, 403),
    (8, 512, 7.9, 380),
    (16, 512, 8.3, 399),
    (32, 512, 8.6, 441),
    (64, 512, 9.6, 500),
    (128, 512, 11.7, 571),
    (256, 512, 16.0, 687),
    (384, 512, 22.3, 693),
    (512, 512, 27.0, 682),
    (1, 2048, 7.2, 409),
    (16, 2048, 9.3, 419),
    (64, 2048, 13.7, 530),
    (128, 2048, 20.0, 585),
]
# The probe's B=129 row replayed a graph captured for exactly 129 sequences; the model
# pads to the engine's bucket (256) as SGLang does, so that row is not an anchor here.
#
# Decode POWER of this probe is held to the range the measurements of the same shape
# span, not to this probe alone: at 8-128 sequences it reads 7-16% below the later
# runs' mean (e.g. 128 x 512: 571 W against 680 and 682 W; 128 x 2048: 585 W against 690 and
# 691 W), which agree with each other within 5%, and below ML.ENERGY's vLLM serving
# runs (669 W at batch 128). This probe's method (warm-up, power source, window) is not
# recorded; the later runs' is (docs/gpu-in-the-loop.md). The model follows the later
# runs, so it sits up to about 16% above this probe there (docs/gpu-model.md,
# "Calibration"). Time stays held to this probe at 10% everywhere.
POWER_TOL = 0.10
ENERGY_TOL = 0.12


def _in_range(value: float, measured: list[float], tol: float) -> bool:
    """Within ``tol`` of the range [min, max] of the measurements of one shape."""
    return min(measured) * (1.0 - tol) < value < max(measured) * (1.0 + tol)


def _decode_measured(
    batch: int, context: int, time_ms: float, power_w: float
) -> tuple[list[float], list[float]]:
    """Power (W) and energy per step (J) of this probe and the later runs, same shape."""
    later = LATER.get((batch, context), [])
    powers = [power_w] + [p for _, p in later]
    energies = [power_w * time_ms / 1e3] + [p * t / 1e3 for t, p in later]
    return powers, energies


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1.0)


@pytest.mark.parametrize(("tokens", "time_ms", "power_w", "clock_mhz"), PREFILL_ANCHORS)
def test_prefill_matches_h100_anchor(
    tokens: int, time_ms: float, power_w: float, clock_mhz: int
) -> None:
    c = H100_8B.prefill(1980, tokens)
    assert _rel(c.time_s * 1e3, time_ms) < 0.10
    assert _rel(c.power_w, power_w) < 0.10
    assert _rel(c.energy_j / tokens, power_w * time_ms / 1e3 / tokens) < 0.10
    assert c.power_capped
    # Throttled below the requested clock, near the measured median (which dithers).
    assert _rel(c.effective_clock_mhz, clock_mhz) < 0.16


@pytest.mark.parametrize(("batch", "context", "time_ms", "power_w"), DECODE_ANCHORS)
def test_decode_matches_h100_anchor(
    batch: int, context: int, time_ms: float, power_w: float
) -> None:
    c = H100_8B.decode(1980, batch, batch * context)
    assert _rel(c.time_s * 1e3, time_ms) < 0.10
    powers, energies = _decode_measured(batch, context, time_ms, power_w)
    assert _in_range(c.power_w, powers, POWER_TOL), (c, powers)
    assert _in_range(c.energy_j, energies, ENERGY_TOL), (c, energies)


def test_later_runs_cover_every_decode_anchor_and_disagree_where_said() -> None:
    """The power range above is the data's: the later runs measured every anchor shape,
    and read 10% or more above this probe at 128 x 512, 64 x 2048 and 128 x 2048."""
    for batch, context, _, _ in DECODE_ANCHORS:
        assert len(LATER[(batch, context)]) == 2, (batch, context)
    anchors = {(b, k): p for b, k, _, p in DECODE_ANCHORS}
    for shape in [(128, 512), (64, 2048), (128, 2048)]:
        assert min(p for _, p in LATER[shape]) > 1.10 * anchors[shape], shape
    # ... while the later runs agree with each other within 6% at every anchor shape.
    for shape in anchors:
        pts = LATER[shape]
        assert max(p for _, p in pts) < 1.06 * min(p for _, p in pts), shape


def test_idle_power_anchors() -> None:
    # Probe: 69 W idle at 345 MHz, 117 W idle at 1980 MHz right after load.
    assert H100_8B.idle_power_w(345) == pytest.approx(69.0, rel=0.05)
    assert H100_8B.idle_power_w(1980) == pytest.approx(117.0, rel=0.05)
    assert H100_8B.idle_power_w(1000) < H100_8B.idle_power_w(1500)
    # Public: A100 idle 50-63 W.
    assert 45 <= A100_8B.idle_power_w(210) <= A100_8B.idle_power_w(1410) <= 66


@pytest.mark.parametrize(
    ("batch", "itl_ms", "power_w"),
    # ML.ENERGY leaderboard v3, vLLM, H100 at 700 W, Llama-3.1-8B (lower confidence:
    # a whole serving run with prefill interleaved and mixed contexts; ~1.5k assumed).
    [(8, 7.3, 486), (32, 8.9, 560), (128, 16.5, 669), (256, 26.1, 691), (512, 47.4, 688)],
)
def test_decode_near_ml_energy_serving_runs(batch: int, itl_ms: float, power_w: float) -> None:
    c = H100_8B.decode(1980, batch, batch * 1500)
    assert _rel(c.time_s * 1e3, itl_ms) < 0.25
    assert _rel(c.power_w, power_w) < 0.25


@pytest.mark.parametrize(
    ("batch", "itl_ms", "total_power_w"),
    # ML.ENERGY v3: Llama-3.3-70B on 4 H100 (TP4), ITL and power of all 4 GPUs.
    [(8, 16.9, 1787), (64, 22.3, 2108), (256, 39.1, 2519), (512, 73.6, 2491)],
)
def test_70b_tp4_near_ml_energy(batch: int, itl_ms: float, total_power_w: float) -> None:
    m = GpuModel(GPUS["h100"], MODELS["llama-3.1-70b"], tp=4)
    c = m.decode(1980, batch, batch * 1500)
    assert _rel(c.time_s * 1e3, itl_ms) < 0.25
    assert _rel(4 * c.power_w, total_power_w) < 0.15


def test_a100_splitwise_power_levels() -> None:
    # splitwise-sim: A100 ~400 W in prefill (the cap), ~250 W in decode; 400 W limit.
    p = A100_8B.prefill(1410, 4096)
    assert p.power_w <= 400.0 + 1e-6
    assert p.power_w > 360
    d = A100_8B.decode(1410, 32, 32 * 1024)
    assert 200 < d.power_w < 330


def test_cross_check_probe_json() -> None:
    probe = json.loads(PROBE.read_text())
    for e in probe["prefill"]:
        if e["tokens"] < 1024:  # launch-bound eager run (docs/gpu-model.md)
            continue
        c = H100_8B.prefill(1980, e["tokens"])
        assert _rel(c.time_s * 1e3, e["ms"]) < 0.10, e
        assert _rel(c.energy_j, e["energy_per_iter_j"]) < 0.10, e
    for e in probe["decode"]:
        if e["batch"] == 129:
            continue  # exact-size graph in the probe; the engine pads to 256
        c = H100_8B.decode(1980, e["batch"], e["batch"] * e["context"])
        assert _rel(c.time_s * 1e3, e["ms"]) < 0.10, e
        powers, energies = _decode_measured(e["batch"], e["context"], e["ms"], e["avg_power_w"])
        assert _in_range(c.power_w, powers, POWER_TOL), (c, powers)
        assert _in_range(c.energy_j, energies, ENERGY_TOL), (c, energies)


# ----- physics ------------------------------------------------------------------------


def test_prefill_time_scales_as_inverse_clock_up_to_the_cap() -> None:
    work = 2048
    ref = H100_8B.prefill(900, work)
    assert not ref.power_capped
    for f in (600, 750, 1050, 1200, 1350, 1500):
        c = H100_8B.prefill(f, work)
        assert not c.power_capped
        # Within 10% of perfect 1/f scaling (fixed overheads and launch bound excepted).
        assert _rel(c.time_s / ref.time_s, 900 / f) < 0.10
    # Above the cap clock, asking for more buys nothing.
    top = H100_8B.prefill(1980, work)
    assert top.power_capped and top.effective_clock_mhz < 1980
    assert H100_8B.prefill(1950, work).time_s == pytest.approx(top.time_s, rel=0.01)


def test_decode_time_flat_down_to_a_knee() -> None:
    t = {f: H100_8B.decode(f, 32, 32 * 1024).time_s for f in (1980, 1500, 1200, 900, 600, 345)}
    assert _rel(t[1200], t[1980]) < 0.08
    assert _rel(t[1500], t[1980]) < 0.05
    assert t[600] > 1.3 * t[1980]
    assert t[345] > 2.0 * t[1980]


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("gpu", ["h100", "a100"])
def test_energy_per_token_is_u_shaped(phase: str, gpu: str) -> None:
    m = GpuModel(GPUS[gpu], MODELS["llama-3.1-8b"])
    clocks = sorted(m.supported_clocks_mhz)
    if phase == "prefill":
        e = [m.prefill(f, 2048).energy_j for f in clocks]
    else:
        e = [m.decode(f, 16, 16 * 1024).energy_j for f in clocks]
    i = min(range(len(e)), key=e.__getitem__)
    assert 0 < i < len(e) - 1
    assert e[0] > 1.05 * e[i] and e[-1] > 1.05 * e[i]
    # The bottom sits in the middle of the range (0.9-1.3 GHz on H100 per gpu-model.md).
    assert 0.3 < (clocks[i] - clocks[0]) / (clocks[-1] - clocks[0]) < 0.75


def test_decode_steps_up_at_a_bucket_boundary() -> None:
    k = 1024
    t = {b: H100_8B.decode(1980, b, b * k).time_s for b in (120, 128, 129, 136)}
    within = t[128] - t[120]
    step = t[129] - t[128]
    assert step > 3 * within
    assert step > 0.05 * t[128]
    assert t[136] - t[129] < step


@pytest.mark.parametrize(
    ("batch", "bucket"),
    [(1, 1), (3, 4), (5, 8), (8, 8), (9, 16), (128, 128), (129, 256), (300, 384)],
)
def test_decode_bucket(batch: int, bucket: int) -> None:
    assert decode_bucket(batch) == bucket


def test_profile_bucket_table_is_the_engine_schedule() -> None:
    # A profile's decode buckets are where the ground truth's decode time steps.
    table = default_buckets(600)
    assert table[-1] >= 600
    for b in range(1, table[-1] + 1):
        assert round_up_to_bucket(table, b) == decode_bucket(b)
    assert default_buckets(8, small=False) == list(range(8, 129, 8))


def test_supported_clocks_like_nvml() -> None:
    clocks = H100_8B.supported_clocks_mhz
    assert clocks[0] == 1980 == H100_8B.max_clock_mhz
    assert clocks[-1] == 345 == H100_8B.min_clock_mhz
    assert all(a - b == 15 for a, b in itertools.pairwise(clocks))
    assert A100_8B.supported_clocks_mhz[0] == 1410


def test_noise_is_seeded_and_zero_noise_is_exact() -> None:
    a = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], noise=0.05, seed=7)
    b = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], noise=0.05, seed=7)
    xs = [a.decode(1980, 8, 8000).time_s for _ in range(20)]
    assert xs == [b.decode(1980, 8, 8000).time_s for _ in range(20)]
    assert len(set(xs)) > 1
    base = H100_8B.decode(1980, 8, 8000).time_s
    assert sum(xs) / len(xs) == pytest.approx(base, rel=0.05)
    assert H100_8B.decode(1980, 8, 8000) == H100_8B.decode(1980, 8, 8000)


def test_tp_splits_work_and_kv_transfer() -> None:
    tp4 = GpuModel(GPUS["h100"], MODELS["llama-3.1-70b"], tp=4)
    tp8 = GpuModel(GPUS["h100"], MODELS["llama-3.1-70b"], tp=8)
    assert tp8.decode(1980, 8, 8000).time_s < tp4.decode(1980, 8, 8000).time_s
    assert tp8.kv_transfer_s(4096) < tp4.kv_transfer_s(4096)
    # 4096 tokens x 128 KiB over one 400 Gb/s NIC: ~11 ms + 1 ms setup.
    assert H100_8B.kv_transfer_s(4096) == pytest.approx(1e-3 + 4096 * 131072 / 50e9)
    assert H100_8B.kv_capacity_tokens() > 300_000


@pytest.mark.parametrize("bad", [(0, 0), (-1, 5)])
def test_bad_work_is_rejected(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        H100_8B.prefill(1980, *bad)
    with pytest.raises(ValueError):
        H100_8B.decode(1980, bad[0], bad[1])
