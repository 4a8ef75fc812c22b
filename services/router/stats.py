"""Per-request statistics: TTFT, ITL and SLO attainment as the client saw them (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from voltana.schemas.config import SloConfig
from voltana.schemas.router import RequestRecord, RequestStatus
from voltana.services.router import protocol as proto
from voltana.services.router.policies import RouteRequest


@dataclass(slots=True)
class Outcome:
    """What happened to one request, filled in by dispatch, for its record and metrics."""

    status: str = "ok"
    http_status: int = 200
    prefill: str = ""
    decode: str = ""
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    bytes_sent: bool = False
    model: str | None = None
    tenant: str | None = None


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def request_record(
    rreq: RouteRequest,
    info: proto.RequestInfo,
    out: Outcome,
    e2e_s: float,
    arrival_ns: int,
    slo: SloConfig,
    t_ns: int,
) -> RequestRecord:
    """The bus record of one finished request.

    TTFT and ITL are measured only for streamed requests (a non-streamed answer
    has no first token to time). ITL is the gap between consecutive SSE data
    events; ``slo_met`` = TTFT within its SLO and mean ITL within its SLO.
    """
    itl_mean = itl_p99 = itl_max = frac = None
    ttft = out.ttft_s if info.stream else None
    gaps = out.gaps_s
    if gaps:  # plain Python: a few dozen values, cheaper than numpy's call overhead
        ordered = sorted(gaps)
        n = len(ordered)
        itl_mean, itl_max = sum(ordered) / n, ordered[-1]
        itl_p99 = _quantile(ordered, 0.99)
        frac = sum(1 for g in ordered if g <= slo.itl_s) / n
    ttft_met = None if ttft is None else ttft <= slo.ttft_s
    itl_met = None if itl_mean is None else itl_mean <= slo.itl_s
    slo_met = None
    if out.status == "ok" and ttft_met is not None:
        slo_met = ttft_met and (itl_met is not False)
    elif out.status != "ok":
        slo_met = False
    status = cast(RequestStatus, out.status)
    return RequestRecord(
        t_ns=t_ns,
        request_id=rreq.request_id,
        prefill=out.prefill,
        decode=out.decode,
        status=status,
        arrival_t_ns=arrival_ns,
        input_tokens=rreq.input_tokens,
        output_tokens=out.output_tokens,
        ttft_s=ttft,
        e2e_s=e2e_s,
        itl_mean_s=itl_mean,
        itl_p99_s=itl_p99,
        itl_max_s=itl_max,
        itl_within_slo_frac=frac,
        slo_ttft_s=slo.ttft_s,
        slo_itl_s=slo.itl_s,
        ttft_met=ttft_met,
        itl_met=itl_met,
        slo_met=slo_met,
        error=out.error,
        stream=info.stream,
        model=out.model,
        tenant=out.tenant,
    )
