"""The continuous-batching engine's vocabulary: its knobs, request states, plans, events, gauges.

``Engine`` (engine.py) owns and mutates the ``EngineRequest`` records; the shells
(emulator, simulator) read ``BatchPlan``, ``EngineEvent`` and ``EngineStats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import msgspec
from voltana.groundtruth.prefix_cache import PrefixIdentity
from voltana.schemas.base import Role

__all__ = [
    "AdmissionError",
    "BatchPlan",
    "EngineConfig",
    "EngineEvent",
    "EngineRequest",
    "EngineStats",
    "EventKind",
    "Phase",
]


class AdmissionError(ValueError):
    """A request the engine can never serve (bad sizes, larger than the KV capacity)."""


class Phase(StrEnum):
    WAITING = "waiting"  # queued for prefill (or for KV preallocation on a decode server)
    PREFILLING = "prefilling"  # partly prefilled (chunked)
    TRANSFER = "transfer"  # prefill: sending KV; decode: KV allocated, waiting for it
    RUNNING = "running"  # in the decode batch
    FINISHED = "finished"


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Engine knobs, named after SGLang's server arguments."""

    role: Role = "unified"
    max_running_requests: int = 256
    chunked_prefill_size: int = 8192
    kv_capacity_tokens: int = 400_000
    # SGLang's radix cache (on unless --disable-radix-cache); a decode server never
    # matches prefixes (in PD mode the prefill instances hold the cache)
    radix_cache: bool = False
    enable_mixed_chunk: bool = False  # unified: decode steps ride along prefill chunks

    def __post_init__(self) -> None:
        if self.max_running_requests < 1 or self.chunked_prefill_size < 1:
            raise ValueError("max_running_requests and chunked_prefill_size must be >= 1")
        if self.kv_capacity_tokens < 1:
            raise ValueError("kv_capacity_tokens must be >= 1")


@dataclass
class EngineRequest:
    """State of one request inside the engine (owned and mutated by ``Engine`` only)."""

    rid: str
    prompt_tokens: int
    max_new_tokens: int
    output_tokens: int  # tokens it will produce (< max_new_tokens when it stops at EOS)
    arrival_s: float
    phase: Phase = Phase.WAITING
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    holds_reservation: bool = False
    prefix: PrefixIdentity | None = None  # block keys of the prompt, for the prefix cache
    cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    cache_moved_tokens: int = 0  # own prompt tokens handed to the cache once computed
    cache_keys: tuple[int, ...] = ()  # cache nodes this request holds locked

    @property
    def reserved_tokens(self) -> int:
        """KV it holds of its own (the cache accounts for the cached and handed-over part)."""
        return (
            self.prompt_tokens + self.max_new_tokens - self.cached_tokens - self.cache_moved_tokens
        )

    @property
    def kv_tokens(self) -> int:
        """Tokens held in the KV cache now."""
        return self.prefilled_tokens + self.generated_tokens


class BatchPlan(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One iteration to run: prefill chunks, one decode step, or both mixed (``mixed``:
    the prefill chunks first, then one (1, context) chunk per decoding request)."""

    kind: Literal["prefill", "decode", "mixed"]
    rids: tuple[str, ...]
    chunks: tuple[tuple[int, int], ...] = ()  # prefill: (new_tokens, context_tokens) per rid
    new_tokens: int = 0  # prefill: tokens computed; decode: batch size
    kv_tokens: int = 0  # KV tokens the iteration reads (decode: sum of contexts)

    @property
    def batch_size(self) -> int:
        """Requests in the iteration (one per rid, in prefill and decode alike)."""
        return len(self.rids)


EventKind = Literal["kv_allocated", "first_token", "token", "prefill_done", "finished"]


class EngineEvent(msgspec.Struct, frozen=True, gc=False):
    """Something a shell must act on: stream a token, start a KV transfer, finish."""

    rid: str
    kind: EventKind
    t_s: float
    generated_tokens: int = 0
    finish_reason: Literal["length", "stop"] | None = None


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """What SGLang's gauges report (num_running_reqs, num_queue_reqs, token usage ...)."""

    running_reqs: int
    waiting_reqs: int
    transfer_reqs: int
    kv_used_tokens: int
    kv_reserved_tokens: int
    kv_capacity_tokens: int
    decode_kv_tokens: int  # sum of contexts of the decode batch
    waiting_prompt_tokens: int = 0
    cache_tokens: int = 0  # held by the prefix cache (locked or evictable)
    cache_hit_tokens: int = 0  # admitted prompt tokens served from the cache (cumulative)
    cache_query_tokens: int = 0  # admitted prompt tokens (cumulative)
    cache_evicted_tokens: int = 0  # tokens evicted from the cache (cumulative)

    @property
    def cache_hit_rate(self) -> float:
        """SGLang's ``cache_hit_rate``: cached over admitted prompt tokens (0 before any)."""
        q = self.cache_query_tokens
        return self.cache_hit_tokens / q if q else 0.0

    @property
    def token_usage(self) -> float:
        return self.kv_used_tokens / self.kv_capacity_tokens
