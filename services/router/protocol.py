"""SGLang's PD dispatch protocol as pure functions: what the router adds and reads.

No I/O here: request bodies in, bodies out; stream bytes in, event counts out.
Facts from sglang 0.4.7 / 0.5.23 and sglang-router 0.1.5 (see docs/router.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "DONE_EVENT",
    "RequestInfo",
    "SseScanner",
    "add_bootstrap",
    "as_error_body",
    "bootstrap_host",
    "error_body",
    "error_event",
    "inspect_request",
    "merge_logprobs",
]

MAX_ROOM = (1 << 63) - 1
FAKE_BOOTSTRAP_HOST = "2.2.2.2"
DONE_EVENT = b"data: [DONE]\n\n"
DEFAULT_MAX_NEW_TOKENS = 128
CHARS_PER_TOKEN = 4

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


class ProtocolError(ValueError):
    """A request body the router cannot dispatch (answered with 400)."""


def bootstrap_host(url: str) -> str:
    """The hostname of a worker URL: no scheme, no port (what SGLang expects)."""
    host = urlsplit(url).hostname
    if not host:
        raise ProtocolError(f"worker URL without a host: {url!r}")
    return host


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the router needs to know about one client request before dispatching it."""

    stream: bool
    batch_size: int | None  # None = single request (scalar bootstrap fields)
    input_tokens: int
    max_new_tokens: int
    return_logprob: bool


def _text_tokens(value: Any) -> int:
    """Rough prompt size in tokens from text (about 4 characters per token)."""
    if isinstance(value, str):
        return max(1, math.ceil(len(value) / CHARS_PER_TOKEN))
    if isinstance(value, list):
        if value and isinstance(value[0], int):  # token ids
            return len(value)
        return sum(_text_tokens(x) for x in value)
    if isinstance(value, dict):
        return _text_tokens(value.get("content") or value.get("text") or "")
    return 0


def _batch_size(path: str, body: dict[str, Any]) -> int | None:
    """Items in a batch request, or None for a single request.

    ``/generate`` is a batch when ``text`` is a list, or ``input_ids`` is a list of
    lists; the OpenAI routes when they ask for more than one choice: ``n > 1``, or
    (``/v1/completions``) a list of strings or of id lists as ``prompt`` (prompts x n).
    """
    if path.endswith("/generate"):
        text, ids = body.get("text"), body.get("input_ids")
        if isinstance(text, list):
            return len(text)
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            return len(ids)
        return None
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return len(prompt) * n
    return n if n > 1 else None


def inspect_request(path: str, body: Any, *, max_batch: int | None = None) -> RequestInfo:
    """Read stream flag, batch form, prompt size and output budget from a request body.

    Raises:
        ProtocolError: the body is not a JSON object, a batch is empty or has more
            than ``max_batch`` items (chat ``n`` included).
    """
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    batch = _batch_size(path, body)
    if batch is not None and batch < 1:
        raise ProtocolError("empty batch")
    if batch is not None and max_batch is not None and batch > max_batch:
        raise ProtocolError(f"batch of {batch} items is over the limit of {max_batch}")
    sp = body.get("sampling_params")
    max_new: Any = None
    if isinstance(sp, dict):
        max_new = sp.get("max_new_tokens")
    if max_new is None:
        max_new = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(max_new, int) or max_new < 0:
        max_new = DEFAULT_MAX_NEW_TOKENS
    if path.endswith("/generate"):
        tokens = (
            _text_tokens(body["input_ids"])
            if body.get("input_ids") is not None
            else _text_tokens(body.get("text", ""))
        )
    elif path.endswith("/chat/completions"):
        tokens = _text_tokens(body.get("messages") or [])
    else:
        tokens = _text_tokens(body.get("prompt", ""))
    return RequestInfo(
        stream=bool(body.get("stream", False)),
        batch_size=batch,
        input_tokens=max(tokens, 1),
        max_new_tokens=max_new * (batch or 1),
        return_logprob=bool(body.get("return_logprob", False) or body.get("logprobs", False)),
    )


def new_room(rng: random.Random) -> int:
    """A bootstrap room: random int in [0, 2^63-1]."""
    return rng.randint(0, MAX_ROOM)


def add_bootstrap(
    body: dict[str, Any],
    host: str,
    port: int | None,
    rooms: list[int],
    batch_size: int | None,
) -> dict[str, Any]:
    """The body both workers get: the client's fields plus the bootstrap fields.

    Scalar form for a single request; lists (one entry per item) for a batch.
    ``rooms`` must hold ``batch_size or 1`` values.
    """
    out = dict(body)
    if batch_size is None:
        out["bootstrap_host"] = host
        out["bootstrap_port"] = port
        out["bootstrap_room"] = rooms[0]
    else:
        out["bootstrap_host"] = [host] * batch_size
        out["bootstrap_port"] = [port] * batch_size
        out["bootstrap_room"] = list(rooms[:batch_size])
    return out


