"""PNG plots of simulation runs (matplotlib, Agg backend): time series and latency CDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from voltana.sim.metrics import RunMetrics

__all__ = ["plot_runs"]


def _agg() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin_series(t: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of the step function (y[i] held from t[i] to t[i+1]) over each bin."""
    y = y.astype(float)
    seg = np.diff(np.append(t, max(edges[-1], t[-1])))
    cum = np.concatenate([[0.0], np.cumsum(y * seg)])

    def integral(x: np.ndarray) -> np.ndarray:
        k = np.clip(np.searchsorted(t, x, side="right") - 1, 0, len(t) - 1)
        before = x < t[0]
        val = cum[k] + y[k] * (x - t[k])
        return np.where(before, y[0] * (x - t[0]), val)

    f = integral(edges)
    return np.diff(f) / np.diff(edges)


def plot_runs(runs: list[RunMetrics], out_dir: Path, *, bins: int = 300) -> list[Path]:
    """Write one time-series figure per policy and one latency-CDF figure; returns the paths."""
    plt = _agg()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for run in runs:
        fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)  # type: ignore[attr-defined]
        horizon = max(run.window_s, 1e-6)
        edges = np.linspace(0.0, horizon, bins + 1)
        for name, s in sorted(run.series.items()):
            if not s.t_s:
                continue
            t = np.asarray(s.t_s)
            mids = 0.5 * (edges[:-1] + edges[1:])
            for ax, vals in ((axes[0], s.clock_mhz), (axes[1], s.power_w), (axes[2], s.batch)):
                ax.plot(mids, _bin_series(t, np.asarray(vals, float), edges), label=name, lw=0.8)
        done = [r for r in run.requests if r.first_token_s is not None]
        if done:
            ta = np.array([r.arrival_s for r in done])
            tt = np.array([r.ttft_s for r in done], dtype=float) * 1e3
            axes[3].scatter(ta, tt, s=1, alpha=0.4, label="TTFT (ms)")
            ti = np.array([r.mean_itl_s if r.mean_itl_s is not None else np.nan for r in done])
            axes[3].scatter(ta, ti * 1e3, s=1, alpha=0.4, label="mean ITL (ms)")
            axes[3].axhline(run.slo_ttft_s * 1e3, color="C0", ls="--", lw=0.8)
            axes[3].axhline(run.slo_itl_s * 1e3, color="C1", ls="--", lw=0.8)
            axes[3].set_yscale("log")
        axes[0].set_ylabel("SM clock (MHz)")
        axes[1].set_ylabel("power / instance (W)")
        axes[2].set_ylabel("running batch")
        axes[3].set_ylabel("latency (ms)")
        axes[3].set_xlabel("simulated time (s); time-weighted means per bin")
        axes[0].legend(fontsize=7, ncol=4, loc="upper right")
        axes[3].legend(fontsize=7, loc="upper right", markerscale=6)
        fig.suptitle(f"{run.policy}: clocks, power, batch, latency over time")
        fig.tight_layout()
        p = out_dir / f"timeseries_{run.policy}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)  # type: ignore[attr-defined]
        written.append(p)

    fig, (ax_t, ax_i) = plt.subplots(1, 2, figsize=(12, 4.5))  # type: ignore[attr-defined]
    for run in runs:
        tt = np.sort([r.ttft_s for r in run.requests if r.ttft_s is not None])
        if tt.size:
            ax_t.plot(tt * 1e3, np.arange(1, tt.size + 1) / tt.size, label=run.policy)
        gaps, counts = run.itl.arrays()
        if gaps.size:
            order = np.argsort(gaps)
            cw = np.cumsum(counts[order])
            ax_i.plot(gaps[order] * 1e3, cw / cw[-1], label=run.policy)
    if runs:
        ax_t.axvline(runs[0].slo_ttft_s * 1e3, color="k", ls="--", lw=0.8)
        ax_i.axvline(runs[0].slo_itl_s * 1e3, color="k", ls="--", lw=0.8)
    ax_t.set_xscale("log")
    ax_i.set_xscale("log")
    ax_t.set_xlabel("TTFT (ms)")
    ax_i.set_xlabel("inter-token gap (ms)")
    ax_t.set_ylabel("CDF (requests)")
    ax_i.set_ylabel("CDF (tokens)")
    ax_t.legend(fontsize=8)
    ax_i.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)  # type: ignore[attr-defined]
    written.append(p)
    return written
