"""bench/gpu/compare_model.py: any GPU spec against any probe file, one summary line, a prediction table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from helpers import load_script
from voltana.groundtruth.gpu_model import GPUS

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench/results/h100_llm_probe.json"
SUMMARY = re.compile(
    r"^time MAPE (\d+\.\d)%, power MAPE (\d+\.\d)%, energy MAPE (\d+\.\d)% over (\d+) points$"
)


CM = load_script("bench/gpu/compare_model.py")
PP = load_script("bench/gpu/probe_points.py")


def test_prediction_without_a_run_covers_every_probe_point(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "pred.json"
    assert CM.main(["--gpu", "h200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no measurement" in text
    rows = json.loads(out.read_text())["rows"]
    n_points = len(PP.PREFILL_TOKENS) + len(PP.PREFILL_EAGER_TOKENS) + len(PP.DECODE_POINTS)
    assert len(rows) == n_points
    assert all(r["model_time_ms"] > 0 and 0 < r["model_power_w"] <= 700.0 for r in rows)
    assert json.loads(out.read_text())["spec"]["hbm_bw_bytes_s"] == 4.8e12


def test_any_run_against_any_spec_ends_with_one_summary_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "cmp.json"
    assert CM.main(["--gpu", "h200", "--runs", str(RUN), "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = SUMMARY.match(last)
    assert m, last
    rows = json.loads(out.read_text())["rows"]
    held = [r for r in rows if not r["excluded"]]
    assert int(m.group(4)) == len(held)
    mape_t = 100 * sum(abs(r["time_err"]) for r in held) / len(held)
    assert float(m.group(1)) == pytest.approx(mape_t, abs=0.051)
    # An H100 run against the H200 model: decode (memory-bound) is predicted faster.
    decode = [r for r in held if r["point"].startswith("decode")]
    assert sum(r["time_err"] for r in decode) / len(decode) < -0.15


def test_unreadable_run_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        CM.main(["--gpu", "h200", "--runs", str(bad)])
    assert exc.value.code == 2
    assert "cannot read probe results" in capsys.readouterr().err


def test_h200_differs_from_the_h100_only_in_its_data_sheet_memory() -> None:
    h100, h200 = msgspec.to_builtins(GPUS["h100"]), msgspec.to_builtins(GPUS["h200"])
    changed = {k for k in h100 if h100[k] != h200[k]}
    assert changed == {"name", "hbm_bw_bytes_s", "mem_total_gib", "mem_clock_mhz", "hbm_power_w"}
    # Same energy per HBM byte as the H100 fit.
    per_byte = [g["hbm_power_w"] / g["hbm_bw_bytes_s"] for g in (h100, h200)]
    assert per_byte[1] == pytest.approx(per_byte[0], rel=0.01)


def test_h200_results_come_from_a_real_h200_left_as_found() -> None:
    """The committed H200 runs: a real H200, default settings, settings unchanged after."""
    results = ROOT / "bench/results"
    probe = json.loads((results / "h200_llm_probe.json").read_text())
    assert probe["device"] == "NVIDIA H200" and probe["settings_changed"] is False
    nvml = probe["info"]["nvml"]
    assert nvml["pstate0_sm_clock_range_mhz"] == [345, 1980]
    assert nvml["power_limit_w"] == nvml["power_limit_default_w"] == 700.0
    snapshots = [
        ("h200_settings_before.json", "h200_settings_after.json"),
        ("h200_idle_decay_settings_before.json", "h200_idle_decay_settings_after.json"),
        *(
            (f"h200_live/{run}/settings_before.json", f"h200_live/{run}/settings_after.json")
            for run in ("run1_eager_prefill", "run2", "run3_kv_spread")
        ),
    ]
    for before, after in snapshots:
        b = json.loads((results / before).read_text())
        a = json.loads((results / after).read_text())
        assert b["name"] == "NVIDIA H200" and b["driver"] == "580.159.04", before
        assert a["unchanged"] is True and a["differences"] == [], after
        assert b["pstate0_sm_clock_range_mhz"] == a["pstate0_sm_clock_range_mhz"] == [345, 1980]
