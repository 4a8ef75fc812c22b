"""The GPU model's clock dependence against published clock sweeps and measured capped clocks.

No clock was ever locked on a lent GPU (their settings must not change), so how time
and power move with a locked SM clock rests on published data. This compares the
ground-truth model (``groundtruth.gpu_model``, Llama-3.1-8B, noise 0) per GPU with

- the published figures in ``bench/data/clock_sweeps.json`` (source, licence, what was
  taken and how, the band it allows), each compared as its source states it: relative
  to the top clock where the source's workload is not the model's;
- the measured points of the lent GPUs' probe runs (``bench/results/*_llm_probe*.json``)
  that the power cap throttled below the top clock: the model locked at the clock NVML
  reported there, against the time and power measured (a clock sweep the firmware did).

It prints one block per source with its error figures, writes the figures as JSON
(``--out``) and one PNG per GPU (``--plot-dir``): relative time, power and relative
energy per token against the locked clock, with the published bands and the measured
points drawn on the model's curves.

    .venv/bin/python bench/clock_sweeps.py                       # all GPUs, plots and JSON
    .venv/bin/python bench/clock_sweeps.py --gpu h200 --no-plots
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel, IterCost

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench/data/clock_sweeps.json"
PROBES = {
    "h100": ["h100_llm_probe.json", "h100_llm_probe_run2.json"],
    "h200": ["h200_llm_probe.json"],
    "a100": [],
}
CURVES = ["prefill:2048", "decode:1:1024", "decode:32:1024", "decode:128:1024"]
SLOWDOWNS = (0.02, 0.05, 0.10)


def load_compare_model() -> ModuleType:
    """bench/gpu/compare_model.py (the probe-file reader) as a module."""
    path = ROOT / "bench/gpu/compare_model.py"
    spec = importlib.util.spec_from_file_location("voltana_bench_compare_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_for(gpu: str) -> GpuModel:
    return GpuModel(GPUS[gpu], MODELS["llama-3.1-8b"], tp=1, noise=0.0, seed=None)


def cost(m: GpuModel, work: str, clock_mhz: float) -> IterCost:
    """``prefill:T`` (one sequence of T new tokens) or ``decode:B:K`` (B sequences at K tokens)."""
    kind, *args = work.split(":")
    if kind == "prefill":
        return m.prefill(clock_mhz, int(args[0]))
    b, k = int(args[0]), int(args[1])
    return m.decode(clock_mhz, b, b * k)


def tokens(work: str) -> int:
    """Tokens one iteration produces (prefill: its new tokens; decode: one per sequence)."""
    return int(work.split(":")[1])


def label(work: str) -> str:
    kind, *args = work.split(":")
    return f"prefill {args[0]}" if kind == "prefill" else f"decode B={args[0]} K={args[1]}"


def curve(m: GpuModel, work: str) -> list[dict[str, float]]:
    """Per supported clock (ascending): time and energy per token relative to the top clock, power."""
    top = cost(m, work, m.max_clock_mhz)
    out = []
    for f in sorted(m.supported_clocks_mhz):
        c = cost(m, work, f)
        out.append(
            {
                "clock_mhz": f,
                "time_rel": c.time_s / top.time_s,
                "power_w": c.power_w,
                "energy_rel": c.energy_j / top.energy_j,
                "j_per_token": c.energy_j / tokens(work),
            }
        )
    return out


def best_saving(m: GpuModel, work: str, max_slowdown: float) -> tuple[float, int]:
    """Largest energy saving of a locked clock whose time stays within ``max_slowdown``."""
    top = cost(m, work, m.max_clock_mhz)
    best, at = 0.0, m.max_clock_mhz
    for f in m.supported_clocks_mhz:
        c = cost(m, work, f)
        if c.time_s <= top.time_s * (1 + max_slowdown) and 1 - c.energy_j / top.energy_j > best:
            best, at = 1 - c.energy_j / top.energy_j, f
    return best, at


def _band(value: float, lo: float, hi: float) -> float:
    """How far ``value`` lies outside [lo, hi] (0 inside), in the value's unit."""
    return max(lo - value, 0.0, value - hi)


