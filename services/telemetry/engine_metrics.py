"""Parse SGLang's ``/metrics`` text and load endpoints into one engine snapshot.

Pure functions over text/JSON. Both SGLang lines are accepted:

- 0.4.7: labels ``model_name`` (and ``engine_type="unified"`` where present);
  ITL may be exported as ``time_per_output_token_seconds``; ``GET /get_load``.
- 0.5.23: labels ``engine_type``, ``tp_rank``, ``pp_rank``, ... (one series
  per rank, summed here); ``inter_token_latency_seconds``; PD queue gauges;
  ``GET /v1/loads``.

Parsing uses ``prometheus_client.parser.text_string_to_metric_families`` (it
strips ``_total`` from counter family names).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from voltana.services.telemetry.latency import HistogramSnapshot

PREFIX = "sglang:"
TTFT = "time_to_first_token_seconds"
ITL_NAMES = ("inter_token_latency_seconds", "time_per_output_token_seconds")
"""ITL histogram names, preferred first (the second is the older spelling)."""


@dataclass(slots=True)
class MetricsSnapshot:
    """What one ``/metrics`` scrape says, summed over every rank's series."""

    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, HistogramSnapshot] = field(default_factory=dict)
    engine_types: set[str] = field(default_factory=set)
    label_names: set[str] = field(default_factory=set)

    def gauge(self, *names: str, default: float = 0.0) -> float:
        """The first of ``names`` present (without prefix)."""
        for name in names:
            if name in self.gauges:
                return self.gauges[name]
        return default

    def itl(self) -> HistogramSnapshot | None:
        for name in ITL_NAMES:
            if name in self.histograms:
                return self.histograms[name]
        return None

    @property
    def looks_like(self) -> str:
        """``0.5.23`` when per-rank labels or a PD engine type show up, else ``0.4.7``."""
        if self.engine_types - {"unified"} or {"tp_rank", "pp_rank"} & self.label_names:
            return "0.5.23"
        return "0.4.7"


_MAX_GAUGES = {"token_usage", "cache_hit_rate", "utilization"}
"""Ratios: the busiest rank is reported, not a sum."""


def parse_metrics(text: str) -> MetricsSnapshot:
    """Parse Prometheus text exposition from an SGLang server.

    Raises:
        ValueError: the text is not valid Prometheus exposition.
    """
    snap = MetricsSnapshot()
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(PREFIX):
            continue
        name = fam.name[len(PREFIX) :]
        for s in fam.samples:
            snap.label_names.update(s.labels)
            if "engine_type" in s.labels:
                snap.engine_types.add(s.labels["engine_type"])
            value = float(s.value)
            if math.isnan(value):
                continue
            if fam.type == "histogram":
                if s.name.endswith("_bucket"):
                    le = s.labels.get("le")
                    if le is None:
                        raise ValueError(f"{s.name}: a histogram bucket without its 'le' label")
                    buckets[name][float(le)] += value
                elif s.name.endswith("_sum"):
                    sums[name] += value
                elif s.name.endswith("_count"):
                    counts[name] += value
            elif fam.type == "counter":
                if s.name.endswith("_total"):
                    snap.counters[name] = snap.counters.get(name, 0.0) + value
            elif fam.type in ("gauge", "untyped", "unknown"):
                if name in _MAX_GAUGES:
                    snap.gauges[name] = max(snap.gauges.get(name, value), value)
                else:
                    snap.gauges[name] = snap.gauges.get(name, 0.0) + value
    for name, per_le in buckets.items():
        bounds = tuple(sorted(per_le))
        snap.histograms[name] = HistogramSnapshot(
            bounds=bounds,
            cumulative=tuple(per_le[b] for b in bounds),
            sum=sums.get(name, 0.0),
            count=counts.get(name, per_le.get(math.inf, 0.0)),
        )
    return snap


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """What a load endpoint says, summed over DP ranks. None where not reported."""

    endpoint: str
    running_reqs: int | None = None
    waiting_reqs: int | None = None
    used_tokens: int | None = None
    capacity_tokens: int | None = None
    token_usage: float | None = None
    gen_throughput_tps: float | None = None
    load: float | None = None
    bootstrap_queue_reqs: int | None = None
    prealloc_queue_reqs: int | None = None
    transfer_queue_reqs: int | None = None
    inflight_queue_reqs: int | None = None
    mode: str | None = None


def _number(value: Any) -> float | None:
    """A finite, non-negative number a server reported, else None (bools, text, inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _sum_int(rows: list[dict[str, Any]], *keys: str) -> int | None:
    values = [v for row in rows for k in keys if (v := _number(row.get(k))) is not None]
    if not values:
        return None
    total = sum(values)
    return int(total) if math.isfinite(total) else None


def parse_v1_loads(doc: Any) -> LoadSnapshot:
    """Parse ``GET /v1/loads`` (SGLang 0.5.23).

    Raises:
        ValueError: the document does not have a ``loads`` list.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("loads"), list):
        raise ValueError("/v1/loads answer has no 'loads' list")
    rows = [r for r in doc["loads"] if isinstance(r, dict)]
    dis = [r["disaggregation"] for r in rows if isinstance(r.get("disaggregation"), dict)]
    usages = [u for r in rows if (u := _number(r.get("token_usage"))) is not None]
    tputs = [t for r in rows if (t := _number(r.get("gen_throughput"))) is not None]
    modes = {str(d.get("mode")) for d in dis if d.get("mode")}
    return LoadSnapshot(
        endpoint="/v1/loads",
        running_reqs=_sum_int(rows, "num_running_reqs"),
        waiting_reqs=_sum_int(rows, "num_waiting_reqs"),
        used_tokens=_sum_int(rows, "num_used_tokens"),
        capacity_tokens=_sum_int(rows, "max_total_num_tokens"),
        token_usage=max(usages) if usages else None,
        gen_throughput_tps=sum(tputs) if tputs else None,
        bootstrap_queue_reqs=_sum_int(dis, "prefill_bootstrap_queue_reqs"),
        prealloc_queue_reqs=_sum_int(
            dis, "decode_prealloc_queue_reqs", "prefill_prealloc_queue_reqs"
        ),
        transfer_queue_reqs=_sum_int(dis, "decode_transfer_queue_reqs"),
        inflight_queue_reqs=_sum_int(dis, "prefill_inflight_queue_reqs"),
        mode=modes.pop() if len(modes) == 1 else None,
    )


def parse_get_load(doc: Any) -> LoadSnapshot:
    """Parse ``GET /get_load`` (SGLang 0.4.7): ``{"load": n}`` or one such dict per DP rank.

    Raises:
        ValueError: no ``load`` value in the answer.
    """
    rows = doc if isinstance(doc, list) else [doc]
    loads = [v for r in rows if isinstance(r, dict) and (v := _number(r.get("load"))) is not None]
    if not loads or not math.isfinite(sum(loads)):
        raise ValueError("/get_load answer has no 'load' value")
    return LoadSnapshot(endpoint="/get_load", load=sum(loads))
