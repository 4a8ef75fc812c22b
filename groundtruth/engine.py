"""Pure continuous-batching scheduler of an SGLang-like engine (prefill, decode or unified).

No I/O and no clock reads: the caller passes ``now`` (seconds, any epoch) and decides
how long an iteration takes (``iteration_cost`` with a ``GpuModel``). The emulator
server paces it in real time; the simulator drives it in virtual time.

Driving loop (both shells):

    eng = Engine(EngineConfig(role="unified", kv_capacity_tokens=400_000))
    eng.submit(rid, prompt_tokens=..., max_new_tokens=..., output_tokens=..., now=t)
    events = eng.admit(t)               # decode role: KV preallocation ("kv_allocated")
    plan = eng.next_batch(t)            # None when there is nothing to run
    cost = iteration_cost(model, plan, clock_mhz)
    events = eng.complete(plan, t + cost.time_s)   # tokens, finishes
    # PD: decode side calls eng.kv_arrived(rid, t) once the prefill + transfer is done;
    #     prefill side calls eng.transfer_done(rid, t) once its KV was sent.

Scheduling follows SGLang's defaults: a prefill batch whenever waiting requests can be
admitted (a running slot and their KV reservation: prompt + max_new_tokens), packed up
to ``chunked_prefill_size`` tokens with the last request chunked; a partly prefilled
request continues first; otherwise one decode step over every running request.

Its configuration, request records, plans, events and gauges are in engine_types.py
(re-exported here: this module is the engine's public face).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from voltana.groundtruth.engine_cache import admit_with_cache, cache_gauges, cache_prompt
from voltana.groundtruth.engine_types import (
    AdmissionError,
    BatchPlan,
    EngineConfig,
    EngineEvent,
    EngineRequest,
    EngineStats,
    Phase,
)
from voltana.groundtruth.gpu_model import GpuModel, IterCost
from voltana.groundtruth.prefix_cache import PrefixCache, PrefixIdentity

__all__ = [
    "AdmissionError",
    "BatchPlan",
    "Engine",
    "EngineConfig",
    "EngineEvent",
    "EngineRequest",
    "EngineStats",
    "Phase",
    "PrefixIdentity",
    "iteration_cost",
]


@dataclass
class Engine:
    """The scheduler. Not thread-safe; one shell owns it."""

    config: EngineConfig
    requests: dict[str, EngineRequest] = field(default_factory=dict)
    _waiting: deque[str] = field(default_factory=deque)
    _reserved: int = 0
    cache: PrefixCache | None = None  # SGLang's radix cache (prefill and unified roles)

    def __post_init__(self) -> None:
        if self.config.radix_cache and self.config.role != "decode":
            self.cache = PrefixCache()

    # ----- intake ------------------------------------------------------------------
    def submit(
        self,
        rid: str,
        *,
        prompt_tokens: int,
        max_new_tokens: int,
        now: float,
        output_tokens: int | None = None,
        prefix: PrefixIdentity | None = None,
    ) -> EngineRequest:
        """Queue a request. Raises ``AdmissionError`` if it can never run here."""
        if rid in self.requests:
            raise AdmissionError(f"duplicate request id {rid!r}")
        if prompt_tokens < 1:
            raise AdmissionError(f"prompt must have at least one token, got {prompt_tokens}")
        if max_new_tokens < 1:
            raise AdmissionError(f"max_new_tokens must be positive, got {max_new_tokens}")
        out = max_new_tokens if output_tokens is None else output_tokens
        if not 1 <= out <= max_new_tokens:
            raise AdmissionError(f"output_tokens must be in 1..{max_new_tokens}, got {out}")
        need = prompt_tokens + max_new_tokens
        if need > self.config.kv_capacity_tokens:
            raise AdmissionError(
                f"the request needs {need} KV tokens ({prompt_tokens} prompt + {max_new_tokens} "
                f"new), more than the capacity of {self.config.kv_capacity_tokens} tokens"
            )
        req = EngineRequest(
            rid=rid,
            prompt_tokens=prompt_tokens,
            max_new_tokens=max_new_tokens,
            output_tokens=out,
            arrival_s=now,
            prefix=prefix if prefix is not None and prefix.keys else None,
        )
        self.requests[rid] = req
        self._waiting.append(rid)
        return req

    def abort(self, rid: str) -> bool:
        """Drop a request wherever it is and free its KV. False if unknown or done."""
        req = self.requests.pop(rid, None)
        if req is None:
            return False
        self._release(req)
        if rid in self._waiting:
            self._waiting.remove(rid)
        return True

    # ----- scheduling --------------------------------------------------------------
    def _slots_used(self) -> int:
        return sum(
            1
            for r in self.requests.values()
            if r.phase in (Phase.PREFILLING, Phase.RUNNING)
            or (r.phase is Phase.TRANSFER and self.config.role == "decode")
        )

    def _can_admit(self, req: EngineRequest, slots_used: int) -> bool:
        free = self.config.kv_capacity_tokens - self._reserved
        return slots_used < self.config.max_running_requests and req.reserved_tokens <= free

    def admit(self, now: float) -> list[EngineEvent]:
        """Decode role: preallocate KV for waiting requests (FIFO), which may then receive it."""
        if self.config.role != "decode":
            return []
        events: list[EngineEvent] = []
        slots = self._slots_used()
        while self._waiting:
            req = self._admit_head(slots, Phase.TRANSFER)
            if req is None:
                break
            slots += 1
            events.append(EngineEvent(req.rid, "kv_allocated", now))
        return events

    def _admit_head(self, slots_used: int, phase: Phase) -> EngineRequest | None:
        """Admit the head of the waiting queue into ``phase`` (KV reserved); None: it must wait."""
        req = self.requests[self._waiting[0]]
        if self.cache is not None:
            if not admit_with_cache(self.cache, req, self.config, slots_used, self._reserved):
                return None
        elif not self._can_admit(req, slots_used):
            return None
        self._waiting.popleft()
        self._reserve(req)
        req.phase = phase
        return req

    def next_batch(self, now: float) -> BatchPlan | None:
        """The next iteration, or None when idle (nothing runnable)."""
        del now  # decisions depend on state only; kept for symmetry with the shells
        if self.config.role != "decode":
            plan = self._prefill_plan()
            if plan is not None:
                return plan
        # One pass: the first max_running_requests running requests, in admission order.
        cap = self.config.max_running_requests
        rids: list[str] = []
        kv = 0
        running = Phase.RUNNING
        for r in self.requests.values():
            if r.phase is running:
                rids.append(r.rid)
                kv += r.prefilled_tokens + r.generated_tokens
                if len(rids) == cap:
                    break
        if not rids:
            return None
        return BatchPlan(
            kind="decode",
            rids=tuple(rids),
            new_tokens=len(rids),
            kv_tokens=kv,
        )

    def _prefill_plan(self, budget: int | None = None) -> BatchPlan | None:
        """Chunked prefill within ``budget`` tokens (default: ``chunked_prefill_size``)."""
        budget = self.config.chunked_prefill_size if budget is None else budget
        rids: list[str] = []
        chunks: list[tuple[int, int]] = []
        # A partly prefilled request continues first.
        for req in self.requests.values():
            if req.phase is Phase.PREFILLING and budget > 0:
                n = min(req.prompt_tokens - req.prefilled_tokens, budget)
                rids.append(req.rid)
                chunks.append((n, req.prefilled_tokens))
                budget -= n
        slots = self._slots_used()
        while self._waiting and budget > 0:
            admitted = self._admit_head(slots, Phase.PREFILLING)
            if admitted is None:
                break
            slots += 1
            done = admitted.prefilled_tokens  # > 0: served from the prefix cache
            n = min(admitted.prompt_tokens - done, budget)
            rids.append(admitted.rid)
            chunks.append((n, done))
            budget -= n
        if not rids:
            return None
        new = sum(n for n, _ in chunks)
        return BatchPlan(
            kind="prefill",
            rids=tuple(rids),
            chunks=tuple(chunks),
            new_tokens=new,
            kv_tokens=sum(c for _, c in chunks),
        )

    # ----- progress ----------------------------------------------------------------
    def complete(self, plan: BatchPlan, now: float, tokens: bool = True) -> list[EngineEvent]:
        """Apply a finished iteration at time ``now``; aborted requests are skipped.

        ``tokens=False`` leaves out the per-token events of a decode step (the
        simulator keeps its own per-request token times and needs only finishes).
        """
        events: list[EngineEvent] = []
        if plan.kind == "prefill":
            for rid, (n, _) in zip(plan.rids, plan.chunks, strict=True):
                req = self.requests.get(rid)
                if req is None:
                    continue
                req.prefilled_tokens += n
                if req.prefilled_tokens < req.prompt_tokens:
                    continue
                req.generated_tokens = 1
                req.first_token_s = now
                if self.cache is not None and req.prefix is not None:
                    self._reserved -= cache_prompt(self.cache, req)
                if self.config.role == "prefill":
                    req.phase = Phase.TRANSFER
                    events.append(EngineEvent(rid, "prefill_done", now, 1))
                else:
                    req.phase = Phase.RUNNING
                    events.append(EngineEvent(rid, "first_token", now, 1))
                    events.extend(self._maybe_finish(req, now))
            return events
        requests, running = self.requests, Phase.RUNNING
        for rid in plan.rids:
            req = requests.get(rid)
            if req is None or req.phase is not running:
                continue
            n = req.generated_tokens = req.generated_tokens + 1
            if tokens:
                events.append(EngineEvent(rid, "token", now, n))
            if n >= req.output_tokens:
                events.extend(self._maybe_finish(req, now))
        return events

    def kv_arrived(self, rid: str, now: float) -> list[EngineEvent]:
        """Decode role: the prefill's KV (and its first token) arrived; join the decode batch."""
        req = self.requests.get(rid)
        if req is None or req.phase is not Phase.TRANSFER:
            return []
        req.prefilled_tokens = req.prompt_tokens
        req.generated_tokens = 1
        req.first_token_s = now
        req.phase = Phase.RUNNING
        return [EngineEvent(rid, "first_token", now, 1), *self._maybe_finish(req, now)]

    def transfer_done(self, rid: str, now: float) -> list[EngineEvent]:
        """Prefill role: the KV was sent; the request leaves and frees its KV."""
        req = self.requests.get(rid)
        if req is None or req.phase is not Phase.TRANSFER:
            return []
        return self._finish(req, now, "length")

    def _maybe_finish(self, req: EngineRequest, now: float) -> list[EngineEvent]:
        if req.generated_tokens < req.output_tokens:
            return []
        reason: Literal["length", "stop"] = (
            "length" if req.output_tokens >= req.max_new_tokens else "stop"
        )
        return self._finish(req, now, reason)

    def _finish(
        self, req: EngineRequest, now: float, reason: Literal["length", "stop"]
    ) -> list[EngineEvent]:
        req.phase = Phase.FINISHED
        req.finish_s = now
        self.requests.pop(req.rid, None)
        self._release(req)
        return [EngineEvent(req.rid, "finished", now, req.generated_tokens, reason)]

    def _reserve(self, req: EngineRequest) -> None:
        self._reserved += req.reserved_tokens
        req.holds_reservation = True

    def _release(self, req: EngineRequest) -> None:
        if req.holds_reservation:
            self._reserved -= req.reserved_tokens
            req.holds_reservation = False
        if req.cache_keys and self.cache is not None:
            self.cache.unlock(req.cache_keys)  # its prefix stays cached, now evictable
            req.cache_keys = ()
        req.phase = Phase.FINISHED

    # ----- introspection -----------------------------------------------------------
    def stats(self) -> EngineStats:
        running = waiting = transfer = used = decode_kv = waiting_tokens = 0
        for r in self.requests.values():
            used += r.kv_tokens
            if r.phase is Phase.RUNNING:
                running += 1
                decode_kv += r.kv_tokens
            elif r.phase is Phase.WAITING:
                waiting += 1
                waiting_tokens += r.prompt_tokens
            elif r.phase is Phase.TRANSFER:
                transfer += 1
                if self.config.role == "decode":
                    used += r.prompt_tokens  # preallocated pages are in use
            else:
                running += 1
        return EngineStats(
            running_reqs=running,
            waiting_reqs=waiting,
            transfer_reqs=transfer,
            kv_used_tokens=used,
            kv_reserved_tokens=self._reserved,
            kv_capacity_tokens=self.config.kv_capacity_tokens,
            decode_kv_tokens=decode_kv,
            waiting_prompt_tokens=waiting_tokens,
            **({} if self.cache is None else cache_gauges(self.cache)),
        )

    @property
    def idle(self) -> bool:
        return not self.requests


def iteration_cost(model: GpuModel, plan: BatchPlan, clock_mhz: float) -> IterCost:
    """Cost of ``plan`` on ``model`` at the requested SM clock."""
    if plan.kind != "decode":  # prefill, or mixed (decode tokens as 1-token extends)
        return model.prefill_batch(clock_mhz, plan.chunks)
    return model.decode(clock_mhz, plan.batch_size, plan.kv_tokens)
