"""The outbox: KEEP events into JetStream with an ack and a message id, across leader elections.

``put`` never blocks and never waits for the network: it numbers the message
(per publisher, gap-free), keeps it in a bounded table and wakes the sender.
The sender publishes each message at once (the copy live subscribers get),
waits for the stream's ack, and re-sends what got no ack (timeout, no leader,
connection lost) with backoff, marked with ``Voltana-Retry`` so live
subscribers skip the repeat, and with the same ``Nats-Msg-Id`` so the stream
stores it once. A full table drops the new message: its number is still used,
so the gap shows in the stream and in ``voltana_bus_outbox_dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from prometheus_client import Counter, Gauge
from voltana.common.logs import get_logger
from voltana.common.tasks import cancel_and_wait
from voltana.schemas.delivery import MSG_ID_HEADER, RETRY_HEADER, msg_id

log = get_logger("bus.outbox")

DEPTH = Gauge("voltana_bus_outbox_depth", "KEEP messages not yet acked by the stream", ["bus"])
DROPPED = Counter(
    "voltana_bus_outbox_dropped", "KEEP messages the outbox gave up on", ["bus", "reason"]
)
RETRIES = Counter("voltana_bus_outbox_retries", "KEEP messages re-sent for want of an ack", ["bus"])
ACKED = Counter("voltana_bus_outbox_acked", "KEEP messages the stream acknowledged", ["bus"])

StreamExists = Callable[[], Awaitable[bool]]
"""Asks JetStream whether the event stream exists; raises when it cannot tell."""

Send = Callable[[str, bytes, dict[str, str], float], Awaitable[bool]]
"""``send(subject, data, headers, timeout_s)`` -> the stream saw a duplicate; raises on no ack."""

_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


class OutboxSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds of the outbox: how many messages it holds and how it re-sends."""

    max_pending: int = 20_000
    max_in_flight: int = 2048
    ack_timeout_s: float = 2.0
    retry_initial_s: float = 0.05
    retry_max_s: float = 1.0


@dataclass(slots=True)
class _Entry:
    seq: int
    subject: str
    data: bytes
    attempts: int = 0


