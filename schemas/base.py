"""The common base of every bus message: schema version and timestamp."""

from __future__ import annotations

import time
from typing import Literal

import msgspec

SCHEMA_VERSION = 1
"""Bumped only on an incompatible change; additive fields keep the version."""

Role = Literal["prefill", "decode", "unified"]
"""What an SGLang instance serves: PD prefill, PD decode, or both (colocated)."""


def now_ns() -> int:
    """Wall-clock time in Unix nanoseconds, the unit of every ``t_ns`` field."""
    return time.time_ns()


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of all bus messages.

    ``t_ns`` is when the sender produced the message (Unix ns, wall clock);
    ``v`` is the schema version the sender wrote.
    """

    t_ns: int
    v: int = SCHEMA_VERSION
