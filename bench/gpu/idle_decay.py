"""What the driver does to the SM clock and power when a GPU stops working, read-only.

Usage (on a GPU host; nothing here changes a GPU setting, NVML is only read):

    python bench/gpu/idle_decay.py --out bench/results/h200_idle_decay.json

A thread samples the SM clock, NVML's instantaneous and averaged power, the energy
counter and the clock-event reasons every few milliseconds while the main thread:

1. idles with a CUDA context (baseline);
2. runs bf16 matrix products back to back for ``--work-s``, then stops and idles for
   ``--decay-s``: how long the clock and power stay up (hold time), at what level,
   and where they fall to (the floor);
3. runs short work steps (``--step-ms`` of matrix products each) separated by host
   gaps of a few milliseconds, as an engine's iterations are: does the clock stay up
   through the gaps, and what does a gap cost in power.

The figures (held clock, held power, hold time, decay to the floor, gap table) are
computed by ``analyse()`` and printed; the raw samples are in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_info import nvml_info, torch_info

COLUMNS = ["t_s", "sm_mhz", "power_instant_w", "power_avg_w", "energy_j", "reasons"]
GAPS_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
SETTLE_S = 0.02
"""After the work stops, samples this young still show the work's clock."""


class NvmlReader:
    """The few NVML getters this needs, for one GPU (read-only)."""

    def __init__(self, index: int) -> None:
        import pynvml as nv

        self.nv = nv
        nv.nvmlInit()
        self.h = nv.nvmlDeviceGetHandleByIndex(index)
        self.fields = [
            getattr(nv, "NVML_FI_DEV_POWER_INSTANT", 186),
            getattr(nv, "NVML_FI_DEV_POWER_AVERAGE", 185),
        ]

    def read(self) -> tuple[float, ...]:
        nv, h = self.nv, self.h
        t = time.monotonic()
        clk = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
        inst = avg = float("nan")
        try:
            vals = nv.nvmlDeviceGetFieldValues(h, self.fields)
            got = [v.value.uiVal / 1e3 if v.nvmlReturn == 0 else float("nan") for v in vals]
            inst, avg = got[0], got[1]
        except nv.NVMLError:
            pass
        if avg != avg:  # no field values: the plain getter (averaged on recent GPUs)
            avg = nv.nvmlDeviceGetPowerUsage(h) / 1e3
        energy = nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
        try:
            reasons = float(nv.nvmlDeviceGetCurrentClocksEventReasons(h))
        except (nv.NVMLError, AttributeError):
            reasons = float("nan")
        return (t, float(clk), inst, avg, energy, reasons)


