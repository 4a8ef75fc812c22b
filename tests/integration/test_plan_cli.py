"""``voltana plan`` as a real subprocess on a small trace: ranked table, recommendation,
results.json and the frontier plot; the same seed gives the same answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _trace(path: Path) -> Path:
    """A small Azure-format trace (~30 s, ~2 req/s) written for the test."""
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.exponential(1 / 2.0, size=60))
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for s, n, o in zip(t, rng.integers(100, 3000, 60), rng.integers(5, 200, 60), strict=True):
        sec = 46.0 + float(s)
        lines.append(f"2023-11-16 18:{15 + int(sec // 60):02d}:{sec % 60:010.7f},{n},{o}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _plan(trace: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "voltana",
            "plan",
            "--trace",
            str(trace),
            "--gpus",
            "2",
            "--gpu",
            "h100",
            "--slo-ttft-s",
            "1",
            "--slo-itl-s",
            "0.05",
            "--quick-profile",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_plan_end_to_end_and_reproducible(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "trace.csv")
    a = _plan(trace, tmp_path / "a", "--jobs", "2")
    assert a.returncode == 0, a.stderr
    assert "recommended:" in a.stdout and "saving vs default clocks, best colocated" in a.stdout
    data: dict[str, Any] = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (tmp_path / "a" / "frontier.png").stat().st_size > 0
    rows = data["rows"]
    pairs = {(r["cluster"], r["policy"]) for r in rows}
    assert pairs == {(c, p) for c in ("2u", "1p1d") for p in ("default", "default-p2", "voltana")}
    rec = data["recommendation"]
    assert rec is not None and rec["figures"]["slo_attainment"] >= 0.99
    assert rec["figures"]["energy_j"] == min(
        r["figures"]["energy_j"] for r in rows if r["figures"]["slo_attainment"] >= 0.99
    )
    colo = data["reference_colocated"]
    assert colo["cluster"] == "2u" and colo["clocks"] == "default"
    assert data["reference_pd"]["cluster"] == "1p1d"
    expect = 1 - rec["figures"]["energy_j"] / colo["figures"]["energy_j"]
    assert data["saving_vs_default_colocated"] == round(expect, 6)
    # same seed, one process instead of two: the same rows, figures and answer
    b = _plan(trace, tmp_path / "b", "--jobs", "1")
    assert b.returncode == 0, b.stderr
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("rows", "recommendation", "saving_vs_default_colocated", "saving_vs_default_pd"):
        assert again[key] == data[key], key


def test_plan_rejects_bad_input_clearly(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "trace.csv")
    bad = _plan(trace, tmp_path / "x", "--gpu", "h900")
    assert bad.returncode != 0 and "h900" in bad.stderr and "h100" in bad.stderr
    bad = _plan(trace, tmp_path / "x", "--tp", "3")
    assert bad.returncode == 1 and "multiple of --tp" in bad.stderr
    assert not (tmp_path / "x" / "results.json").exists()
