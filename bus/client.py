"""The bus: typed publish/subscribe over NATS, the JetStream event log and the KV bucket.

Shells use one :class:`Bus` per process. Payloads are msgspec Structs from
``voltana.schemas`` encoded as msgpack; a payload that fails strict decoding is
counted (per subject and error kind), logged once with the subject and msgspec's
error path, and dropped: it never kills the subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter as PromCounter
from voltana.bus.jsstate import Ensured, StreamLimits, open_config_bucket
from voltana.bus.jsstate import ensure_event_stream as _ensure_event_stream
from voltana.bus.options import BusOptions, backoff_s, tls_context
from voltana.bus.outbox import Outbox
from voltana.common.errors import BusError
from voltana.common.guard import LogThrottle
from voltana.common.logs import get_logger
from voltana.schemas import codec, subjects
from voltana.schemas.delivery import KEEP, RETRY_HEADER, delivery_of

T = TypeVar("T")

log = get_logger("bus")

DECODE_ERRORS = PromCounter(
    "voltana_bus_decode_errors",
    "Bus payloads dropped because they failed strict decoding, per subscription",
    ["subject", "kind"],  # subject: the subscription's pattern, never the sender's subject
)
PUBLISHED = PromCounter("voltana_bus_published", "Messages published on the bus", ["kind"])
RECEIVED = PromCounter("voltana_bus_received", "Messages received and decoded", ["kind"])


__all__ = ["Bus", "BusOptions", "StreamLimits", "backoff_s"]


Handler = Callable[[T, str], Awaitable[None] | None]
"""A subscriber callback: ``handler(message, subject)``; may be sync or async."""


class Bus:
    """A connected NATS client with typed publish/subscribe, JetStream and KV helpers."""

    def __init__(self, nc: NatsClient, opts: BusOptions) -> None:
        self.nc = nc
        self.opts = opts
        self.decode_errors: Counter[tuple[str, str]] = Counter()
        self.published = 0
        self.received = 0
        self._js: JetStreamContext | None = None
        self._log_throttle = LogThrottle()
        self._closing = False
        self._on_disconnect: list[Callable[[], Awaitable[None] | None]] = []
        self._on_reconnect: list[Callable[[], Awaitable[None] | None]] = []
        self.publisher_id = f"{opts.name}-{secrets.token_hex(4)}"
        self.outbox = Outbox(
            self._send_kept,
            self.publisher_id,
            bus_name=opts.name,
            settings=opts.outbox,
            stream_exists=self._event_log_exists,
        )

    # -- connection -------------------------------------------------------

    @classmethod
    async def connect(cls, opts: BusOptions | None = None, **overrides: Any) -> Bus:
        """Connect to NATS.

        Raises:
            BusError: no server answered, or the server refused our credentials.
        """
        opts = opts or BusOptions()
        if overrides:
            opts = msgspec.structs.replace(opts, **overrides)
        rng = random.Random()
        holder: dict[str, Bus] = {}
        first_error: list[BaseException] = []

        def pick(servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
            server = min(servers, key=lambda s: s.reconnects)
            return server, backoff_s(
                server.reconnects, opts.reconnect_initial_s, opts.reconnect_max_s, rng
            )

        async def on_error(exc: Exception) -> None:
            if not holder:
                first_error.append(exc)
            log.warning("nats_error", error=str(exc) or type(exc).__name__)

        async def on_disconnect() -> None:
            if holder and holder["bus"]._closing:
                return
            log.warning("nats_disconnected")
            if holder:
                await holder["bus"]._fire(holder["bus"]._on_disconnect)

        async def on_reconnect() -> None:
            log.info(
                "nats_reconnected",
                server=str(nc.connected_url.netloc) if nc.connected_url else None,
            )
            if holder:
                await holder["bus"]._fire(holder["bus"]._on_reconnect)

        kwargs: dict[str, Any] = dict(
            servers=opts.servers,
            name=opts.name,
            connect_timeout=opts.connect_timeout_s,
            allow_reconnect=opts.allow_reconnect,
            # bounded while connecting for the first time; opts' value once connected
            max_reconnect_attempts=max(1, opts.connect_attempts),
            reconnect_time_wait=opts.reconnect_initial_s,
            reconnect_to_server_handler=pick,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            inbox_prefix=opts.inbox_prefix,
        )
        if opts.user is not None:
            kwargs.update(user=opts.user, password=opts.password or "")
        if opts.token is not None:
            kwargs["token"] = opts.token
        if opts.creds_file:
            kwargs["user_credentials"] = opts.creds_file
        if opts.nkeys_seed_file:
            kwargs["nkeys_seed"] = opts.nkeys_seed_file
        tls = tls_context(opts)
        if tls is not None:
            kwargs["tls"] = tls
            if opts.tls_hostname:
                kwargs["tls_hostname"] = opts.tls_hostname
        nc = NatsClient()
        try:
            await nc.connect(**kwargs)
        except Exception as exc:
            reason = " ".join(str(e) for e in [*first_error, exc] if str(e)) or type(exc).__name__
            if "authorization" in reason.lower() or "authentication" in reason.lower():
                msg = f"NATS server refused the credentials ({reason.strip()})"
            else:
                msg = f"cannot connect to NATS at {', '.join(opts.servers)}: {reason.strip()}"
            with contextlib.suppress(Exception):
                await nc.close()
            raise BusError(msg, servers=opts.servers) from exc
        nc.options["max_reconnect_attempts"] = opts.max_reconnect_attempts
        bus = cls(nc, opts)
        holder["bus"] = bus
        return bus

    async def _fire(self, callbacks: list[Callable[[], Awaitable[None] | None]]) -> None:
        for cb in list(callbacks):
            try:
                result = cb()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("bus_callback_failed")

    def on_disconnect(self, cb: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``cb`` whenever the connection to NATS is lost."""
        self._on_disconnect.append(cb)

    def on_reconnect(self, cb: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``cb`` whenever the connection is re-established."""
        self._on_reconnect.append(cb)

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Flush what is pending and close (drain)."""
        if self.nc.is_closed:
            return
        self._closing = True
        # wait for the stream's acks only while they can come
        await self.outbox.close(self.opts.outbox_close_timeout_s if self.nc.is_connected else 0.0)
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=2.0)
        except Exception:
            await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- publish / subscribe ----------------------------------------------

    async def publish(
        self, subject: str, msg: msgspec.Struct, *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish one message (msgpack); never waits for the network.

        A KEEP event (``schemas.delivery``) goes through the outbox: JetStream with
        an ack and a message id, re-sent until the stream has it. Anything else is
        one plain NATS message, buffered while disconnected (nats-py's pending buffer).
        """
        data = codec.encode(msg)
        self.published += 1
        PUBLISHED.labels(type(msg).__name__).inc()
        if headers is None and delivery_of(subject) == KEEP and self.outbox.accepts():
            self.outbox.put(subject, data)
            return
        await self.nc.publish(subject, data, headers=headers)

    async def _send_kept(
        self, subject: str, data: bytes, headers: dict[str, str], timeout_s: float
    ) -> bool:
        ack = await self.js.publish(subject, data, timeout=timeout_s, headers=headers)
        return bool(ack.duplicate)

    async def _event_log_exists(self) -> bool:
        try:
            await self.js.stream_info(subjects.STREAM_NAME)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def subscribe(
        self,
        subject: str,
        typ: Any,
        handler: Callable[[Any, str], Awaitable[None] | None],
        *,
        queue: str = "",
    ) -> Subscription:
        """Subscribe with strict decoding into ``typ`` (a Struct or a tagged union).

        Payloads that fail to decode are counted in ``decode_errors[(subject, kind)]``
        (``subject`` as subscribed, wildcards and all), logged with the error path
        (rate-limited), and dropped; the subscription keeps going. An exception
        raised by ``handler`` is logged (rate-limited) and does not end it.
        """
        dec = codec.decoder(typ)
        kind = getattr(typ, "__name__", str(typ))

        async def cb(m: Msg) -> None:
            if m.headers and RETRY_HEADER in m.headers:
                return  # a re-sent KEEP event: the first copy was delivered already
            # counted per subscription pattern (bounded), logged once per pattern and kind
            # per interval: a flood of garbage on many subjects makes a few lines, no series
            try:
                value = dec.decode(m.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                err_kind = "validation" if isinstance(exc, msgspec.ValidationError) else "decode"
                self.decode_errors[(subject, err_kind)] += 1
                DECODE_ERRORS.labels(subject, err_kind).inc()
                suppressed = self._log_throttle.allow((subject, err_kind))
                if suppressed is not None:
                    log.warning(
                        "bus_payload_dropped",
                        subject=m.subject[:200],
                        kind=err_kind,
                        error=str(exc)[:500],
                        suppressed=suppressed,
                    )
                return
            self.received += 1
            RECEIVED.labels(kind).inc()
            try:
                result = handler(value, m.subject)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:
                suppressed = self._log_throttle.allow((subject, type(exc).__name__))
                if suppressed is not None:
                    log.exception(
                        "bus_handler_failed", subject=m.subject[:200], suppressed=suppressed
                    )

        sub = await self.nc.subscribe(subject, queue=queue, cb=cb)
        await self._flush_interest()
        return sub

    async def _flush_interest(self) -> None:
        """Round-trip to the server so a subscription is live before we return."""
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)

    async def subscribe_raw(
        self, subject: str, handler: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        """Subscribe without decoding (tools such as ``voltana tail``); skips re-sent copies."""

        async def cb(m: Msg) -> None:
            if not (m.headers and RETRY_HEADER in m.headers):
                await handler(m)

        sub = await self.nc.subscribe(subject, cb=cb)
        await self._flush_interest()
        return sub

    def decode_error_total(self) -> int:
        return sum(self.decode_errors.values())

    # -- JetStream event log ----------------------------------------------

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def ensure_event_stream(
        self, limits: StreamLimits | None = None, *, apply: bool = False
    ) -> Ensured:
        """Create the stream that keeps every ``voltana.>`` event; never downgrades one.

        An existing stream keeps its settings; what differs is in ``Ensured.mismatches``
        (``apply=True`` changes limits and raises replicas, see ``bus.jsstate``).
        """
        return await _ensure_event_stream(self.js, limits, apply=apply)

    async def publish_persistent(
        self, subject: str, msg: msgspec.Struct, *, msg_id: str | None = None
    ) -> bool:
        """Publish through JetStream and wait for the ack; ``msg_id`` deduplicates retries.

        Returns False when the server recognised the message as a duplicate.
        """
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(subject, codec.encode(msg), headers=headers)
        self.published += 1
        return not ack.duplicate

    # -- KV ---------------------------------------------------------------

    async def kv(self, bucket: str = subjects.KV_BUCKET) -> KeyValue:
        """Open the KV bucket, creating it on first use with the event log's replica count."""
        return await open_config_bucket(self.js, bucket)

    async def kv_put_json(
        self, key: str, value: msgspec.Struct, *, bucket: str = subjects.KV_BUCKET
    ) -> int:
        """Store a Struct as JSON under ``key`` (human-editable with the nats CLI)."""
        kv = await self.kv(bucket)
        return await kv.put(key, codec.to_json(value))

    async def kv_get_json(
        self, key: str, typ: type[T], *, bucket: str = subjects.KV_BUCKET
    ) -> T | None:
        """Read a Struct stored as JSON; None when the key does not exist."""
        kv = await self.kv(bucket)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return codec.from_json(entry.value, typ)
