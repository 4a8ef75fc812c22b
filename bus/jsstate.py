"""The JetStream state voltana creates: the event-log stream and the config KV bucket.

Creation never downgrades: an existing stream or bucket keeps its replicas and
limits, and every setting that differs from the one asked for is reported as a
mismatch. ``apply=True`` (``voltana nats init --apply``) changes the limits
that differ and raises replicas, but never lowers them: fewer copies of the log
is a decision for an operator with the nats CLI, not a side effect of a start.

The limits keep the log's promise: a message larger than ``max_msg_size`` is
refused (one runaway publisher can no longer push the log out with a few big
messages), ``max_msgs_per_subject`` bounds what any single subject may hold,
and ``max_bytes`` is sized from the message rate (:func:`size_max_bytes`) so
``max_age_s`` is what actually bounds the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.kv import KeyValue
from voltana.common.errors import BusError
from voltana.schemas import subjects

T = TypeVar("T")

BYTES_PER_EVENT = 400
"""Stored bytes per event, measured: one idle node with three instances wrote 138
events/s and filled 1 GiB in 5.5 h (1 GiB / (138/s x 19,800 s) = 393 B)."""

EVENTS_PER_S = 150.0
"""Default sizing rate: about one idle node with three instances (138 events/s measured)."""


def size_max_bytes(events_per_s: float, max_age_s: float, *, headroom: float = 1.25) -> int:
    """Bytes the log needs to hold ``max_age_s`` of events at ``events_per_s``."""
    return math.ceil(events_per_s * max_age_s * BYTES_PER_EVENT * headroom)


class StreamLimits(msgspec.Struct, kw_only=True):
    """Settings of the event-log stream (limits retention, discard old).

    ``max_bytes`` -1 sizes the store from ``events_per_s`` and ``max_age_s``;
    ``max_msgs_per_subject`` -1 allows one subject 24 h at 25 messages/s (the
    fastest designed subject, GPU telemetry, runs at 20 Hz).
    """

    max_age_s: float = 24 * 3600.0
    max_bytes: int = -1
    events_per_s: float = EVENTS_PER_S
    max_msgs: int = -1
    max_msg_size: int = 64 * 1024
    max_msgs_per_subject: int = -1
    replicas: int = 1
    storage: str = "file"
    duplicate_window_s: float = 120.0

    def resolved_max_bytes(self) -> int:
        if self.max_bytes > 0:
            return self.max_bytes
        return size_max_bytes(self.events_per_s, self.max_age_s)

    def resolved_per_subject(self) -> int:
        if self.max_msgs_per_subject > 0:
            return self.max_msgs_per_subject
        return int(25 * self.max_age_s)


class BucketSettings(msgspec.Struct, kw_only=True):
    """Settings of the configuration KV bucket."""

    replicas: int = 1
    history: int = 5
    max_value_size: int = 64 * 1024


@dataclass
class Ensured:
    """What ensuring a stream or bucket found and did."""

    name: str
    created: bool = False
    updated: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    replicas: int = 1

    def summary(self) -> str:
        if self.created:
            return f"{self.name}: created with {self.replicas} replica(s)"
        parts = [f"{self.name}: exists with {self.replicas} replica(s)"]
        if self.updated:
            parts.append("updated " + ", ".join(self.updated))
        if self.mismatches:
            parts.append("left as is: " + "; ".join(self.mismatches))
        return ", ".join(parts)


def stream_config(limits: StreamLimits, name: str = subjects.STREAM_NAME) -> StreamConfig:
    """The event-log stream's configuration for ``limits``."""
    return StreamConfig(
        name=name,
        subjects=[subjects.ALL],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=limits.max_age_s,
        max_bytes=limits.resolved_max_bytes(),
        max_msgs=limits.max_msgs,
        max_msg_size=limits.max_msg_size,
        max_msgs_per_subject=limits.resolved_per_subject(),
        num_replicas=limits.replicas,
        storage=StorageType.FILE if limits.storage == "file" else StorageType.MEMORY,
        duplicate_window=limits.duplicate_window_s,
    )


