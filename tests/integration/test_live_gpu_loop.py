"""bench/gpu/live_gpu.py, the live system of the GPU runs, on a CPU with the tiny shape.

Every part a lent GPU runs: NATS with the event log, the GPU-backed worker (torch on the
CPU), the router in front of it, telemetry, freqctl and the dry-run actuator, then replay
over the log. What a device run depends on is checked here, so a change cannot break it
unseen: every request answered through the router, each one routed and settled on the
bus, no service logging an error, no prompt served from the prefix cache that the trace
does not share, and replay agreeing with every recorded decision.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "sim" / "data" / "azure_llm_2023_conv.csv.gz"


def test_the_whole_loop_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "live"
    argv = [sys.executable, str(ROOT / "bench" / "gpu" / "live_gpu.py"), "--trace", str(TRACE)]
    argv += ["--window", "0", "10", "--rate-scale", "0.5", "--backend", "torch"]
    argv += ["--device", "cpu", "--torch-shape", "tiny", "--torch-kv-pool-gib", "0.05"]
    argv += ["--gpu-source", "emulated", "--out-dir", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    logs = {p.name: p.read_text(errors="replace") for p in out.glob("*.log")}
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "live_report.json").read_text())
    live = report["live"]
    assert live["requests"] > 0 and live["completed"] == live["requests"], live
    assert live["failed"] == [] and live["energy_j"] > 0
    # the trace's prompts share nothing, so the engine computed every prompt token: the
    # client's ids must not hand its prefix cache hits the simulator never sees
    assert report["device"]["prefill_tokens"] == live["input_tokens"], report["device"]

    for name in ("router", "worker", "telemetry", "freqctl", "actuator"):
        assert f"{name}.log" in logs, sorted(logs)
        errors = [ln for ln in logs[f"{name}.log"].splitlines() if '"level": "error"' in ln]
        assert not errors, (name, errors[:3])
    started = next(
        json.loads(ln) for ln in logs["router.log"].splitlines() if "router_started" in ln
    )
    assert started["mode"] == "unified" and started["nats"], started

    subjects = [json.loads(ln)["subject"] for ln in (out / "events.jsonl").open()]
    assert subjects.count("voltana.route.decision") == live["requests"]
    assert subjects.count("voltana.request.done") == live["requests"]
    assert any(s.startswith("voltana.freqctl.decision") for s in subjects)

    replay = report["replay"]
    assert report["replay_rc"] == 0 and replay["divergences"] == 0
    assert replay["agreement"] == 1.0 and sum(replay["compared_with_recorded"].values()) > 0
