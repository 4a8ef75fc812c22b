"""Dispatch to colocated (unified) SGLang workers: one worker per request, no bootstrap.

What sglang-router does without ``--pd-disaggregation``: the decode policy picks one
worker from the ``unified`` view, the client's body goes to it unchanged, and its answer
(streamed or not) comes back through the same relay, timing, circuit breakers and books
as PD dispatch (:class:`~voltana.services.router.dispatch.Pd`). There is no prefill side:
its task is done at once, so nothing waits on it and nothing re-pairs.
"""

from __future__ import annotations

from typing import Any

from voltana.services.router import protocol as proto
from voltana.services.router.dispatch import Pd
from voltana.services.router.policies.base import RouteRequest
from voltana.services.router.routing import Pair
from voltana.services.router.state import WorkerState

__all__ = ["Unified"]


class Unified(Pd):
    """``Pd`` with one colocated worker per request (router ``mode = "unified"``)."""

    def _choose(self, rreq: RouteRequest, excluded: set[str]) -> Pair | None:
        return self.routing.choose_unified(rreq, excluded)

    def _payload(
        self, body: dict[str, Any], pw: WorkerState, info: proto.RequestInfo
    ) -> tuple[bytes, int]:
        return proto.encode(body), 0  # no bootstrap room outside PD

    async def _prefill(self, url: str, payload: bytes, pname: str, rreq: RouteRequest) -> bytes:
        return b""  # no prefill side: the worker does it all
