"""The common base of every bus message: schema version and timestamp."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1
"""Bumped only on an incompatible change; additive fields keep the version."""

Role = Literal["prefill", "decode", "unified"]
"""What an SGLang instance serves: PD prefill, PD decode, or both (colocated)."""


NAME_PATTERN = r"^[A-Za-z0-9_-]+\Z"
"""A name that is also a subject token: ASCII letters, digits, ``-`` and ``_``."""
MAX_NAME_CHARS = 128
MAX_TEXT_CHARS = 4096
MAX_COUNT = 1 << 40
"""Above any real count of requests, tokens or sequence numbers a sender may report."""

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, max_length=MAX_NAME_CHARS)]
"""An instance, node or issuer name: checked when a message is decoded."""
OptName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]*\Z", max_length=MAX_NAME_CHARS)]
"""A name that may be empty (``issued_by`` of an anonymous sender)."""
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
"""Free text on the bus (reasons, errors, URLs): bounded in length."""
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
"""A non-negative count of requests or tokens, or a sequence number."""
GpuIndex = Annotated[int, msgspec.Meta(ge=0, le=1023)]
Version = Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)]
"""A schema version this code can read: a newer, incompatible one fails decoding."""


def now_ns() -> int:
    """Wall-clock time in Unix nanoseconds, the unit of every ``t_ns`` field."""
    return time.time_ns()


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of all bus messages.

    ``t_ns`` is when the sender produced the message (Unix ns, wall clock);
    ``v`` is the schema version the sender wrote.
    """

    t_ns: int
    v: Version = SCHEMA_VERSION
