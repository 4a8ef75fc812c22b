"""bench/gpu/live_compare.py: a live run's figures against the simulator on the same slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu" / "live_compare.py"
TRACE = ROOT / "sim" / "data" / "azure_llm_2023_conv.csv.gz"
ARGS = {
    "trace": str(TRACE),
    "window": "[0.0, 20.0]",
    "rate_scale": "1.0",
    "gpu": "h200",
    "slo_ttft_s": "1.0",
    "slo_itl_s": "0.05",
    "max_running_requests": "32",
}
LIVE = {
    "energy_j": 4000.0,
    "energy_per_output_token_j": 0.5,
    "ttft_p50_ms": 50.0,
    "ttft_p99_ms": 400.0,
    "itl_p50_ms": 10.0,
    "itl_p99_ms": 100.0,
    "duration_s": 21.0,
    "slo_attainment": 0.9,
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def _write(path: Path, live: dict[str, float], args: dict[str, str] = ARGS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": args, "live": live, "replay": {"agreement": 1.0}}))


def test_live_run_against_twin_and_simulator(tmp_path: Path) -> None:
    _write(tmp_path / "live" / "live_report.json", LIVE)
    twin = {**LIVE, "energy_j": 4300.0, "ttft_p50_ms": 60.0}
    _write(tmp_path / "twin" / "live_report.json", twin)
    (tmp_path / "nvidia_smi_before.txt").write_text(
        "Driver Version                            : 580.1\n"
        "    Product Name                          : NVIDIA H200\n"
    )
    spec = tmp_path / "slower.json"  # a GPU whose decode steps carry 5 ms more
    spec.write_text(json.dumps({"base": "h200", "decode_fixed_s": 0.006}))
    proc = _run(str(tmp_path), "--gpu-spec", str(spec))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "compare.json").read_text())
    results = json.loads((tmp_path / "sim_1u_default" / "results.json").read_text())
    # the simulator ran the live run's slice and engine settings, without mixed chunks
    requests = len(window(scale_rate(load_trace(str(TRACE)), 1.0), 0.0, 20.0).requests)
    assert results["workload"]["requests"] == requests
    assert results["params"]["enable_mixed_chunk"] is False
    assert results["params"]["max_running_requests"] == 32
    assert results["params"]["cluster_label"] == "1u"
    sim = results["policies"]["default"]
    rows = {r["figure"]: r for r in doc["compare"]}
    energy = rows["energy_j"]
    assert energy["sim"] == sim["energy_j"]
    assert energy["sim_vs_live"] == round(sim["energy_j"] / 4000.0 - 1.0, 4)
    assert energy["sim_met"] == (abs(energy["sim_vs_live"]) <= 0.10)
    assert energy["twin_vs_live"] == 0.075 and energy["twin_met"] is True
    assert rows["ttft_p50_ms"]["twin_vs_live"] == 0.2 and rows["ttft_p50_ms"]["twin_met"] is False
    assert rows["duration_s"]["sim"] == sim["window_s"] and "sim_met" not in rows["duration_s"]
    assert doc["gpu"] == {"name": "NVIDIA H200", "driver": "580.1"}
    # the spec file's column: the same slice on the changed GPU, its decode slower
    slower = json.loads((tmp_path / "sim_1u_default_slower" / "results.json").read_text())
    assert slower["params"]["gpu_override"] == {"base": "h200", "decode_fixed_s": 0.006}
    assert rows["itl_p50_ms"]["spec"] == slower["policies"]["default"]["itl_p50_ms"]
    assert rows["itl_p50_ms"]["spec"] > rows["itl_p50_ms"]["sim"] + 4.0
    assert "--gpu-spec" in doc["sim_commands"]["spec"]
    md = (tmp_path / "compare.md").read_text()
    assert "| TTFT p50 (ms) | 50 | 60 | +20.0% |" in md
    assert "within 15%: twin not met" in md
    assert "| SLO attainment (TTFT, mean ITL) | 90.0% | 90.0% | +0.0 pt |" in md


def test_a_run_without_a_twin_and_bad_folders_are_clear(tmp_path: Path) -> None:
    _write(tmp_path / "live_report.json", LIVE)  # run3's layout: the report at the top
    ok = _run(str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "model twin" not in (tmp_path / "compare.md").read_text()
    assert json.loads((tmp_path / "compare.json").read_text())["model_twin"] is None

    moved = tmp_path / "moved"
    _write(moved / "live_report.json", LIVE, {**ARGS, "trace": "/gone/trace.csv"})
    proc = _run(str(moved))
    assert proc.returncode == 1 and "--trace" in proc.stderr and "Traceback" not in proc.stderr
    assert _run(str(moved), "--trace", str(TRACE)).returncode == 0

    proc = _run(str(moved), "--trace", str(TRACE), "--gpu-spec", str(tmp_path / "none.json"))
    assert proc.returncode == 1 and "no GPU spec file" in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(str(empty))
    assert proc.returncode == 1 and "no live_report.json" in proc.stderr

    broken = tmp_path / "broken"
    (broken / "live").mkdir(parents=True)
    (broken / "live" / "live_report.json").write_text('{"args": {}}')
    proc = _run(str(broken))
    assert proc.returncode == 1 and "no finished run" in proc.stderr
    _write(broken / "live" / "live_report.json", LIVE, {"trace": str(TRACE)})
    proc = _run(str(broken))
    assert proc.returncode == 1 and "lacks the run arguments gpu, rate_scale" in proc.stderr
    _write(broken / "live" / "live_report.json", LIVE, {**ARGS, "window": "0-20"})
    proc = _run(str(broken))
    assert proc.returncode == 1 and "is not [T0, SPAN]" in proc.stderr