def encode(obj: Any) -> bytes:
    return _json_encode(obj)


def decode(data: bytes | str) -> Any:
    """Parse JSON; raises ProtocolError with msgspec's message on bad input."""
    try:
        return _json_decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from exc
    except RecursionError:  # msgspec's own guard against deep nesting
        raise ProtocolError("invalid JSON: nested too deeply") from None


def error_body(message: str, *, code: int, kind: str = "router_error") -> bytes:
    """A JSON error body in SGLang's / OpenAI's shape."""
    return _json_encode({"error": {"message": message, "type": kind, "code": code}})


def as_error_body(data: bytes, status: int) -> bytes:
    """A worker's error answer in the router's one shape, ``{"error": {message, type, code}}``.

    SGLang answers ``{"error": {...}}`` on /generate but ``{"object": "error", "message":
    ...}`` on the OpenAI routes, and plain text elsewhere; clients of the router see one.
    """
    try:
        obj = _json_decode(data)
    except msgspec.DecodeError:
        text = data.decode("utf-8", "replace").strip()[:500]
        return error_body(text or f"worker answered {status}", code=status, kind="worker_error")
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return data
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        kind = obj.get("type")
        return error_body(
            obj["message"], code=status, kind=kind if isinstance(kind, str) else "worker_error"
        )
    return error_body(
        f"worker answered {status}: {str(obj)[:500]}", code=status, kind="worker_error"
    )


def error_event(message: str, *, code: int = 502, retryable: bool = False) -> bytes:
    """An SSE error chunk as SGLang sends it (0.5.23 fields included), then ``[DONE]``."""
    payload = {
        "error": {"message": message, "type": "router_error", "code": code, "retryable": retryable}
    }
    return b"data: " + _json_encode(payload) + b"\n\n" + DONE_EVENT


class SseScanner:
    """Counts SSE events in a byte stream as it passes through, keeping the last data event.

    Feed raw chunks in arrival order; ``feed`` returns the number of complete
    ``data:`` events (``[DONE]`` excluded) the chunk finished. Error chunks are
    remembered so the router can record the request as failed.
    """

    __slots__ = ("_buf", "events", "last_data", "saw_done", "saw_error")

    def __init__(self) -> None:
        self._buf = b""
        self.events = 0
        self.last_data: bytes | None = None
        self.saw_done = False
        self.saw_error = False

    def feed(self, chunk: bytes) -> int:
        buf = self._buf + chunk if self._buf else chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return 0
        # every event now follows a blank line; JSON escapes newlines, so text cannot fake one
        done = b"\n\n" + buf[:cut]
        self._buf = buf[cut + 2 :]
        # byte scans in C instead of a split per event: this runs for every chunk streamed
        n = done.count(b"\n\ndata:")
        n_done = done.count(b"\n\ndata: [DONE]")
        if n_done:
            self.saw_done = True
            n -= n_done
        if b'{"error"' in done:
            self.saw_error = True
        pos = len(done)
        while n:
            i = done.rfind(b"\n\ndata:", 0, pos)
            ev = done[i + 7 : pos].strip()
            if ev != b"[DONE]":
                self.last_data = ev
                break
            pos = i
        self.events += n
        return n


def completion_tokens(obj: Any) -> int | None:
    """Output tokens reported in a final SGLang / OpenAI response object (or list of them)."""
    if isinstance(obj, list):
        vals = [completion_tokens(x) for x in obj]
        return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None
    if not isinstance(obj, dict):
        return None
    meta = obj.get("meta_info")
    if isinstance(meta, dict) and isinstance(meta.get("completion_tokens"), int):
        return int(meta["completion_tokens"])
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


def merge_logprobs(prefill: Any, decode_obj: Any) -> Any:
    """Prepend the prefill's ``meta_info.input_token_logprobs`` to the decode's (per item)."""
    if isinstance(prefill, list) and isinstance(decode_obj, list):
        return [merge_logprobs(p, d) for p, d in zip(prefill, decode_obj, strict=False)]
    if not (isinstance(prefill, dict) and isinstance(decode_obj, dict)):
        return decode_obj
    pm, dm = prefill.get("meta_info"), decode_obj.get("meta_info")
    if not (isinstance(pm, dict) and isinstance(dm, dict)):
        return decode_obj
    pl = pm.get("input_token_logprobs")
    if isinstance(pl, list):
        dl = dm.get("input_token_logprobs")
        dm = {**dm, "input_token_logprobs": pl + (dl if isinstance(dl, list) else [])}
        return {**decode_obj, "meta_info": dm}
    return decode_obj