class Sampler(threading.Thread):
    """Reads as fast as ``period_s`` allows into a list of rows."""

    def __init__(self, reader: NvmlReader, period_s: float) -> None:
        super().__init__(daemon=True)
        self.reader, self.period_s = reader, period_s
        self.rows: list[tuple[float, ...]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop_event.is_set():
            self.rows.append(self.reader.read())
            nxt += self.period_s
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()


def _med(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else None


def analyse(rows: np.ndarray, marks: dict[str, Any], step_mhz: float = 15.0) -> dict[str, Any]:
    """Held clock and power after the work stopped, hold time, floor, decay, gap table.

    ``rows``: samples (``COLUMNS``); ``marks``: monotonic times of the phases.
    Hold time: from the stop to the first sample whose SM clock is more than two clock
    steps under the held clock. Floor: the median of the decay's last quarter; decay
    time: from the stop to the first sample within two steps of the floor's clock.
    """
    t, clk, inst, avg = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    out: dict[str, Any] = {}
    b0, b1 = marks["baseline"]
    sel = (t >= b0) & (t < b1)
    out["baseline"] = {
        "sm_mhz_median": _med(clk[sel]),
        "power_instant_w_median": _med(inst[sel]),
        "power_avg_w_median": _med(avg[sel]),
    }
    w0, stop = marks["work"]
    sel = (t >= w0 + 0.5 * (stop - w0)) & (t < stop)
    out["work"] = {
        "sm_mhz_median": _med(clk[sel]),
        "power_instant_w_median": _med(inst[sel]),
        "power_avg_w_median": _med(avg[sel]),
    }
    end = marks["decay_end"]
    after = (t >= stop) & (t <= end)
    ta, ca, ia, aa = t[after] - stop, clk[after], inst[after], avg[after]
    decay: dict[str, Any] = {"samples": int(after.sum())}
    if ta.size >= 4:
        # The first 20 ms still see the work's (possibly power-capped) clock.
        settled = ta >= min(SETTLE_S, ta[-1] / 4)
        held = float(np.median(ca[settled & (ta < 1.0)]))
        # A capped clock first rises to the held one: count the hold from when it got there.
        reached = np.nonzero(settled & (ca >= held - 2 * step_mhz))[0]
        t_reached = float(ta[reached[0]]) if reached.size else 0.0
        below = np.nonzero((ta > t_reached) & (ca < held - 2 * step_mhz))[0]
        hold_s = float(ta[below[0]]) if below.size else None
        q = ta >= 0.75 * ta[-1]
        floor = float(np.median(ca[q]))
        near = np.nonzero(np.abs(ca - floor) <= 2 * step_mhz)[0]
        held_sel = (ta >= t_reached) & (ta < (hold_s if hold_s is not None else ta[-1]))
        decay.update(
            held_sm_mhz=held,
            held_from_s=t_reached,
            hold_s=hold_s,
            held_longer_than_observed=hold_s is None,
            held_power_instant_w=_med(ia[held_sel]),
            held_power_avg_w=_med(aa[held_sel & (ta > 1.0)]) if hold_s and hold_s > 1.0 else None,
            floor_sm_mhz=floor,
            floor_power_instant_w=_med(ia[q]),
            floor_power_avg_w=_med(aa[q]),
            decay_to_floor_s=float(ta[near[0]]) if near.size else None,
            observed_s=float(ta[-1]),
        )
        # The clock's path: first time at or under each level on the way down.
        levels = sorted({int(x) for x in ca}, reverse=True)
        decay["clock_steps"] = [
            {"sm_mhz": lv, "first_at_s": float(ta[np.nonzero(ca <= lv + 0.5)[0][0]])}
            for lv in levels
        ]
    out["decay"] = decay
    gaps = []
    for g in marks.get("gaps", []):
        sel = (t >= g["t0"] + 0.3) & (t < g["t1"])
        gaps.append(
            {
                "gap_ms": g["gap_ms"],
                "step_ms": g["step_ms_median"],
                "busy_fraction": g["busy_fraction"],
                "sm_mhz_median": _med(clk[sel]),
                "sm_mhz_min": float(np.nanmin(clk[sel])) if sel.any() else None,
                "power_instant_w_median": _med(inst[sel]),
                "power_avg_w_median": _med(avg[sel]),
                "energy_w": _energy_rate(rows[sel]),
            }
        )
    out["gaps"] = gaps
    return out


def _energy_rate(rows: np.ndarray) -> float | None:
    """Mean power over a window from the energy counter (W)."""
    if rows.shape[0] < 2 or rows[-1, 0] <= rows[0, 0]:
        return None
    return float((rows[-1, 4] - rows[0, 4]) / (rows[-1, 0] - rows[0, 0]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev = torch.device(args.device)
    reader = NvmlReader(args.gpu)
    sampler = Sampler(reader, args.period_s)
    n = args.matmul_n
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    # One product's time, to size the gap steps.
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    c0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    one_s = (time.perf_counter() - c0) / 10
    marks: dict[str, Any] = {"matmul_s": one_s}
    time.sleep(args.settle_s)  # let the warm-up's clock fall before the baseline
    sampler.start()
    t0 = time.monotonic()
    time.sleep(args.baseline_s)
    marks["baseline"] = (t0, time.monotonic())
    w0 = time.monotonic()
    while time.monotonic() - w0 < args.work_s:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
    stop = time.monotonic()
    marks["work"] = (w0, stop)
    time.sleep(args.decay_s)
    marks["decay_end"] = time.monotonic()
    reps = max(1, round(args.step_ms / 1e3 / one_s))
    marks["gaps"] = []
    for gap_ms in args.gaps_ms:
        g0, busy, steps = time.monotonic(), 0.0, []
        while time.monotonic() - g0 < args.gap_phase_s:
            s0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            torch.cuda.synchronize()
            dt_s = time.perf_counter() - s0
            steps.append(dt_s)
            busy += dt_s
            time.sleep(gap_ms / 1e3)
        g1 = time.monotonic()
        marks["gaps"].append(
            {
                "gap_ms": gap_ms,
                "t0": g0,
                "t1": g1,
                "steps": len(steps),
                "step_ms_median": 1e3 * float(np.median(steps)),
                "busy_fraction": busy / (g1 - g0),
            }
        )
    time.sleep(args.tail_s)
    marks["end"] = time.monotonic()
    sampler.stop_event.set()
    sampler.join()
    rows = np.array(sampler.rows, dtype=float)
    result = analyse(rows, marks)
    period = np.diff(rows[:, 0])
    return {
        "sample_period_s_median": float(np.median(period)) if period.size else None,
        "marks": {k: v for k, v in marks.items()},
        "analysis": result,
        "columns": COLUMNS,
        "t_origin": float(rows[0, 0]) if rows.size else None,
        "samples": [[round(x - rows[0, 0], 5), *r] for x, *r in rows.tolist()],
    }


def reanalyse(path: Path) -> dict[str, Any]:
    """``analyse()`` again over a results file's stored samples (after a change to it)."""
    doc = json.loads(path.read_text())
    rows = np.array(doc["samples"], dtype=float)
    rows[:, 0] += doc["t_origin"]
    doc["analysis"] = analyse(rows, doc["marks"])
    path.write_text(json.dumps(doc))
    return doc


def sample_only(args: argparse.Namespace) -> dict[str, Any]:
    """Only sample (no torch, no work): e.g. after the last GPU process has exited."""
    sampler = Sampler(NvmlReader(args.gpu), args.period_s)
    sampler.start()
    time.sleep(args.sample_only)
    sampler.stop_event.set()
    sampler.join()
    rows = np.array(sampler.rows, dtype=float)
    clk, t = rows[:, 1], rows[:, 0] - rows[0, 0]
    levels = sorted({int(x) for x in clk}, reverse=True)
    return {
        "analysis": {
            "sm_mhz_first": float(clk[0]),
            "sm_mhz_last": float(clk[-1]),
            "power_instant_w_first_s": _med(rows[t < 1.0, 2]),
            "power_instant_w_last_s": _med(rows[t > t[-1] - 1.0, 2]),
            "clock_steps": [
                {"sm_mhz": lv, "first_at_s": float(t[np.nonzero(clk <= lv)[0][0]])} for lv in levels
            ],
        },
        "columns": COLUMNS,
        "t_origin": float(rows[0, 0]),
        "samples": [[round(x - rows[0, 0], 5), *r] for x, *r in rows.tolist()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0, help="NVML index (default: %(default)s)")
    ap.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    ap.add_argument("--period-s", type=float, default=0.004, help="sampling period")
    ap.add_argument("--matmul-n", type=int, default=8192, help="work: n^3 bf16 products")
    ap.add_argument("--settle-s", type=float, default=5.0, help="wait before the baseline")
    ap.add_argument("--baseline-s", type=float, default=3.0)
    ap.add_argument("--work-s", type=float, default=6.0)
    ap.add_argument("--decay-s", type=float, default=40.0, help="idle after the work")
    ap.add_argument("--step-ms", type=float, default=10.0, help="work per step in gap phases")
    ap.add_argument("--gaps-ms", type=lambda s: [float(x) for x in s.split(",")], default=GAPS_MS)
    ap.add_argument("--gap-phase-s", type=float, default=3.0, help="span of each gap phase")
    ap.add_argument("--tail-s", type=float, default=5.0, help="idle at the end")
    ap.add_argument(
        "--sample-only", type=float, default=None, help="only sample this many seconds (no work)"
    )
    ap.add_argument("--analyse", action="store_true", help="recompute --out's analysis only")
    ap.add_argument("--out", required=True, type=Path, help="results JSON")
    args = ap.parse_args(argv)
    if args.analyse:
        print(json.dumps(reanalyse(args.out)["analysis"], indent=1)[:6000])
        return 0
    doc: dict[str, Any] = {
        "schema": "voltana.idle_decay/1",
        "started_utc": dt.datetime.now(dt.UTC).isoformat(),
        "settings_changed": False,
        "clocks": "default (as found: no lock, no power-limit change)",
        "info": {
            "torch": torch_info() if args.sample_only is None else None,
            "nvml": nvml_info(args.gpu),
        },
    }
    doc["device"] = doc["info"]["nvml"].get("name")
    doc["driver"] = doc["info"]["nvml"].get("driver")
    doc.update(run(args) if args.sample_only is None else sample_only(args))
    args.out.write_text(json.dumps(doc))
    an = doc["analysis"]
    print(json.dumps({k: v for k, v in an.items()}, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
