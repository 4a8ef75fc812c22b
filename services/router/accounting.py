"""The router's own load accounting of one instance: what it sent there and what came back.

Pure and shared: the live router (``state.ClusterState``) and the simulator
(``sim.router``) drive the same object through the same request lifecycle,
so a simulated policy sees exactly the numbers the live one would.

Lifecycle of one request (``now`` in the caller's time base):

- ``prefill_dispatched`` / ``decode_dispatched``: the pair was chosen;
- ``prefill_done``: the prefill side ended (answered, failed or cancelled);
- ``first_token``: the decode side sent its first token;
- ``decode_done``: the decode side ended (any outcome).

Prefill instances carry the prompt tokens they still have to prefill; decode
instances carry prompt plus expected output tokens (their KV footprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.schemas.base import Role
from voltana.services.router.policies.base import InstanceView

__all__ = ["InstanceLoad"]


@dataclass(slots=True)
class InstanceLoad:
    """Counters of one instance, updated incrementally (every read is O(1))."""

    in_flight_requests: int = 0
    in_flight_tokens: int = 0
    queued_prefill_tokens: int = 0
    # request id -> dispatch time, until the side's first result; dicts keep insertion
    # order and dispatch times never decrease, so the first entry is the oldest
    waiting_since: dict[str, float] = field(default_factory=dict)
    # colocated (unified) workers: request id -> prompt tokens queued here until its first token
    unified_prompts: dict[str, int] = field(default_factory=dict)

    def prefill_dispatched(self, request_id: str, input_tokens: int, now: float) -> None:
        self.in_flight_requests += 1
        self.in_flight_tokens += input_tokens
        self.queued_prefill_tokens += input_tokens
        self.waiting_since[request_id] = now

    def decode_dispatched(
        self, request_id: str, input_tokens: int, out_tokens: int, now: float
    ) -> None:
        self.in_flight_requests += 1
        self.in_flight_tokens += input_tokens + out_tokens
        self.waiting_since[request_id] = now

    def prefill_done(self, request_id: str, input_tokens: int) -> bool:
        """Count the end of a prefill once; False when it was already counted."""
        if self.waiting_since.pop(request_id, None) is None:
            return False
        self.in_flight_requests -= 1
        self.in_flight_tokens -= input_tokens
        self.queued_prefill_tokens -= input_tokens
        return True

    def first_token(self, request_id: str) -> None:
        self.waiting_since.pop(request_id, None)
        if self.unified_prompts:
            n = self.unified_prompts.pop(request_id, None)
            if n is not None:  # a colocated worker's prompt is done
                self.queued_prefill_tokens -= n

    def decode_done(self, request_id: str, input_tokens: int, out_tokens: int) -> None:
        self.first_token(request_id)  # ended before its first token: its prompt leaves too
        self.in_flight_requests -= 1
        self.in_flight_tokens -= input_tokens + out_tokens

    def unified_dispatched(
        self, request_id: str, input_tokens: int, out_tokens: int, now: float
    ) -> None:
        """A colocated worker got the request: its prompt is queued here, then it decodes here."""
        self.decode_dispatched(request_id, input_tokens, out_tokens, now)
        self.queued_prefill_tokens += input_tokens
        self.unified_prompts[request_id] = input_tokens

    def view(
        self,
        instance: str,
        role: Role,
        now: float,
        *,
        url: str = "",
        healthy: bool = True,
        running_batch: int | None = None,
        kv_tokens: int | None = None,
        clock_mhz: int | None = None,
        power_w: float | None = None,
        engine_queue_reqs: int | None = None,
        telemetry_age_s: float | None = None,
        kv_capacity_tokens: int | None = None,
    ) -> InstanceView:
        """What a policy sees: these counters plus the caller's telemetry (None = unknown).

        ``oldest_wait_s``: how long the oldest request still waiting here has waited.
        """
        ws = self.waiting_since
        return InstanceView(
            instance=instance,
            role=role,
            url=url,
            healthy=healthy,
            in_flight_requests=self.in_flight_requests,
            in_flight_tokens=self.in_flight_tokens,
            queued_prefill_tokens=self.queued_prefill_tokens,
            running_batch=running_batch,
            kv_tokens=kv_tokens,
            clock_mhz=clock_mhz,
            oldest_wait_s=max(now - next(iter(ws.values())), 0.0) if ws else 0.0,
            power_w=power_w,
            engine_queue_reqs=engine_queue_reqs,
            telemetry_age_s=telemetry_age_s,
            kv_capacity_tokens=kv_capacity_tokens,
        )
