"""The router's decisions and their books: what dispatch may ask of the router, and no more.

:class:`Routing` pairs a request with a prefill and a decode worker (both
policies decide), and records each dispatch, circuit-breaker result and
finished request in the cluster state, the policies, the metrics and on the
bus. The server builds one and hands it to
:class:`~voltana.services.router.dispatch.Pd`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter
from voltana.common.logs import debug_enabled, get_logger
from voltana.schemas import subjects
from voltana.schemas.base import now_ns
from voltana.schemas.config import SloConfig
from voltana.schemas.router import RouteDecision
from voltana.services.router import protocol as proto
from voltana.services.router.attribution import AttributionRule
from voltana.services.router.busio import RouterBus
from voltana.services.router.energy import EnergyLink
from voltana.services.router.metrics import RouterMetrics, observe_many
from voltana.services.router.policies import ClusterView, RouteRequest, RoutingPolicy
from voltana.services.router.state import ClusterState, WorkerState
from voltana.services.router.stats import Outcome, request_record

__all__ = ["Pair", "Routing"]

log = get_logger("router")


@dataclass(frozen=True, slots=True)
class Pair:
    """The workers chosen for one request and why."""

    prefill: WorkerState
    decode: WorkerState
    prefill_reason: str
    decode_reason: str


class Routing:
    """Choices and bookkeeping for every request; sets ``changed`` when the state moved.

    Args:
        state: the workers' accounting, health and telemetry.
        prefill_policy / decode_policy: one routing policy per side.
        rng: the policies' random stream.
        metrics / bus: where decisions and finished requests are counted and published.
        slo: the targets a finished request is judged against.
        changed: wakes the server's state publisher.
        energy: energy per request (records wait in it for their energy); default rule if None.
    """

    def __init__(
        self,
        state: ClusterState,
        prefill_policy: RoutingPolicy,
        decode_policy: RoutingPolicy,
        rng: np.random.Generator,
        metrics: RouterMetrics,
        bus: RouterBus,
        slo: SloConfig,
        changed: asyncio.Event,
        energy: EnergyLink | None = None,
    ) -> None:
        self.state = state
        self.prefill_policy = prefill_policy
        self.decode_policy = decode_policy
        # cache-aware policies match prompts: only then is a request's text keyed
        self.uses_prefix = any(
            p.name in ("cache-aware", "ecoroute") for p in (prefill_policy, decode_policy)
        )
        self.rng = rng
        self.metrics = metrics
        self.bus = bus
        self.slo = slo
        self.changed = changed
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}
        self.energy = energy or EnergyLink(
            AttributionRule(), metrics, lambda rec: bus.publish(subjects.REQUEST_DONE, rec)
        )

    def choose(self, rreq: RouteRequest, excluded: set[str]) -> Pair | None:
        """Ask both policies; None when either side has no healthy candidate."""
        now = time.monotonic()
        st = self.state
        pview = st.view("prefill", now)
        if excluded:
            pview = ClusterView(v for v in pview if v.instance not in excluded)
        psel = self.prefill_policy.select(pview, rreq, now, self.rng)
        dsel = self.decode_policy.select(st.view("decode", now), rreq, now, self.rng)
        if psel is None or dsel is None:
            return None
        return Pair(st.workers[psel.instance], st.workers[dsel.instance], psel.reason, dsel.reason)

    def choose_unified(self, rreq: RouteRequest, excluded: set[str]) -> Pair | None:
        """One colocated worker for the whole request (the decode policy picks), as
        sglang-router does without ``--pd-disaggregation``; None when none is healthy."""
        now = time.monotonic()
        view = self.state.view("unified", now)
        if excluded:
            view = ClusterView(v for v in view if v.instance not in excluded)
        sel = self.decode_policy.select(view, rreq, now, self.rng)
        if sel is None:
            return None
        w = self.state.workers[sel.instance]
        return Pair(w, w, sel.reason, sel.reason)

    def on_dispatched(self, pair: Pair, rreq: RouteRequest, room: int, path: str) -> None:
        """Book a dispatch (``pair.prefill is pair.decode``: one colocated worker)."""
        now = time.monotonic()
        pw, dw = pair.prefill, pair.decode
        self.energy.dispatched(rreq.request_id, pw.name, dw.name, rreq.input_tokens)
        if pw is dw:
            self.state.unified_dispatched(
                dw.name, rreq.request_id, rreq.input_tokens, rreq.max_new_tokens, now
            )
            self._child(self.metrics.decisions, "unified", dw.published_name).inc()
        else:
            self.state.dispatched(
                pw.name, dw.name, rreq.request_id, rreq.input_tokens, rreq.max_new_tokens, now
            )
            self.prefill_policy.on_dispatch(pw.name, rreq, now)
            self._child(self.metrics.decisions, "prefill", pw.published_name).inc()
            self._child(self.metrics.decisions, "decode", dw.published_name).inc()
        self.decode_policy.on_dispatch(dw.name, rreq, now)
        self.changed.set()
        self.bus.publish(
            subjects.ROUTE_DECISION,
            RouteDecision(
                t_ns=now_ns(),
                request_id=rreq.request_id,
                prefill=pw.name,
                decode=dw.name,
                prefill_policy=self.prefill_policy.name,
                decode_policy=self.decode_policy.name,
                bootstrap_room=room,
                input_tokens=rreq.input_tokens,
                max_new_tokens=rreq.max_new_tokens,
                prefill_reason=pair.prefill_reason,
                decode_reason=pair.decode_reason,
                path=path,
            ),
        )

    def breaker_result(self, name: str, ok: bool) -> None:
        if self.state.request_result(name, ok, time.monotonic()):
            w = self.state.workers[name]
            log.warning("circuit_" + ("open" if w.breaker.opened_at else "closed"), instance=name)
            self.changed.set()

    def on_finished(
        self,
        rreq: RouteRequest,
        info: proto.RequestInfo,
        path: str,
        out: Outcome,
        arrival: float,
        arrival_ns: int,
    ) -> None:
        now = time.monotonic()
        if out.prefill and out.prefill != out.decode:  # equal: one colocated worker
            self.prefill_policy.on_complete(out.prefill, rreq, now)
        if out.decode:
            self.decode_policy.on_complete(out.decode, rreq, now)
        self.changed.set()
        m = self.metrics
        self._child(m.requests, path, out.status).inc()
        e2e = now - arrival
        m.e2e.observe(e2e)
        if out.ttft_s is not None and info.stream:
            m.ttft.observe(out.ttft_s)
        observe_many(m.itl, out.gaps_s)
        rec = request_record(rreq, info, out, e2e, arrival_ns, self.slo, now_ns())
        if rec.slo_met is not None:
            self._child(m.slo_met, "true" if rec.slo_met else "false").inc()
        self.energy.record(rec, path)  # published once its energy is final
        ids = {"request_id": rreq.request_id, "prefill": out.prefill, "decode": out.decode}
        if out.status != "ok" and out.status != "cancelled":
            log.warning("request_failed", status=out.status, error=out.error, path=path, **ids)
        elif debug_enabled():  # a debug line per request: built only when it is written
            if out.status == "cancelled":  # the client's choice: counted, not a failure
                log.debug("request_cancelled", error=out.error, path=path, **ids)
            else:
                log.debug(
                    "request_done", ttft_s=out.ttft_s, e2e_s=e2e, tokens=out.output_tokens, **ids
                )

    def _child(self, metric: Counter, *labels: str) -> Counter:
        """``metric.labels(*labels)``, looked up once (labels() takes a lock and builds keys)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
