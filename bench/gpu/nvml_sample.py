"""Sample GPUs read-only through voltana's NVML source at N Hz for T seconds; write JSON.

Usage (on a GPU host; nothing here changes a GPU setting):

    python bench/gpu/nvml_sample.py --gpus 0 --hz 20 --seconds 30 --out nvml.json

Runs with only pynvml, msgspec, structlog and numpy installed; voltana does not
need to be pip-installed (the repository root is loaded as the ``voltana``
package when it is not importable). SIGINT/SIGTERM stop sampling early and
still write the file. The summary compares the energy counter with the
integral of the sampled power, and reports how well the sampler held its rate.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from voltana_path import ensure_voltana


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    t = np.array([r["mono_ns"] for r in rows], dtype=np.float64) / 1e9
    p = np.array([r["power_w"] for r in rows], dtype=np.float64)
    out: dict[str, Any] = {"n": len(rows)}
    if len(rows) < 2:
        return out
    dt = np.diff(t)
    out.update(
        span_s=float(t[-1] - t[0]),
        interval_mean_s=float(dt.mean()),
        interval_p99_s=float(np.quantile(dt, 0.99)),
        interval_max_s=float(dt.max()),
        power_mean_w=float(p.mean()),
        power_min_w=float(p.min()),
        power_max_w=float(p.max()),
        sm_clock_mhz_min=min(r["sm_clock_mhz"] for r in rows),
        sm_clock_mhz_max=max(r["sm_clock_mhz"] for r in rows),
        throttle_reasons_seen=sorted({r["throttle_reasons"] for r in rows}),
        energy_reads=sum(bool(r.get("energy_fresh", True)) for r in rows),
    )
    # the energy counter between its first and last read, against the power integral
    fresh = [r for r in rows if r.get("energy_fresh", True)]
    if len(fresh) >= 2:
        t0, t1 = fresh[0]["mono_ns"] / 1e9, fresh[-1]["mono_ns"] / 1e9
        inside = (t >= t0) & (t <= t1)
        e_counter = fresh[-1]["energy_j"] - fresh[0]["energy_j"]
        e_power = float(np.trapezoid(p[inside], t[inside]))
        out.update(
            energy_span_s=t1 - t0,
            energy_counter_j=e_counter,
            energy_from_power_j=e_power,
            counter_vs_power_rel=(e_power - e_counter) / e_counter if e_counter > 0 else None,
            avg_power_from_counter_w=e_counter / (t1 - t0) if t1 > t0 else None,
        )
        inst = [r.get("power_instant_w") for r in rows]
        if all(v is not None for v in inst):
            pi = np.array(inst, dtype=np.float64)
            out["energy_from_instant_power_j"] = float(np.trapezoid(pi[inside], t[inside]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="0", help="comma-separated NVML indices (default 0)")
    ap.add_argument("--hz", type=float, default=20.0, help="sampling rate (default 20)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration (default 10)")
    ap.add_argument("--out", default="-", help="output JSON path ('-' = stdout)")
    ap.add_argument("--label", default="", help="free text stored in the output (what ran)")
    ap.add_argument(
        "--energy-hz",
        type=float,
        default=2.0,
        help="energy-counter reads per second (default 2, as the service; 0 = every sample)",
    )
    args = ap.parse_args(argv)

    ensure_voltana()
    import msgspec
    from voltana.common.errors import GpuError
    from voltana.gpu.nvml import NvmlDevice

    indices = [int(x) for x in args.gpus.split(",") if x.strip()]
    try:
        period = 1.0 / args.energy_hz if args.energy_hz > 0 else 0.0
        source = NvmlDevice(indices, energy_period_s=period)
    except GpuError as exc:
        print(f"nvml_sample: error: {exc}", file=sys.stderr)
        return 1

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    period_s = 1.0 / args.hz
    rows: dict[int, list[dict[str, Any]]] = {i: [] for i in indices}
    call_s: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()
    next_t = t0
    wall_start = time.time()
    cpu_start = time.process_time()
    try:
        while not stop and time.monotonic() - t0 < args.seconds:
            c0 = time.perf_counter()
            try:
                samples = source.sample()
            except GpuError as exc:
                errors.append(str(exc))
                samples = []
            call_s.append(time.perf_counter() - c0)
            for s in samples:
                rows[s.index].append(msgspec.to_builtins(s))
            next_t += period_s
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()  # fell behind: do not burst to catch up
    finally:
        cpu_s = time.process_time() - cpu_start
        wall_s = time.monotonic() - t0
        source.close()

    import pynvml

    meta: dict[str, Any] = {
        "label": args.label,
        "gpus": indices,
        "hz": args.hz,
        "energy_hz": args.energy_hz,
        "seconds_requested": args.seconds,
        "wall_start_unix_s": wall_start,
        "pynvml_version": getattr(pynvml, "__version__", None),
        "sample_call_mean_ms": 1e3 * float(np.mean(call_s)) if call_s else None,
        "sample_call_median_ms": 1e3 * float(np.median(call_s)) if call_s else None,
        "sample_call_max_ms": 1e3 * float(np.max(call_s)) if call_s else None,
        "sampler_cpu_fraction_of_one_core": cpu_s / wall_s if wall_s > 0 else None,
        "errors": errors[:20],
        "n_errors": len(errors),
    }
    try:
        pynvml.nvmlInit()
        meta["driver_version"] = pynvml.nvmlSystemGetDriverVersion()
        meta["nvml_version"] = pynvml.nvmlSystemGetNVMLVersion()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass
    doc = {
        "meta": meta,
        "summary": {str(i): _summary(r) for i, r in rows.items()},
        "samples": {str(i): r for i, r in rows.items()},
    }
    text = json.dumps(doc, indent=1, default=str)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(json.dumps({"out": args.out, "meta": meta, "summary": doc["summary"]}, indent=1))
    return 0 if not errors else 2


if __name__ == "__main__":
    sys.exit(main())
