"""Delivery classes: which events the log must never lose and which it may sample.

``KEEP`` events record what the control plane did and why (clock commands and
states, controller decisions, route decisions, request records); losing one
leaves a hole in the audit trail and in replay. They go to JetStream with an
acknowledgement and a ``Nats-Msg-Id`` through the bus's bounded outbox, which
re-sends until the stream has them (deduplicated), across a leader election.

``SAMPLED`` events are periodic snapshots (GPU and engine telemetry, the
router's per-instance state): each is superseded by the next one within
50-100 ms, they are about nine in ten of all events, and a copy re-sent seconds
late would mislead a live reader more than a missing one. They are published
once, as plain NATS messages; the stream stores them whenever it has a leader
and misses those sent while it elects one.

Configuration is not an event: it lives in the replicated KV bucket.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from voltana.schemas import subjects

Delivery = Literal["keep", "sampled"]
KEEP: Delivery = "keep"
SAMPLED: Delivery = "sampled"

_BY_KIND: dict[str, Delivery] = {
    "telemetry.gpu": SAMPLED,
    "telemetry.engine": SAMPLED,
    "router.state": SAMPLED,
    "route.decision": KEEP,
    "request.done": KEEP,
    "clock.set": KEEP,
    "clock.state": KEEP,
    "freqctl.decision": KEEP,
}

MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream's deduplication header; voltana's value is ``<publisher>:<seq>``."""

RETRY_HEADER = "Voltana-Retry"
"""Set on a re-sent KEEP message: live subscribers already had the first copy and skip it."""


@lru_cache(maxsize=4096)
def delivery_of(subject: str) -> Delivery:
    """The delivery class of a concrete voltana subject (SAMPLED for one voltana does not know)."""
    try:
        return _BY_KIND[subjects.parse(subject).kind]
    except subjects.SubjectError:
        return SAMPLED


def msg_id(publisher: str, seq: int) -> str:
    """The ``Nats-Msg-Id`` of a KEEP message: unique per publisher, gap-free per publisher."""
    return f"{publisher}:{seq}"


def parse_msg_id(value: str) -> tuple[str, int] | None:
    """``(publisher, seq)`` of a voltana message id, None for anything else."""
    publisher, sep, seq = value.rpartition(":")
    if not sep or not publisher or not seq.isdigit():
        return None
    return publisher, int(seq)
