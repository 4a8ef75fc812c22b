"""Bounds on what a client may send, checked before a request reaches the workers.

Pure functions on a decoded JSON body. Each bound is a router setting
(``max_json_depth``, ``max_batch_items``; see ``RouterConfig``) so that one
small request cannot make the router build millions of objects (``n=10**7``)
or recurse without end (``[[[[...]]]]``). Field types are checked where a wrong
type would change what the router does (``"stream": "false"`` is not a stream).
"""

from __future__ import annotations

from typing import Any

from voltana.services.router.protocol import (
    ProtocolError,
    RequestInfo,
    decode,
    inspect_request,
)

__all__ = ["check_depth", "check_fields", "parse_request"]


def check_depth(obj: Any, max_depth: int) -> None:
    """Raise ProtocolError when ``obj`` nests lists/objects deeper than ``max_depth``."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise ProtocolError(f"JSON nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_INT_ONLY = frozenset({int})
_STR_ONLY = frozenset({str})


def _all_ints(v: list[Any]) -> bool:
    """Every item an int, not a bool: one pass in C (``map``/``set``), as prompts are long."""
    return set(map(type, v)) <= _INT_ONLY


def _str_or_strs(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and set(map(type, v)) <= _STR_ONLY)


def _ids_or_batch(v: Any) -> bool:
    if not isinstance(v, list):
        return False
    if v and isinstance(v[0], list):
        return all(isinstance(x, list) and _all_ints(x) for x in v)
    return _all_ints(v)


def _type_error(field: str, want: str) -> ProtocolError:
    return ProtocolError(f"'{field}' must be {want}")


def check_fields(path: str, body: dict[str, Any]) -> None:
    """Check the types of the fields the router reads; raise ProtocolError on a wrong one."""
    for flag in ("stream", "return_logprob", "logprobs"):
        v = body.get(flag)
        if v is not None and not isinstance(v, bool):
            raise _type_error(flag, "true or false")
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is not None and not (_is_int(v) and v >= 0):
            raise _type_error(name, "a non-negative integer")
    sp = body.get("sampling_params")
    if sp is not None and not isinstance(sp, dict | list):
        raise _type_error("sampling_params", "an object (or a list of objects)")
    if path.endswith("/generate"):
        text, ids = body.get("text"), body.get("input_ids")
        if text is not None and not _str_or_strs(text):
            raise _type_error("text", "a string or a list of strings")
        if ids is not None and not _ids_or_batch(ids):
            raise _type_error("input_ids", "a list of token ids or a list of such lists")
    elif path.endswith("/chat/completions"):
        msgs = body.get("messages")
        if msgs is not None and not (
            isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs)
        ):
            raise _type_error("messages", "a list of objects")
        n = body.get("n")
        if n is not None and not (_is_int(n) and n >= 1):
            raise _type_error("n", "a positive integer")
    else:
        prompt = body.get("prompt")
        if prompt is not None and not (_str_or_strs(prompt) or _ids_or_batch(prompt)):
            raise _type_error("prompt", "a string, a list of strings or token ids")


def parse_request(
    path: str, raw: bytes, *, max_depth: int, max_batch: int
) -> tuple[dict[str, Any], RequestInfo]:
    """A client's body, decoded and checked, with what dispatch needs to know about it.

    Raises:
        ProtocolError: not JSON, nested deeper than ``max_depth``, a field of the wrong
            type, or a batch (``n`` included) of more than ``max_batch`` items.
    """
    body = decode(raw)
    # a body cannot nest deeper than it has brackets (those in strings only add to the
    # count): most requests skip the walk, a few byte counts in C instead
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        check_depth(body, max_depth)
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    check_fields(path, body)
    return body, inspect_request(path, body, max_batch=max_batch)
