"""The outbox's rules, driven by a scripted stream: order, re-sends, bounds, refusals.

The real JetStream path (acks, deduplication, a leader election) is covered by
tests/integration/test_nats_failover.py; here the stream's answers are scripted
so each rule is checked on its own.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from voltana.bus.outbox import Outbox, OutboxSettings
from voltana.schemas import subjects
from voltana.schemas.delivery import (
    _BY_KIND,
    KEEP,
    MSG_ID_HEADER,
    RETRY_HEADER,
    SAMPLED,
    delivery_of,
    parse_msg_id,
)

FAST = OutboxSettings(retry_initial_s=0.001, retry_max_s=0.005, ack_timeout_s=0.1)


class Stream:
    """Answers like JetStream: stores by message id, or fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: set[int] = set()
        self.sent: list[tuple[int, bool]] = []  # (seq, re-sent)
        self.stored: dict[str, bytes] = {}

    async def send(
        self, subject: str, data: bytes, headers: dict[str, str], timeout: float
    ) -> bool:
        parsed = parse_msg_id(headers[MSG_ID_HEADER])
        assert parsed is not None
        seq = parsed[1]
        self.sent.append((seq, RETRY_HEADER in headers))
        await asyncio.sleep(0)
        if self.down:
            raise nats.errors.TimeoutError
        if seq in self.refuse:
            raise nats.js.errors.BadRequestError(description="message size exceeds maximum")
        duplicate = headers[MSG_ID_HEADER] in self.stored
        self.stored[headers[MSG_ID_HEADER]] = data
        return duplicate


def test_every_subject_kind_has_a_delivery_class() -> None:
    kinds = {kind for kind, _, _ in subjects._PATTERNS}
    assert kinds == set(_BY_KIND)
    assert delivery_of(subjects.clock_set("n1", 0)) == KEEP
    assert delivery_of(subjects.REQUEST_DONE) == KEEP
    assert delivery_of(subjects.telemetry_gpu("n1", 0)) == SAMPLED
    assert delivery_of("elsewhere.subject") == SAMPLED
    assert parse_msg_id("voltana-router-ab12:17") == ("voltana-router-ab12", 17)
    assert parse_msg_id("not-ours") is None


async def test_every_message_is_acked_once_in_order() -> None:
    stream = Stream()
    box = Outbox(stream.send, "p", settings=FAST)
    for i in range(50):
        assert box.put("voltana.request.done", b"%d" % i) == i + 1
    assert await box.flush(2.0)
    assert [seq for seq, _ in stream.sent] == list(range(1, 51))
    assert sorted(stream.stored) == sorted(f"p:{n}" for n in range(1, 51))
    assert box.acked == 50 and box.depth == 0 and box.dropped == 0
    await box.close()


async def test_outage_resends_marked_copies_until_acked() -> None:
    stream = Stream()
    box = Outbox(stream.send, "p", settings=FAST)
    stream.down = True
    for _ in range(5):
        box.put("voltana.route.decision", b"x")
    while len(stream.sent) < 15:  # every message tried, and re-tried, while the stream is down
        await asyncio.sleep(0.001)
    assert box.depth == 5
    first = {seq for seq, retry in stream.sent if not retry}
    assert first == {1, 2, 3, 4, 5}  # each went out once unmarked: the live copy
    stream.down = False
    assert await box.flush(2.0)
    assert sorted(stream.stored) == [f"p:{n}" for n in range(1, 6)]
    assert box.retries >= 5
    await box.close()


async def test_full_outbox_drops_new_messages_and_leaves_a_visible_gap() -> None:
    stream = Stream()
    stream.down = True
    box = Outbox(stream.send, "p", settings=OutboxSettings(max_pending=3, retry_initial_s=0.001))
    seqs = [box.put("voltana.request.done", b"x") for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and box.depth == 3 and box.dropped == 2
    stream.down = False
    assert await box.flush(2.0)
    box.put("voltana.request.done", b"y")
    assert await box.flush(2.0)
    assert sorted(stream.stored) == ["p:1", "p:2", "p:3", "p:6"]  # 4 and 5: the counted drops
    await box.close()


async def test_refused_message_is_not_retried() -> None:
    stream = Stream()
    stream.refuse = {2}
    box = Outbox(stream.send, "p", settings=FAST)
    for _ in range(3):
        box.put("voltana.request.done", b"x")
    assert await box.flush(2.0)
    assert sorted(stream.stored) == ["p:1", "p:3"]
    assert box.dropped == 1 and [s for s, _ in stream.sent].count(2) == 1
    await box.close()


async def test_without_an_event_stream_keep_events_are_not_held() -> None:
    stream = Stream()
    stream.down = True

    async def exists() -> bool:
        return False

    box = Outbox(stream.send, "p", settings=FAST, stream_exists=exists)
    assert box.accepts()  # assumed present until JetStream answers
    box.put("voltana.request.done", b"x")
    await asyncio.sleep(0.01)
    assert not box.accepts()
    assert box.depth == 0 and await box.flush(0.1)
    await box.close()


async def test_close_gives_up_on_unacked_messages_after_its_timeout() -> None:
    stream = Stream()
    stream.down = True
    box = Outbox(stream.send, "p", settings=FAST)
    box.put("voltana.request.done", b"x")
    await box.close(timeout_s=0.05)
    assert box.dropped == 1 and box.depth == 0


async def test_a_message_queued_as_the_stream_is_found_missing_still_goes_out_once() -> None:
    stream = Stream()
    stream.down = True
    checked = asyncio.Event()

    async def exists() -> bool:
        await checked.wait()
        return False

    box = Outbox(stream.send, "p", settings=FAST, stream_exists=exists)
    assert box.accepts()
    box.put("voltana.clock.set.n1.0", b"x")
    checked.set()  # the answer lands before the sender has run
    await asyncio.sleep(0)
    assert await box.flush(1.0)
    assert stream.sent[0] == (1, False)  # the live copy went out
    assert box.dropped == 1
    await box.close()


async def test_in_flight_bound_holds_and_never_spins() -> None:
    release = asyncio.Event()
    sent: list[str] = []

    async def slow(subject: str, data: bytes, headers: dict[str, str], timeout: float) -> bool:
        sent.append(headers[MSG_ID_HEADER])
        await release.wait()
        return False

    box = Outbox(slow, "p", settings=OutboxSettings(max_in_flight=2))
    for _ in range(10):
        box.put("voltana.request.done", b"x")
    await asyncio.sleep(0.05)  # runs only if the sender waits instead of spinning
    assert sent == ["p:1", "p:2"] and box.depth == 10
    release.set()
    assert await box.flush(2.0)
    assert len(sent) == 10 and box.acked == 10
    await box.close()
