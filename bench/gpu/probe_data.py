"""Probe runs as points, and the GPU model against them (``compare_model.py``'s data side).

``probe_points`` reads a ``bench/gpu/llm_probe.py`` results file, ``legacy_points`` the
earlier probe's format; ``exclusion`` says which points lie outside what the model
describes; ``compare`` puts the model beside each point.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voltana_path import ensure_voltana

ensure_voltana()

from voltana.groundtruth.gpu_model import GpuModel, IterCost  # noqa: E402
from voltana.predictor.buckets import decode_bucket  # noqa: E402


@dataclass(frozen=True)
class Point:
    """One measured point: what ran, and what the GPU did (default clocks)."""

    source: str
    kind: str  # "prefill" | "decode"
    size: int  # prefill: new tokens; decode: batch size
    kv_tokens: int  # decode: KV tokens per sequence before the step
    time_s: float
    power_w: float
    clock_mhz: float  # median SM clock NVML reported
    excluded: str  # why the model is not held to it ("" = it is)
    requested_mhz: int | None = None  # a locked clock, if the run had one (None: default)
    throttle: float = 0.0  # share of samples with NVML's power-cap throttle reason set

    def label(self) -> str:
        if self.kind == "prefill":
            return f"prefill T={self.size}"
        return f"decode B={self.size} K={self.kv_tokens}"


def exclusion(kind: str, size: int, kv_tokens: int, graph: bool = True) -> str:
    """Why a measured point lies outside what the model describes ("" where it does not).

    - Eager prefill: launch-bound at small T; engines replay graphs or batch more.
    - Decode at a batch an engine would pad (129 -> 256): the probe ran it unpadded.
    - Decode of one sequence over >= 2048 KV tokens: PyTorch's attention kernel runs
      one block per (sequence, KV head), 8 blocks on 132 SMs, and read that KV at
      about 0.33 TB/s; serving engines split the KV length over blocks (FlashInfer,
      FA3 split-KV). From 16 sequences (128 blocks) on, the probe reads KV at the
      model's rate again.
    """
    if kind == "prefill" and not graph:
        return "eager prefill (launch-bound)"
    if kind == "decode" and decode_bucket(size) != size:
        return f"batch {size} unpadded (engine pads to {decode_bucket(size)})"
    if kind == "decode" and size == 1 and kv_tokens >= 2048:
        return "one sequence, long KV: probe attention not split over KV"
    return ""


def locked_clock_mhz(doc: dict[str, Any]) -> int | None:
    """The SM clock a run was locked to, from the P0 range NVML reported (None: default).

    NVML has no getter for locked clocks, but a lock narrows the P0 clock range:
    a P0 maximum under the board's maximum is the locked clock (as the telemetry
    source reports it).
    """
    nvml = doc.get("info", {}).get("nvml") or {}
    rng, top = nvml.get("pstate0_sm_clock_range_mhz"), nvml.get("max_sm_clock_mhz")
    if rng and top and 0 < int(rng[1]) < int(top):
        return int(rng[1])
    return None


def probe_points(doc: dict[str, Any], source: str) -> list[Point]:
    """Points of one ``llm_probe.py`` results file (errored points skipped)."""
    out = []
    lock = locked_clock_mhz(doc)
    for r in doc.get("prefill", []):
        if "error" in r:
            continue
        out.append(
            Point(
                source,
                "prefill",
                r["tokens"],
                0,
                r["time_s_median"],
                r["avg_power_w"],
                r["sm_clock_mhz_median"],
                exclusion("prefill", r["tokens"], 0, r["graph"]),
                lock,
                r["throttle_fraction"],
            )
        )
    for r in doc.get("decode", []):
        if "error" in r:
            continue
        b, k = r["batch"], r["kv_tokens"]
        out.append(
            Point(
                source,
                "decode",
                b,
                k,
                r["time_s_median"],
                r["avg_power_w"],
                r["sm_clock_mhz_median"],
                exclusion("decode", b, k),
                lock,
                r["throttle_fraction"],
            )
        )
    return out


def legacy_points(doc: dict[str, Any]) -> list[Point]:
    """Points of the earlier probe (bench/results/h100_llama8b_shape_probe.json), in its own format.

    Its single sequence at 2048 KV tokens read that KV at normal speed (7.23 ms against
    7.14 ms at 512), unlike the later runs', so only the batch-129 row is excluded.
    """
    out = []
    for r in doc["prefill"]:
        why = "eager prefill (launch-bound)" if r["tokens"] < 1024 else ""
        out.append(
            Point(
                "legacy",
                "prefill",
                r["tokens"],
                0,
                r["ms"] / 1e3,
                r["avg_power_w"],
                r["sm_mhz_med"],
                why,
            )
        )
    for r in doc["decode"]:
        b, k = r["batch"], r["context"]
        out.append(
            Point(
                "legacy",
                "decode",
                b,
                k,
                r["ms"] / 1e3,
                r["avg_power_w"],
                r["sm_mhz_med"],
                exclusion("decode", b, 0),
            )
        )
    return out


def model_cost(model: GpuModel, p: Point) -> IterCost:
    """The model for point ``p`` at its locked clock, else at default clocks (the maximum)."""
    f = p.requested_mhz or model.max_clock_mhz
    if p.kind == "prefill":
        return model.prefill(f, p.size)
    return model.decode(f, p.size, p.size * p.kv_tokens)


def compare(model: GpuModel, points: list[Point]) -> list[dict[str, Any]]:
    """Per point: measured and modelled time, power, energy, clock, and relative errors."""
    rows = []
    for p in points:
        c = model_cost(model, p)
        e_meas = p.power_w * p.time_s
        rows.append(
            {
                "source": p.source,
                "point": p.label(),
                "excluded": p.excluded,
                "time_ms": 1e3 * p.time_s,
                "model_time_ms": 1e3 * c.time_s,
                "time_err": c.time_s / p.time_s - 1.0,
                "power_w": p.power_w,
                "model_power_w": c.power_w,
                "power_err": c.power_w / p.power_w - 1.0,
                "energy_j": e_meas,
                "model_energy_j": c.energy_j,
                "energy_err": c.energy_j / e_meas - 1.0,
                "clock_mhz": p.clock_mhz,
                "model_clock_mhz": c.effective_clock_mhz,
                "clock_err": c.effective_clock_mhz / p.clock_mhz - 1.0,
            }
        )
    return rows
