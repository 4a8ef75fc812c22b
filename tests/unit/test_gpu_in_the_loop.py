"""The emulator's H100 model against real runs of bench/gpu/llm_probe.py on a lent H100.

The results files are committed (bench/results/h100_llm_probe.json and its repeat
on a second machine, _run2.json); the GPU ran at default clocks, which the model
calls a request for its maximum clock. The point selection (which measured points
the model describes at all) lives in bench/gpu/compare_model.py, the script that
prints the comparison and refits the knobs, so the test and the fit agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import load_script
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel

ROOT = Path(__file__).resolve().parents[2]
RUNS = {
    "run1": ROOT / "bench/results/h100_llm_probe.json",
    "run2": ROOT / "bench/results/h100_llm_probe_run2.json",
}
MODEL = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
TOL = 0.10


CM = load_script("bench/gpu/compare_model.py")
DOCS: dict[str, dict[str, Any]] = {k: json.loads(p.read_text()) for k, p in RUNS.items()}
POINTS = [p for name, doc in DOCS.items() for p in CM.probe_points(doc, name)]
HELD = [p for p in POINTS if not p.excluded]


def _id(p: Any) -> str:
    return f"{p.source}-{p.label().replace(' ', '-')}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_results_come_from_a_real_h100_at_default_settings(name: str) -> None:
    doc = DOCS[name]
    assert doc["device"] == "NVIDIA H100 80GB HBM3"
    assert doc["driver"] and doc["driver"].count(".") == 2
    # recorded under the module path and class name of its day: the NVML reader
    assert doc["telemetry_source"].endswith((".NvmlGpuSource", ".NvmlDevice"))
    assert doc["settings_changed"] is False and "error" not in doc
    nvml = doc["info"]["nvml"]
    # Found and left at defaults: full P0 clock range, default power limit.
    assert nvml["pstate0_sm_clock_range_mhz"] == [345, 1980]
    assert nvml["power_limit_w"] == nvml["power_limit_default_w"] == 700.0
    assert doc["info"]["nvml_end"]["power_limit_w"] == 700.0
    assert doc["self_check"]["same_next_token"] and doc["self_check"]["kv_rel_err"] < 0.01
    assert doc["sampler"]["errors"] == []
    for r in doc["prefill"] + doc["decode"]:
        assert "error" not in r and r["bracketed"] and r["n_samples"] >= 20, r


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_runs_measured_the_shape_the_model_describes(name: str) -> None:
    """bench/gpu/llama_shape.py keeps its own copy of Llama-3.1-8B's shape (it runs with
    torch alone); the shape each run recorded must be the emulator's model."""
    shape, model = DOCS[name]["model"], MODELS["llama-3.1-8b"]
    for field in ("hidden", "layers", "heads", "kv_heads", "head_dim"):
        assert shape[field] == getattr(model, field), field
    assert shape["params"] == pytest.approx(model.params, rel=1e-3)


def test_every_point_is_either_held_or_excluded_for_a_stated_reason() -> None:
    assert len(HELD) >= 60
    reasons = {p.excluded for p in POINTS if p.excluded}
    assert reasons <= {
        "eager prefill (launch-bound)",
        "batch 129 unpadded (engine pads to 256)",
        "one sequence, long KV: probe attention not split over KV",
    }


@pytest.mark.parametrize("name", sorted(RUNS))
def test_exclusions_are_what_the_data_shows(name: str) -> None:
    doc = DOCS[name]
    pre = {(r["tokens"], r["graph"]): r for r in doc["prefill"]}
    # Eager small prefill is launch-bound: far slower than the same work in a graph.
    assert pre[(128, False)]["time_s_median"] > 1.3 * pre[(128, True)]["time_s_median"]
    dec = {(r["batch"], r["kv_tokens"]): r for r in doc["decode"]}
    # One sequence reads its extra KV at well under 1 TB/s (8 attention blocks) ...
    extra_b = (16384 - 128) * MODELS["llama-3.1-8b"].kv_bytes_per_token
    extra_s = dec[(1, 16384)]["time_s_median"] - dec[(1, 128)]["time_s_median"]
    assert extra_b / extra_s < 1.0e12
    # ... while 64 sequences read theirs at close to the HBM peak.
    extra_b = 64 * (4096 - 128) * MODELS["llama-3.1-8b"].kv_bytes_per_token
    extra_s = dec[(64, 4096)]["time_s_median"] - dec[(64, 128)]["time_s_median"]
    assert extra_b / extra_s > 2.5e12


@pytest.mark.parametrize("p", HELD, ids=_id)
def test_model_time_within_10_percent(p: Any) -> None:
    c = CM.model_cost(MODEL, p)
    assert abs(c.time_s / p.time_s - 1.0) < TOL, (c, p)


@pytest.mark.parametrize("p", HELD, ids=_id)
def test_model_power_and_energy_within_10_percent(p: Any) -> None:
    c = CM.model_cost(MODEL, p)
    assert abs(c.power_w / p.power_w - 1.0) < TOL, (c, p)
    assert abs(c.energy_j / (p.power_w * p.time_s) - 1.0) < TOL, (c, p)


@pytest.mark.parametrize("p", HELD, ids=_id)
def test_model_caps_where_the_gpu_capped(p: Any) -> None:
    doc = DOCS[p.source]
    rows = doc["prefill"] if p.kind == "prefill" else doc["decode"]
    key = "tokens" if p.kind == "prefill" else "batch"
    (r,) = [
        r
        for r in rows
        if r[key] == p.size and r.get("kv_tokens", 0) == p.kv_tokens and r.get("graph", True)
    ]
    c = CM.model_cost(MODEL, p)
    limit = MODEL.gpu.power_limit_w
    if r["throttle_fraction"] >= 0.9:  # NVML reported the power-cap reason nearly throughout
        assert c.power_w > 0.95 * limit
        # The capped clock: NVML's median dithers between steps, hence 12%.
        assert abs(c.effective_clock_mhz / p.clock_mhz - 1.0) < 0.12, (c, p)
    elif r["throttle_fraction"] == 0.0:
        assert not c.power_capped and c.effective_clock_mhz == MODEL.max_clock_mhz


@pytest.mark.parametrize("name", sorted(RUNS))
def test_idle_power_at_the_top_clock(name: str) -> None:
    (start,) = [r for r in DOCS[name]["idle"] if r["when"].startswith("start")]
    assert start["sm_clock_mhz_median"] == 1980
    assert abs(MODEL.idle_power_w(1980) / start["avg_power_w"] - 1.0) < TOL


@pytest.mark.parametrize(
    ("pstate0", "expected"),
    [([345, 1980], None), ([345, 1410], 1410), ([1005, 1005], 1005), (None, None)],
)
def test_a_locked_run_is_compared_at_its_clock(pstate0: Any, expected: int | None) -> None:
    doc = {"info": {"nvml": {"pstate0_sm_clock_range_mhz": pstate0, "max_sm_clock_mhz": 1980}}}
    assert CM.locked_clock_mhz(doc) == expected
    locked = [CM.Point("x", "decode", 64, 512, 0.01, 500.0, 1410.0, "", expected)]
    c = CM.model_cost(MODEL, locked[0])
    assert c.effective_clock_mhz == (expected or MODEL.max_clock_mhz)
