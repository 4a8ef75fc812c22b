"""The PD router as the simulator runs it: the live router's policies and load accounting.

Each instance's counters are the live router's
:class:`~voltana.services.router.accounting.InstanceLoad`, driven through the
same request lifecycle: dispatch to both sides, the prefill side's end (the KV
transfer is done, which is when SGLang's prefill answers), the first token
(the same moment, on the decode side) and the decode side's end. Telemetry is
the snapshot of the last tick, never stale (the simulator has no bus to lose).
"""

from __future__ import annotations

import numpy as np
from voltana.schemas.base import Role
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.policies.base import ClusterView, RouteRequest, RoutingPolicy

__all__ = ["SimRouter"]

Snapshot = tuple[int, int, int, float]
"""Telemetry of one instance: (running requests, decode KV tokens, clock MHz, power W)."""


class SimRouter:
    """Picks the pair for each request and keeps the books the policies see.

    Args:
        instances: name -> role of every instance, in view order.
        prefill_policy / decode_policy: routing policies (from ``make_policy``).
        rng: the policies' random stream.
    """

    def __init__(
        self,
        instances: dict[str, Role],
        prefill_policy: RoutingPolicy,
        decode_policy: RoutingPolicy,
        rng: np.random.Generator,
        kv_capacity_tokens: int | None = None,
    ) -> None:
        self.kv_capacity_tokens = kv_capacity_tokens  # every engine's (telemetry reports it)
        self.policies = {"prefill": prefill_policy, "decode": decode_policy}
        self.rng = rng
        self.loads = {name: InstanceLoad() for name in instances}
        self._members: dict[str, list[tuple[str, Role, InstanceLoad]]] = {
            "prefill": [],
            "decode": [],
            "unified": [],
        }
        for name, role in instances.items():
            self._members[role].append((name, role, self.loads[name]))
        self._telemetry: dict[str, Snapshot] = {}

    def observe(self, name: str, snapshot: Snapshot) -> None:
        """A telemetry tick's figures for one instance (what the router sees until the next)."""
        self._telemetry[name] = snapshot

    def view(self, role: str, t: float) -> ClusterView:
        """The candidates of one side as the policies see them."""
        tele = self._telemetry
        views = []
        for name, r, load in self._members[role]:
            s = tele.get(name)
            if s is None:
                views.append(load.view(name, r, t, kv_capacity_tokens=self.kv_capacity_tokens))
            else:
                views.append(
                    load.view(
                        name,
                        r,
                        t,
                        running_batch=s[0],
                        kv_tokens=s[1],
                        clock_mhz=s[2],
                        power_w=s[3],
                        telemetry_age_s=0.0,
                        kv_capacity_tokens=self.kv_capacity_tokens,
                    )
                )
        return ClusterView(views)

    def select(self, rr: RouteRequest, t: float) -> tuple[str, str] | None:
        """(prefill, decode) for ``rr``; None when either side has no candidate."""
        p = self.policies["prefill"].select(self.view("prefill", t), rr, t, self.rng)
        d = self.policies["decode"].select(self.view("decode", t), rr, t, self.rng)
        if p is None or d is None:
            return None
        return p.instance, d.instance

    def select_unified(self, rr: RouteRequest, t: float) -> str | None:
        """The unified (colocated) instance for ``rr``, as sglang-router without
        ``--pd-disaggregation`` picks one worker: with the decode-side policy."""
        sel = self.policies["decode"].select(self.view("unified", t), rr, t, self.rng)
        return None if sel is None else sel.instance

    def unified_dispatched(self, name: str, rr: RouteRequest, t: float) -> None:
        self.policies["decode"].on_dispatch(name, rr, t)
        self.loads[name].unified_dispatched(rr.request_id, rr.input_tokens, rr.max_new_tokens, t)

    def unified_first_token(self, name: str, rr: RouteRequest) -> None:
        self.loads[name].first_token(rr.request_id)

    def dispatched(self, prefill: str, decode: str, rr: RouteRequest, t: float) -> None:
        rid = rr.request_id
        self.policies["prefill"].on_dispatch(prefill, rr, t)
        self.loads[prefill].prefill_dispatched(rid, rr.input_tokens, t)
        self.policies["decode"].on_dispatch(decode, rr, t)
        self.loads[decode].decode_dispatched(rid, rr.input_tokens, rr.max_new_tokens, t)

    def first_token(self, prefill: str, decode: str, rr: RouteRequest, t: float) -> None:
        """The KV transfer ended: the prefill side is done and the decode side starts."""
        rid = rr.request_id
        self.loads[prefill].prefill_done(rid, rr.input_tokens)
        self.loads[decode].first_token(rid)
        self.policies["prefill"].on_complete(prefill, rr, t)

    def decode_done(self, decode: str, rr: RouteRequest, t: float) -> None:
        self.loads[decode].decode_done(rr.request_id, rr.input_tokens, rr.max_new_tokens)
        self.policies["decode"].on_complete(decode, rr, t)