_COMPARED = (
    "max_age",
    "max_bytes",
    "max_msgs",
    "max_msg_size",
    "max_msgs_per_subject",
    "duplicate_window",
)


def _differences(have: StreamConfig, want: StreamConfig, fields: tuple[str, ...]) -> list[str]:
    out = []
    for f in fields:
        a, b = getattr(have, f), getattr(want, f)
        both = a is not None and b is not None
        if both and isinstance(a, float | int) and math.isclose(a, b, rel_tol=1e-9):
            continue
        if a != b:
            out.append(f"{f} {a} (asked {b})")
    return out


class JetStreamNotReady(BusError):
    """JetStream did not answer yet (a cluster electing its leaders): worth retrying."""


_NOT_ENABLED = {10039, 10076}  # JetStream not enabled (for the account)


def _unavailable(name: str, exc: Exception) -> BusError:
    code = getattr(exc, "err_code", None)
    if isinstance(exc, nats.js.errors.ServiceUnavailableError) and code in _NOT_ENABLED:
        return BusError("JetStream is not enabled on the NATS server")
    return JetStreamNotReady(f"JetStream did not answer about {name} yet ({exc})")


def _refused(name: str, replicas: int, exc: nats.js.errors.APIError) -> BusError:
    text = f"cannot create {name} with {replicas} replica(s): {exc.description or exc}"
    if "no suitable peers" in str(exc.description or "").lower():
        # a cluster still forming knows fewer peers than the replicas asked for
        return JetStreamNotReady(text + " (are all nodes up and routed to each other?)")
    return BusError(text)


_NOT_READY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