def evaluate(m: GpuModel, a: dict[str, Any]) -> dict[str, Any]:
    """The model's figure for one published anchor, and how far it lies from the band."""
    c, pub = a["compare"], a["published"]
    kind = c["kind"]
    out: dict[str, Any] = {"id": a["id"], "gpu": a["gpu"], "source": a["source"], "kind": kind}
    out["published"] = pub
    if kind == "max_decode_saving":
        works = [f"decode:{b}:{c['kv_tokens_per_seq']}" for b in c["batches"]]
        per = {
            f"{s:.2f}": {w: best_saving(m, w, s) for w in works}
            for s in (*SLOWDOWNS, c["max_slowdown"])
        }
        value = max(v[0] for v in per[f"{c['max_slowdown']:.2f}"].values())
        out["model"] = round(value, 4)
        out["model_by_slowdown"] = {
            s: {label(w): {"saving": round(v[0], 4), "clock_mhz": v[1]} for w, v in d.items()}
            for s, d in per.items()
        }
        out["error"] = round(value - pub["value"], 4)  # points of saving
        out["outside_band"] = round(_band(value, pub["lo"], pub["hi"]), 4)
    elif kind == "decode_power_range":
        works = [f"decode:{b}:{c['kv_tokens_per_seq']}" for b in c["batches"]]
        watts = [cost(m, w, m.max_clock_mhz).power_w for w in works]
        out["model"] = {label(w): round(p, 1) for w, p in zip(works, watts, strict=True)}
        out["error"] = round(min(watts) - pub["hi"], 1)  # W above the published top
        out["outside_band"] = round(max(_band(p, pub["lo"], pub["hi"]) for p in watts), 1)
    elif kind in ("time_ratio", "energy_ratio"):
        key = "time_s" if kind == "time_ratio" else "energy_j"
        ratios = {
            label(w): getattr(cost(m, w, c["to_mhz"]), key)
            / getattr(cost(m, w, c["from_mhz"]), key)
            for w in c["workloads"]
        }
        out["model"] = {k: round(v, 4) for k, v in ratios.items()}
        out["error"] = round(max(_band(v, pub["lo"], pub["hi"]) for v in ratios.values()), 4)
        out["outside_band"] = out["error"]
    elif kind == "energy_minimum_interior":
        mins = {}
        for w in c["workloads"]:
            pts = curve(m, w)
            mins[label(w)] = min(pts, key=lambda p: p["energy_rel"])["clock_mhz"]
        out["model"] = mins
        inside = [pub["lo"] < f < pub["hi"] for f in mins.values()]
        out["error"] = sum(not x for x in inside)  # workloads whose minimum is at an end
        out["outside_band"] = out["error"]
    else:
        raise ValueError(f"unknown comparison kind {kind!r} in {a['id']}")
    return out


def capped_points(gpu: str, m: GpuModel, cm: ModuleType) -> list[dict[str, Any]]:
    """Measured points the power cap throttled below the top clock; the model locked there."""
    rows = []
    for name in PROBES[gpu]:
        doc = json.loads((ROOT / "bench/results" / name).read_text())
        for p in cm.probe_points(doc, name):
            if p.excluded or p.throttle < 0.5 or p.clock_mhz >= m.max_clock_mhz:
                continue
            f = float(p.clock_mhz)
            c = (
                m.prefill(f, p.size)
                if p.kind == "prefill"
                else m.decode(f, p.size, p.size * p.kv_tokens)
            )
            rows.append(
                {
                    "source": name,
                    "point": p.label(),
                    "work": _work(p),
                    "clock_mhz": round(f),
                    "model_clock_mhz": c.effective_clock_mhz,
                    "time_ms": round(1e3 * p.time_s, 3),
                    "model_time_ms": round(1e3 * c.time_s, 3),
                    "time_err": round(c.time_s / p.time_s - 1, 4),
                    "power_w": round(p.power_w, 1),
                    "model_power_w": round(c.power_w, 1),
                    "power_err": round(c.power_w / p.power_w - 1, 4),
                }
            )
    return rows


def _work(p: Any) -> str:
    return f"prefill:{p.size}" if p.kind == "prefill" else f"decode:{p.size}:{p.kv_tokens}"


def _mape(rows: list[dict[str, Any]], key: str) -> float:
    return sum(abs(r[key]) for r in rows) / len(rows) if rows else float("nan")


