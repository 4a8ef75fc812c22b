"""What ``voltana plan`` prints and writes: the ranked table, results.json, the frontier plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from voltana.sim.plan import PlanResult, PlanRow

__all__ = ["plan_table", "plot_frontier", "recommendation_lines", "write_plan"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def plan_table(res: PlanResult, title: str = "") -> Any:
    """A rich Table: one row per (configuration, policy), ranked (meets target, then energy)."""
    from rich.table import Table

    target = float(res.params["attainment_target"])
    t = Table(title=title or None)
    for head in ("#", "cluster", "policy", "clocks"):
        t.add_column(head, justify="right" if head == "#" else "left")
    for head in ("energy (kJ)", "J/out tok", "SLO att.", "TTFT p99 ms", "ITL p99 ms"):
        t.add_column(head, justify="right")
    rec = res.recommendation
    for i, r in enumerate(res.rows, 1):
        f = r.figures
        style = "bold green" if rec is not None and r is rec else None
        if r.attainment < target:
            style = "dim"
        t.add_row(
            str(i),
            r.cluster,
            r.policy,
            r.clocks,
            f"{r.energy_j / 1e3:.1f}",
            f"{f['energy_per_output_token_j']:.4f}",
            f"{r.attainment * 100:.2f}%",
            f"{f['ttft_p99_ms']:.0f}",
            f"{f['itl_p99_ms']:.1f}",
            style=style,
        )
    return t


def _name(r: PlanRow | None) -> str:
    return "none" if r is None else f"{r.cluster} {r.policy}"


def recommendation_lines(res: PlanResult) -> list[str]:
    """The recommendation and its savings, in words."""
    target = float(res.params["attainment_target"])
    rec = res.recommendation
    if rec is None:
        return [
            f"no configuration meets {target * 100:g}% SLO attainment at this load; "
            f"the closest is {_name(res.rows[0] if res.rows else None)}"
        ]
    colo, pd = res.reference_colocated, res.reference_pd
    return [
        f"recommended: {_name(rec)} ({rec.clocks} clocks): {rec.energy_j / 1e3:.1f} kJ, "
        f"{rec.attainment * 100:.2f}% SLO attainment",
        f"saving vs default clocks, best colocated ({_name(colo)}): "
        f"{_pct(res.saving_vs_default_colocated)}",
        f"saving vs default clocks, {res.params['even_split']} ({_name(pd)}): "
        f"{_pct(res.saving_vs_default_pd)}",
    ]


def write_plan(res: PlanResult, out_dir: Path) -> Path:
    """``results.json``: params, workload, ranked rows, the recommendation and its savings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = msgspec.to_builtins(res)
    data["definitions"] = {
        "rows": "ranked: meeting the attainment target first, then by energy",
        "recommendation": "the cheapest row whose slo_attainment meets the target",
        "reference_colocated": "default clocks (no lock), best row on the colocated "
        "configuration (cheapest meeting the target, else highest attainment)",
        "reference_pd": "default clocks, best row on the even PD split",
        "saving_vs_default_colocated": "1 - E(recommendation) / E(reference_colocated)",
        "saving_vs_default_pd": "1 - E(recommendation) / E(reference_pd)",
    }
    p = out_dir / "results.json"
    p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return p


def plot_frontier(res: PlanResult, out_dir: Path) -> Path:
    """Energy against SLO attainment, one point per row; the frontier (least energy for at
    least that attainment) drawn through them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    marks = {"default": "o", "controlled": "s"}
    for r in res.rows:
        colour = "tab:blue" if r.cluster.endswith("u") else "tab:orange"
        ax.scatter(r.attainment * 100, r.energy_j / 1e3, marker=marks[r.clocks], c=colour)
        ax.annotate(f"{r.cluster} {r.policy}", (r.attainment * 100, r.energy_j / 1e3), fontsize=7)
    pts = sorted(((r.attainment, r.energy_j) for r in res.rows), reverse=True)
    front: list[tuple[float, float]] = []
    for a, e in pts:  # from the highest attainment down: keep each new energy minimum
        if not front or e < front[-1][1]:
            front.append((a, e))
    if front:
        ax.step(
            [a * 100 for a, _ in front],
            [e / 1e3 for _, e in front],
            where="post",
            color="grey",
            linewidth=1,
        )
    ax.axvline(float(res.params["attainment_target"]) * 100, color="red", linewidth=0.8)
    ax.set_xlabel("SLO attainment (%)")
    ax.set_ylabel("energy (kJ), all GPUs")
    ax.set_title("energy vs attainment (o default clocks, s controlled; blue colocated, orange PD)")
    fig.tight_layout()
    p = out_dir / "frontier.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
