"""What a simulation run measured, and the summary the reports are built from.

Definitions used everywhere in the project:

- **SLO attainment (per request)**: the request's TTFT is within the TTFT SLO
  *and* its mean ITL (time from first to last token over the number of gaps)
  is within the ITL SLO. Requests with one output token have no ITL and count
  on TTFT alone.
- **TTFT attainment / ITL attainment**: the two halves of that, separately.
- **Per-token ITL attainment**: the fraction of all inter-token gaps of all
  requests that are within the ITL SLO.
- **Energy**: every GPU of the cluster (prefill and decode, times TP), integrated
  over the whole window from the first arrival to the last token, idle included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from voltana.services.router.attribution import EnergyBook
from voltana.services.router.energy_classes import EnergyItem, class_summary

__all__ = ["ItlRecorder", "RequestOutcome", "RunMetrics", "TimeSeries", "weighted_quantile"]


@dataclass(slots=True)
class RequestOutcome:
    """Timing of one request through the cluster (seconds, simulation time)."""

    request_id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefill: str = ""
    decode: str = ""
    prefill_done_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def mean_itl_s(self) -> float | None:
        if self.finish_s is None or self.first_token_s is None or self.output_tokens <= 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


class ItlRecorder:
    """Inter-token gaps as (gap, count) pairs: one pair per decode iteration for
    the requests that continued from the previous one, one per newly joined
    request. Exact percentiles without storing every token."""

    __slots__ = ("_counts", "_gaps")

    def __init__(self) -> None:
        self._gaps: list[float] = []
        self._counts: list[int] = []

    def add(self, gap_s: float, count: int) -> None:
        if count > 0:
            self._gaps.append(gap_s)
            self._counts.append(count)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self._gaps, dtype=float), np.asarray(self._counts, dtype=float)

    def total(self) -> int:
        return int(sum(self._counts))


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    """The q-quantile (0..1) of values with integer-like weights (lower interpolation)."""
    if values.size == 0 or weights.sum() <= 0:
        return None
    order = np.argsort(values, kind="stable")
    v = values[order]
    cw = np.cumsum(weights[order])
    idx = int(np.searchsorted(cw, q * cw[-1], side="left"))
    return float(v[min(idx, v.size - 1)])


@dataclass(slots=True)
class TimeSeries:
    """Per-instance samples over time for the plots (bounded by decimation)."""

    t_s: list[float] = field(default_factory=list)
    clock_mhz: list[int] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)

    def add(self, t_s: float, clock_mhz: int, power_w: float, batch: int) -> None:
        self.t_s.append(t_s)
        self.clock_mhz.append(clock_mhz)
        self.power_w.append(power_w)
        self.batch.append(batch)


@dataclass(slots=True)
class RunMetrics:
    """Everything one policy's run produced; :meth:`summary` makes the report row."""

    policy: str
    slo_ttft_s: float
    slo_itl_s: float
    requests: list[RequestOutcome]
    energy_j_by_instance: dict[str, float]
    busy_s_by_instance: dict[str, float]
    clock_switches_by_instance: dict[str, int]
    window_s: float
    itl: ItlRecorder
    series: dict[str, TimeSeries]
    iterations: int = 0
    wall_s: float = 0.0
    unfinished: int = 0
    energy_book: EnergyBook | None = None
    # prefill instance -> (prompt tokens served from the prefix cache, prompt tokens);
    # empty when the workload carries no prefix identity
    prefix_by_instance: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def energy_j(self) -> float:
        return float(sum(self.energy_j_by_instance.values()))

    def summary(self) -> dict[str, Any]:
        """The report row; latencies in ms, attainments as fractions 0..1."""
        done = [r for r in self.requests if r.finish_s is not None]
        n = len(self.requests)
        out_tokens = sum(r.output_tokens for r in done)
        ttft = np.array([r.ttft_s for r in done if r.ttft_s is not None], dtype=float)
        itl_mean = [r.mean_itl_s for r in done]
        ttft_ok = [r.ttft_s is not None and r.ttft_s <= self.slo_ttft_s for r in done]
        itl_ok = [m is None or m <= self.slo_itl_s for m in itl_mean]
        both = [a and b for a, b in zip(ttft_ok, itl_ok, strict=True)]
        # unfinished requests count as misses: the denominator is every request.
        gaps, counts = self.itl.arrays()
        tok_ok = float(counts[gaps <= self.slo_itl_s].sum() / counts.sum()) if counts.size else 1.0
        e = self.energy_j

        def pct(a: np.ndarray, q: float) -> float | None:
            return None if a.size == 0 else round(float(np.quantile(a, q)) * 1e3, 3)

        def wpct(q: float) -> float | None:
            v = weighted_quantile(gaps, counts, q)
            return None if v is None else round(v * 1e3, 3)

        row: dict[str, Any] = {
            "policy": self.policy,
            "requests": n,
            "finished": len(done),
            "output_tokens": out_tokens,
            "window_s": round(self.window_s, 3),
            "energy_j": round(e, 3),
            "energy_per_output_token_j": round(e / out_tokens, 6) if out_tokens else None,
            "avg_power_w": round(e / self.window_s, 2) if self.window_s > 0 else None,
            "slo_attainment": round(sum(both) / n, 6) if n else None,
            "ttft_attainment": round(sum(ttft_ok) / n, 6) if n else None,
            "itl_attainment": round(sum(itl_ok) / n, 6) if n else None,
            "itl_token_attainment": round(tok_ok, 6),
            "ttft_p50_ms": pct(ttft, 0.5),
            "ttft_p90_ms": pct(ttft, 0.9),
            "ttft_p99_ms": pct(ttft, 0.99),
            "itl_p50_ms": wpct(0.5),
            "itl_p90_ms": wpct(0.9),
            "itl_p99_ms": wpct(0.99),
            "clock_switches": int(sum(self.clock_switches_by_instance.values())),
            "iterations": self.iterations,
            "wall_s": round(self.wall_s, 3),
            **self.energy_summary(),
        }
        if self.prefix_by_instance:
            hit = sum(h for h, _ in self.prefix_by_instance.values())
            total = sum(q for _, q in self.prefix_by_instance.values())
            row["prefix_hit_rate"] = round(hit / total, 6) if total else None
        return row

    def energy_summary(self) -> dict[str, Any]:
        """Attributed and unattributed energy, and energy per request class (docs/energy.md)."""
        b = self.energy_book
        if b is None:
            return {}
        items = []
        for r in self.requests:
            e = b.requests.get(r.request_id)
            if e is not None and r.finish_s is not None:
                items.append(
                    EnergyItem(r.input_tokens, r.output_tokens, e.prefill_j, e.decode_j, e.idle_j)
                )
        return {
            "attributed_energy_j": round(b.attributed_j, 3),
            "unattributed_energy_j": round(b.unattributed_j, 3),
            "energy_by_class": class_summary(items),
        }

    def prefix_hit_rate_by_instance(self) -> dict[str, float | None]:
        """Tokens served from the cache over prompt tokens, per prefill instance."""
        return {
            n: (round(h / q, 6) if q else None) for n, (h, q) in self.prefix_by_instance.items()
        }