def plot(
    gpu: str, m: GpuModel, result: dict[str, Any], anchors: list[dict[str, Any]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    for w in CURVES:
        pts = result["curves"][w]
        f = [p["clock_mhz"] for p in pts]
        axes[0].plot(f, [p["time_rel"] for p in pts], label=label(w))
        axes[1].plot(f, [p["power_w"] for p in pts], label=label(w))
        axes[2].plot(f, [p["energy_rel"] for p in pts], label=label(w))
    cap = result["capped_points"]
    if cap:
        f = [r["clock_mhz"] for r in cap]
        axes[1].scatter(
            f,
            [r["power_w"] for r in cap],
            marker="x",
            color="k",
            zorder=5,
            label="measured, power-capped",
        )
        axes[1].scatter(
            f,
            [r["model_power_w"] for r in cap],
            marker="o",
            facecolors="none",
            edgecolors="k",
            zorder=5,
            label="model locked at that clock",
        )
        axes[3].scatter(f, [100 * r["time_err"] for r in cap], marker="o", label="time")
        axes[3].scatter(f, [100 * r["power_err"] for r in cap], marker="^", label="power")
        axes[3].axhline(0, color="k", lw=0.8)
        axes[3].legend(fontsize=7)
    else:
        axes[3].text(
            0.5,
            0.5,
            "no measurement of this GPU",
            ha="center",
            va="center",
            transform=axes[3].transAxes,
        )
    axes[3].set_ylabel("model / measured - 1 (%), at the capped clock")
    axes[3].set_title("measured points the power cap throttled", fontsize=9)
    for a, ev in zip(anchors, result["anchors"], strict=True):
        c, pub = a["compare"], a["published"]
        tag = f"{a['source']}: {a['id']}"
        if c["kind"] == "max_decode_saving":
            axes[2].axhspan(1 - pub["hi"], 1 - pub["lo"], color="tab:red", alpha=0.15, label=tag)
            best = ev["model_by_slowdown"][f"{c['max_slowdown']:.2f}"]
            axes[2].scatter(
                [v["clock_mhz"] for v in best.values()],
                [1 - v["saving"] for v in best.values()],
                color="tab:red",
                zorder=5,
                label=f"model: least energy within {c['max_slowdown']:.0%} of top-clock time",
            )
        elif c["kind"] == "decode_power_range":
            axes[1].vlines(
                m.max_clock_mhz, pub["lo"], pub["hi"], color="tab:red", lw=6, alpha=0.4, label=tag
            )
        elif c["kind"] == "time_ratio":
            axes[0].vlines(
                c["to_mhz"], pub["lo"], pub["hi"], color="tab:red", lw=6, alpha=0.4, label=tag
            )
        elif c["kind"] == "energy_ratio":
            axes[2].vlines(
                c["to_mhz"], pub["lo"], pub["hi"], color="tab:purple", lw=6, alpha=0.3, label=tag
            )
    axes[0].set_ylabel("time / time at the top clock")
    axes[1].set_ylabel("power per GPU (W)")
    axes[2].set_ylabel("energy per token / at the top clock")
    axes[2].set_ylim(0.3, 1.3)
    axes[0].set_ylim(0.8, 3.0)
    for ax in axes:
        ax.set_xlabel("locked SM clock (MHz)")
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{GPUS[gpu].name}: the model (Llama-3.1-8B, noise 0) against published and measured figures"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(gpus: list[str], data: dict[str, Any]) -> dict[str, Any]:
    cm = load_compare_model()
    out: dict[str, Any] = {"data": str(DATA.relative_to(ROOT)), "gpus": {}}
    for gpu in gpus:
        m = model_for(gpu)
        anchors = [a for a in data["anchors"] if a["gpu"] == gpu]
        cap = capped_points(gpu, m, cm)
        out["gpus"][gpu] = {
            "curves": {w: curve(m, w) for w in CURVES},
            "anchors": [evaluate(m, a) for a in anchors],
            "capped_points": cap,
            "capped_summary": {
                "points": len(cap),
                "clock_range_mhz": [
                    min(r["clock_mhz"] for r in cap),
                    max(r["clock_mhz"] for r in cap),
                ]
                if cap
                else None,
                "time_mape": round(_mape(cap, "time_err"), 4),
                "power_mape": round(_mape(cap, "power_err"), 4),
            },
            "not_found": data["not_found"].get(gpu, ""),
        }
    return out


def report(result: dict[str, Any]) -> None:
    for gpu, r in result["gpus"].items():
        print(f"== {gpu}: {GPUS[gpu].name}")
        for a in r["anchors"]:
            print(f"  [{a['source']}] {a['id']}: published {a['published']}")
            print(f"      model {a['model']}")
            print(f"      error {a['error']}  outside the published band by {a['outside_band']}")
            if "model_by_slowdown" in a:
                for s, d in a["model_by_slowdown"].items():
                    best = max(d.values(), key=lambda v: v["saving"])
                    print(
                        f"      slowdown <= {float(s):.0%}: best {best['saving']:.1%} at {best['clock_mhz']} MHz"
                    )
        s = r["capped_summary"]
        if s["points"]:
            print(
                f"  [measured, power-capped] {s['points']} points at {s['clock_range_mhz'][0]}-"
                f"{s['clock_range_mhz'][1]} MHz: time MAPE {s['time_mape']:.1%}, power MAPE {s['power_mape']:.1%}"
            )
        else:
            print("  [measured, power-capped] none (no measurement of this GPU)")
        if r["not_found"]:
            print(f"  not found: {r['not_found']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--gpu", action="append", choices=sorted(GPUS), help="GPU (repeatable; default: all)"
    )
    ap.add_argument(
        "--data", type=Path, default=DATA, help="published figures (default: %(default)s)"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench/results/clock_sweeps.json", help="JSON to write"
    )
    ap.add_argument("--plot-dir", type=Path, default=ROOT / "bench/results", help="PNG folder")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = ap.parse_args(argv)
    try:
        data = json.loads(args.data.read_text())
    except (OSError, ValueError) as e:
        ap.error(f"cannot read {args.data}: {e}")
    gpus = args.gpu or sorted({a["gpu"] for a in data["anchors"]} | set(PROBES))
    result = run(gpus, data)
    report(result)
    if not args.no_plots:
        for gpu in gpus:
            anchors = [a for a in data["anchors"] if a["gpu"] == gpu]
            path = args.plot_dir / f"clock_sweep_{gpu}.png"
            plot(gpu, model_for(gpu), result["gpus"][gpu], anchors, path)
            print(f"wrote {path}")
    slim = {
        **result,
        "gpus": {
            g: {k: v for k, v in r.items() if k != "curves"} for g, r in result["gpus"].items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(slim, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