class Outbox:
    """A bounded, re-sending queue of KEEP messages for one publisher.

    Args:
        send: publishes one message to JetStream and waits for its ack.
        publisher: this publisher's id (the message ids are ``<publisher>:<seq>``).
        bus_name: label of the metrics (the bus's client name).
    """

    def __init__(
        self,
        send: Send,
        publisher: str,
        *,
        bus_name: str = "voltana",
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream_exists: StreamExists | None = None,
        recheck_s: float = 10.0,
    ) -> None:
        self._send = send
        self.publisher = publisher
        self.settings = settings or OutboxSettings()
        self._clock = clock
        self._label = bus_name
        self.seq = 0
        self.acked = 0
        self.duplicates = 0
        self.retries = 0
        self.dropped = 0
        self._pending: dict[int, _Entry] = {}
        self._fresh: deque[int] = deque()
        self._retry: list[int] = []
        self._retry_at = 0.0
        self._failures = 0
        self._warned_s = float("-inf")
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stream_exists = stream_exists
        self._recheck_s = recheck_s
        self._stream_present = True  # assumed until JetStream says there is none
        self._checked_s: float | None = None
        self._check: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Messages not yet acknowledged by the stream."""
        return len(self._pending)

    def accepts(self) -> bool:
        """Whether KEEP events should come here: False only while JetStream says no stream exists.

        Without an event stream nothing can ack, so KEEP events go out as plain messages
        instead of being re-sent forever; checked in the background every ``recheck_s``.
        A stream that cannot answer (electing a leader) counts as present.
        """
        now = self._clock()
        due = self._checked_s is None or now - self._checked_s >= self._recheck_s
        if self._stream_exists is not None and due and (self._check is None or self._check.done()):
            self._checked_s = now
            self._check = asyncio.get_running_loop().create_task(
                self._recheck(), name="outbox-check"
            )
        return self._stream_present

    async def _recheck(self) -> None:
        assert self._stream_exists is not None
        try:
            present = await self._stream_exists()
        except Exception:
            present = True
        if present != self._stream_present:
            log.info(
                "event_stream_present" if present else "event_stream_absent",
                publisher=self.publisher,
            )
        self._stream_present = present
        if not present:
            # those waiting for a re-send went out once (live already); with no stream there
            # is nothing to keep them in. Fresh ones still go out once; their failure drops them.
            for seq in self._retry:
                if self._pending.pop(seq, None) is not None:
                    self._drop("no_stream")
            self._retry.clear()
            DEPTH.labels(self._label).set(len(self._pending))
            if not self._pending:
                self._empty.set()

    def put(self, subject: str, data: bytes) -> int:
        """Queue one message; returns its sequence number (used even when it is dropped)."""
        self.seq += 1
        if len(self._pending) >= self.settings.max_pending:
            self._drop("full")
            return self.seq
        self._pending[self.seq] = _Entry(self.seq, subject, data)
        self._fresh.append(self.seq)
        self._empty.clear()
        DEPTH.labels(self._label).set(len(self._pending))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bus-outbox")
        self._wake.set()
        return self.seq

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message is acked; False when ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Give the stream ``timeout_s`` to ack what is queued, then stop; the rest is dropped."""
        if self._pending and not await self.flush(timeout_s):
            left = len(self._pending)
            log.warning("outbox_closed_with_unacked", publisher=self.publisher, messages=left)
            for _ in range(left):
                self._drop("closed")
            self._pending.clear()
        await cancel_and_wait([self._task, self._check, *self._sends])
        DEPTH.labels(self._label).set(0)

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        DROPPED.labels(self._label, reason).inc()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._dispatch()
            # wake on a put or a finished send; or when the next re-send is due (if there is room)
            timeout = None
            if self._retry and self._in_flight < self.settings.max_in_flight:
                timeout = max(0.001, self._retry_at - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _dispatch(self) -> None:
        """Start sends: fresh messages first (the live copy must not wait), then due retries."""
        s = self.settings
        while self._fresh and self._in_flight < s.max_in_flight:
            self._start(self._fresh.popleft(), retry=False)
        if self._retry and self._clock() >= self._retry_at:
            while self._retry and self._in_flight < s.max_in_flight:
                self._start(heapq.heappop(self._retry), retry=True)

    def _start(self, seq: int, *, retry: bool) -> None:
        entry = self._pending.get(seq)
        if entry is None:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._attempt(entry, retry))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _attempt(self, entry: _Entry, retry: bool) -> None:
        headers = {MSG_ID_HEADER: msg_id(self.publisher, entry.seq)}
        if retry:
            headers[RETRY_HEADER] = str(entry.attempts)
            self.retries += 1
            RETRIES.labels(self._label).inc()
        entry.attempts += 1
        try:
            duplicate = await self._send(
                entry.subject, entry.data, headers, self.settings.ack_timeout_s
            )
        except _RETRYABLE as exc:
            self._failed(entry, exc)
        except nats.js.errors.APIError as exc:
            # the stream refused the message itself (too large, no such stream): never retried
            self._pending.pop(entry.seq, None)
            self._drop("refused")
            log.warning("outbox_message_refused", subject=entry.subject, error=str(exc))
        except Exception as exc:  # anything else (a socket error): worth another try
            log.debug("outbox_send_failed", error=repr(exc))
            self._failed(entry, exc)
        else:
            self._pending.pop(entry.seq, None)
            self.acked += 1
            self.duplicates += int(duplicate)
            ACKED.labels(self._label).inc()
            self._retry_at = min(self._retry_at, self._clock())  # the stream is back
            if self._failures:
                log.debug("outbox_acked_again", publisher=self.publisher, after=self._failures)
            self._failures = 0
        finally:
            self._in_flight -= 1
            DEPTH.labels(self._label).set(len(self._pending))
            if not self._pending:
                self._empty.set()
            self._wake.set()

    def _failed(self, entry: _Entry, exc: BaseException) -> None:
        if entry.seq not in self._pending:
            return
        if not self._stream_present:
            del self._pending[entry.seq]
            self._drop("no_stream")
            return
        heapq.heappush(self._retry, entry.seq)
        now = self._clock()
        if self._failures == 0 and now - self._warned_s >= 5.0:  # one line per outage
            self._warned_s = now
            log.warning(
                "outbox_no_ack", publisher=self.publisher, error=str(exc) or type(exc).__name__
            )
        self._failures += 1
        s = self.settings
        backoff = min(s.retry_max_s, s.retry_initial_s * 2 ** min(self._failures, 16))
        self._retry_at = max(self._retry_at, self._clock() + backoff)