async def until_ready(
    call: Callable[[], Awaitable[T]], what: str, wait_s: float, pause_s: float = 0.5
) -> T:
    """``call()``, again while JetStream cannot answer yet (a cluster electing its stream
    or meta leader), for up to ``wait_s`` seconds.

    Raises:
        JetStreamNotReady: JetStream still did not answer after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await call()
        except JetStreamNotReady:
            if time.monotonic() > deadline:
                raise
        except _NOT_READY as exc:
            if time.monotonic() > deadline:
                raise _unavailable(what, exc) from exc
        await asyncio.sleep(pause_s)


async def stream_info_or_none(js: JetStreamContext, name: str) -> StreamInfo | None:
    """The stream's info, None when it does not exist.

    Raises:
        JetStreamNotReady: JetStream could not answer (no leader yet); worth retrying.
        BusError: JetStream is not enabled.
    """
    try:
        return await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return None
    except _NOT_READY as exc:
        raise _unavailable(name, exc) from exc


async def event_stream_info(js: JetStreamContext, wait_s: float) -> StreamInfo:
    """The event log's info for a reader (replay, report), riding out a leader election
    for up to ``wait_s`` seconds.

    Raises:
        BusError: the stream does not exist, or JetStream did not answer in time.
    """
    name = subjects.STREAM_NAME
    info = await until_ready(lambda: stream_info_or_none(js, name), name, wait_s)
    if info is None:
        raise BusError(f"no {name} event stream on the server (voltana nats init creates it)")
    return info


async def read_event_log(
    js: JetStreamContext, subject: str, config: ConsumerConfig, wait_s: float
) -> JetStreamContext.PushSubscription:
    """An ordered consumer on the event log for ``subject``; its creation (made by the
    cluster's meta leader) is retried through a leader election for up to ``wait_s``."""
    name = subjects.STREAM_NAME
    return await until_ready(
        lambda: js.subscribe(subject, stream=name, ordered_consumer=True, config=config),
        name,
        wait_s,
    )


async def _ensure(
    js: JetStreamContext, want: StreamConfig, fields: tuple[str, ...], *, apply: bool
) -> Ensured:
    name = str(want.name)
    want_r = want.num_replicas or 1
    info = await stream_info_or_none(js, name)
    if info is None:
        try:
            await js.add_stream(want)
        except _NOT_READY as exc:
            raise _unavailable(name, exc) from exc
        except nats.js.errors.APIError as exc:
            raise _refused(name, want_r, exc) from exc
        return Ensured(name, created=True, replicas=want_r)
    have = info.config
    have_r = have.num_replicas or 1
    out = Ensured(name, replicas=have_r)
    diffs = _differences(have, want, fields)
    if have.subjects != want.subjects and want.subjects is not None:
        out.mismatches.append(f"subjects {have.subjects} (asked {want.subjects})")
    raise_r = apply and want_r > have_r
    if want_r != have_r and not raise_r:
        why = "never lowered" if want_r < have_r else "raise with --apply"
        out.mismatches.append(f"replicas {have_r} (asked {want_r}; {why})")
    if not apply:
        out.mismatches.extend(diffs)
        return out
    if diffs or raise_r:
        changes = {f: getattr(want, f) for f in fields}
        cfg = dataclasses.replace(have, **changes, num_replicas=max(want_r, have_r))
        try:
            await js.update_stream(cfg)
        except nats.js.errors.APIError as exc:
            out.mismatches.append(f"update refused: {exc}")
            return out
        out.updated = [d.split(" ", 1)[0] for d in diffs] + (["replicas"] if raise_r else [])
        out.replicas = max(want_r, have_r)
    return out


async def ensure_event_stream(
    js: JetStreamContext, limits: StreamLimits | None = None, *, apply: bool = False
) -> Ensured:
    """Create the stream that keeps every ``voltana.>`` event, or report how it differs."""
    return await _ensure(js, stream_config(limits or StreamLimits()), _COMPARED, apply=apply)


def bucket_stream_config(bucket: str, settings: BucketSettings) -> StreamConfig:
    """The stream behind the KV bucket, as nats-py's ``create_key_value`` would build it."""
    return StreamConfig(
        name=f"KV_{bucket}",
        max_msgs_per_subject=settings.history,
        max_msg_size=settings.max_value_size,
        num_replicas=settings.replicas,
    )


async def ensure_config_bucket(
    js: JetStreamContext,
    settings: BucketSettings | None = None,
    *,
    bucket: str = subjects.KV_BUCKET,
    apply: bool = False,
) -> Ensured:
    """Create the configuration KV bucket, or report how it differs (never lowering replicas)."""
    s = settings or BucketSettings()
    info = await stream_info_or_none(js, f"KV_{bucket}")
    if info is None:
        cfg = KeyValueConfig(
            bucket=bucket, history=s.history, replicas=s.replicas, max_value_size=s.max_value_size
        )
        try:
            await js.create_key_value(cfg)
        except _NOT_READY as exc:
            raise _unavailable(bucket, exc) from exc
        except nats.js.errors.APIError as exc:
            raise _refused(f"bucket {bucket}", s.replicas, exc) from exc
        return Ensured(bucket, created=True, replicas=s.replicas)
    want = bucket_stream_config(bucket, s)
    out = await _ensure(js, want, ("max_msgs_per_subject", "max_msg_size"), apply=apply)
    out.name = bucket
    return out


async def open_config_bucket(js: JetStreamContext, bucket: str = subjects.KV_BUCKET) -> KeyValue:
    """Open the KV bucket; create it when missing with as many replicas as the event log has.

    A service that creates the bucket on first use thus follows the durability the
    operator chose for the stream (``voltana nats init``) instead of one replica.
    """
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    stream = await stream_info_or_none(js, subjects.STREAM_NAME)
    replicas = (stream.config.num_replicas or 1) if stream is not None else 1
    await ensure_config_bucket(js, BucketSettings(replicas=replicas), bucket=bucket)
    return await js.key_value(bucket)
