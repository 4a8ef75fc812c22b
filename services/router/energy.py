"""The router's energy link: GPU energy telemetry and request spans in, energy per request out.

Drives the pure :class:`~voltana.services.router.energy_live.LiveAttribution`.
A finished request's record waits (up to ``wait_s``) for the energy-counter
samples that cover its end, then goes onto the bus with its energy; without
them in time (no energy telemetry for an instance it used) it goes without
(``energy_j`` None), and what was booked to it is counted as dropped. A client
that asked for energy in its answer (``usage``) waits the same way. A request on
an instance that never sent energy telemetry gets None at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping

import msgspec
from voltana.schemas.router import RequestRecord
from voltana.schemas.telemetry import GpuTelemetry
from voltana.services.router.attribution import AttributionRule, EnergyBook, RequestEnergy
from voltana.services.router.energy_live import LiveAttribution
from voltana.services.router.metrics import RouterMetrics

__all__ = ["EnergyLink", "energy_fields", "tenant_of"]

ENERGY_HEADER = "X-Voltana-Energy"
"""Request header asking for the request's energy in the answer's ``usage``."""

MAX_MODELS = 32
"""Distinct model names kept as metric labels (bounded cardinality)."""


def tenant_of(headers: Mapping[str, str]) -> str | None:
    """``X-Tenant`` if given, else a short hash of the bearer API key, else None."""
    tenant = headers.get("X-Tenant")
    if tenant:
        return str(tenant)[:64]
    auth = str(headers.get("Authorization", "") or "")
    if auth.startswith("Bearer ") and auth[7:].strip():
        return "key-" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:12]
    return None


def energy_fields(e: RequestEnergy | None) -> dict[str, float | None]:
    """The energy keys of a record, a ``usage`` or ``meta_info`` object (J, None = unknown)."""
    if e is None:
        return {
            "energy_j": None,
            "energy_prefill_j": None,
            "energy_decode_j": None,
            "energy_idle_j": None,
        }
    return {
        "energy_j": round(e.total_j, 6),
        "energy_prefill_j": round(e.prefill_j, 6),
        "energy_decode_j": round(e.decode_j, 6),
        "energy_idle_j": round(e.idle_j, 6),
    }


class EnergyLink:
    """Attribution for one router; ``publish`` sends a finished record onto the bus."""

    def __init__(
        self,
        rule: AttributionRule,
        metrics: RouterMetrics,
        publish: Callable[[RequestRecord], None],
        *,
        wait_s: float = 3.0,
    ) -> None:
        self.core = LiveAttribution(book=EnergyBook(rule=rule))
        self.metrics = metrics
        self.publish_record = publish
        self.wait_s = wait_s
        self._pending: dict[str, tuple[RequestRecord, str, float]] = {}  # (record, path, deadline)
        self._final: dict[str, tuple[RequestEnergy | None, float]] = {}  # rid -> (energy, t)
        self._waiters: dict[str, asyncio.Future[RequestEnergy | None]] = {}
        self._models: set[str] = set()
        self._wall_minus_mono = time.time() - time.monotonic()

    # -- request side (monotonic seconds) ----------------------------------------------

    def dispatched(self, rid: str, prefill: str, decode: str, input_tokens: int) -> None:
        now = time.monotonic()
        self.core.start(rid, prefill, "prefill", now, input_tokens=input_tokens)
        self.core.start(rid, decode, "decode", now, input_tokens=input_tokens)

    def prefill_done(self, rid: str, prefill: str) -> None:
        self.core.end(rid, prefill, "prefill", time.monotonic())

    def decode_done(self, rid: str, decode: str, output_tokens: int) -> None:
        self.core.end(rid, decode, "decode", time.monotonic(), output_tokens)

    def _finish(self, rid: str) -> None:
        if rid in self._final or rid not in self.core.by_request:
            if rid not in self._final:
                self._final[rid] = (RequestEnergy(), time.monotonic())  # never dispatched
            return
        e = self.core.finish(rid, time.monotonic())
        if e is not None:
            self._deliver(rid, e)
        elif not self.core.measurable(rid):
            self._give_up(rid)  # no energy telemetry for an instance it used: none will come

    async def wait(self, rid: str) -> RequestEnergy | None:
        """End ``rid``'s spans now and wait (up to ``wait_s``) for its final energy."""
        self._finish(rid)
        if rid in self._final:
            return self._final[rid][0]
        fut: asyncio.Future[RequestEnergy | None] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            async with asyncio.timeout(self.wait_s):
                return await fut
        except TimeoutError:
            self._give_up(rid)
            return None
        finally:
            self._waiters.pop(rid, None)

    def record(self, rec: RequestRecord, path: str) -> None:
        """A finished request's record: published now if its energy is final, else later."""
        rid = rec.request_id
        self._finish(rid)
        if rid in self._final:
            self._send(rec, path, self._final.pop(rid)[0])
        else:
            self._pending[rid] = (rec, path, time.monotonic() + self.wait_s)

    # -- energy side --------------------------------------------------------------------

    def on_gpu(self, msg: GpuTelemetry, instance: str) -> None:
        """One GPU sample of one of our instances (``instance``: the router's name for it)."""
        t_read_ns = msg.energy_t_ns if msg.energy_t_ns is not None else msg.t_ns
        now = time.monotonic()
        offset = time.time() - now
        if abs(offset - self._wall_minus_mono) > 0.5:  # the wall clock was stepped
            self._wall_minus_mono = offset
        t = t_read_ns / 1e9 - self._wall_minus_mono  # one offset: readings keep their order
        for rid, e in self.core.sample(f"{msg.node}/{msg.gpu}", instance, t, msg.energy_j):
            self._deliver(rid, e)
        self._expire(now)

    def _deliver(self, rid: str, e: RequestEnergy | None) -> None:
        fut = self._waiters.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(e)
        pending = self._pending.pop(rid, None)
        if pending is not None:
            self._send(pending[0], pending[1], e)
        else:
            self._final[rid] = (e, time.monotonic())

    def _give_up(self, rid: str) -> None:
        self.core.forget(rid)
        self._deliver(rid, None)

    def _expire(self, now: float) -> None:
        """Records past their wait go out without energy; stale leftovers are dropped."""
        for rid in [r for r, (_, _, dl) in self._pending.items() if dl <= now]:
            if rid not in self._waiters:
                self._give_up(rid)
        for rid in [r for r, (_, t) in self._final.items() if now - t > 4 * self.wait_s + 60]:
            del self._final[rid]

    def tick(self) -> None:
        """Called now and then (also without telemetry) so waiting records still leave."""
        self._expire(time.monotonic())
        b = self.core.book
        m = self.metrics
        m.energy_measured.set(b.measured_j)
        m.energy_attributed.set(b.attributed_j)
        m.energy_unattributed.set(b.unattributed_j)
        m.energy_dropped.set(self.core.dropped_j)

    def _model_label(self, model: str | None) -> str:
        """The model as a metric label: the first MAX_MODELS names seen, then "other"."""
        name = (model or "")[:64]
        if name in self._models:
            return name
        if len(self._models) < MAX_MODELS:
            self._models.add(name)
            return name
        return "other"

    def _send(self, rec: RequestRecord, path: str, e: RequestEnergy | None) -> None:
        if e is not None:
            rec = msgspec.structs.replace(rec, **energy_fields(e))
            labels = (self._model_label(rec.model), path)
            self.metrics.request_energy.labels(*labels).observe(e.total_j)
            if rec.output_tokens > 0:
                self.metrics.energy_per_token.labels(*labels).observe(e.total_j / rec.output_tokens)
        self.publish_record(rec)
