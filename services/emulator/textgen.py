"""Deterministic token counting and filler text of the emulated model (no tokenizer)."""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "EOS_TOKEN_ID",
    "chat_prompt_tokens",
    "chat_token_ids",
    "count_prompt_tokens",
    "filler_ids",
    "filler_text",
    "prompt_token_ids",
]

EOS_TOKEN_ID = 128009  # Llama-3 <|eot_id|>, what SGLang reports in finish_reason.matched
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "energy",
    "meters",
    "tick",
    "and",
    "clocks",
    "settle",
    "near",
    "the",
    "knee",
    "of",
    "the",
    "curve",
    "so",
    "every",
    "token",
    "arrives",
    "in",
    "time",
]


def count_prompt_tokens(prompt: Any) -> int:
    """Tokens of a prompt: len(input_ids), or about one per 4 bytes of text (at least 1)."""
    if isinstance(prompt, list):
        return len(prompt)
    text = str(prompt)
    return max(1, math.ceil(len(text.encode()) / 4))


def chat_prompt_tokens(messages: list[Any]) -> int:
    """Tokens of a chat: content bytes / 4 plus the template's ~4 tokens per message."""
    total = 0
    for m in messages:
        content = m.get("content", "") if isinstance(m, dict) else m
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += count_prompt_tokens(str(content)) + 4
    return max(1, total)


def prompt_token_ids(prompt: Any) -> list[int]:
    """Deterministic token ids of a prompt, consistent with ``count_prompt_tokens``.

    ``input_ids`` are taken as they are; text becomes one id per 4 bytes of UTF-8
    (the last piece zero-padded), so equal leading text gives equal leading ids and
    the prefix cache matches it as SGLang's would after a real tokenizer.
    """
    if isinstance(prompt, list):
        return [int(t) if isinstance(t, int) else hash_piece(str(t).encode()) for t in prompt]
    data = str(prompt).encode()
    if not data:
        return [0]
    return [hash_piece(data[i : i + 4]) for i in range(0, len(data), 4)]


def hash_piece(piece: bytes) -> int:
    """A 4-byte piece of text as a token id (its bytes, little-endian, below 2**32)."""
    return int.from_bytes(piece[:4].ljust(4, b"\0"), "little")


def chat_token_ids(messages: list[Any]) -> list[int]:
    """Token ids of a chat, one template header of 4 ids per message (as ``chat_prompt_tokens``)."""
    ids: list[int] = []
    for m in messages:
        role = str(m.get("role", "")) if isinstance(m, dict) else ""
        content = m.get("content", "") if isinstance(m, dict) else m
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        ids.extend(hash_piece(f"<|{role}|>".encode()[i : i + 4]) for i in range(0, 16, 4))
        ids.extend(prompt_token_ids(str(content)))
    return ids or [0]


_PIECES = [" " + w for w in _WORDS]
_CYCLE = "".join(_PIECES)
_OFFSETS = [0]
for _p in _PIECES:
    _OFFSETS.append(_OFFSETS[-1] + len(_p))


def _offset(i: int) -> int:
    q, r = divmod(i, len(_WORDS))
    return q * len(_CYCLE) + _OFFSETS[r]


def filler_text(start: int, end: int) -> str:
    """Text of output tokens ``start`` .. ``end``-1 (one word each, with a leading space)."""
    if end <= start:
        return ""
    a, b = _offset(start), _offset(end)
    reps = b // len(_CYCLE) + 1
    return (_CYCLE * reps)[a:b] if reps > 1 else _CYCLE[a:b]


def filler_ids(start: int, end: int) -> list[int]:
    return [1000 + (i % len(_WORDS)) for i in range(start, end)]
