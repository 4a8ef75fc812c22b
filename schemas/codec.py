"""Wire encoding (msgpack) and a JSON rendering for humans.

Shells build one Decoder per message type at start-up (:func:`decoder`) and
reuse it; decoding is strict: a payload that does not match raises
``msgspec.ValidationError`` / ``msgspec.DecodeError`` with the path that failed.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def encode(msg: Any) -> bytes:
    """Encode a message for the wire (msgpack)."""
    return _encoder.encode(msg)


@functools.cache
def decoder(typ: Any) -> msgspec.msgpack.Decoder[Any]:
    """The cached msgpack decoder for ``typ`` (a Struct or a tagged union)."""
    return msgspec.msgpack.Decoder(typ)


def decode(data: bytes, typ: Any) -> Any:
    """Decode one wire payload strictly as ``typ``."""
    return decoder(typ).decode(data)


def to_json(msg: Any) -> bytes:
    """Render a message as one JSON object (struct tags included)."""
    return _json_encoder.encode(msg)


def from_json(data: bytes | str, typ: Any) -> Any:
    """Parse the JSON rendering back into ``typ``."""
    return msgspec.json.decode(data, type=typ)
