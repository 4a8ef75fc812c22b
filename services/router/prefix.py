"""What a client request's prompt is made of, for cache-aware routing: its prefix keys.

sglang-router's approximate tree works on the request text's characters; this one
keys blocks of ``BLOCK_CHARS`` characters (``input_ids``: blocks of
``BLOCK_TOKENS`` ids), which is that tree at block granularity. Chat messages are
joined with their roles, so a conversation's next turn extends its previous text.
"""

from __future__ import annotations

from typing import Any

from voltana.common.prefix_keys import chain_token_keys, packed_token_keys, text_block_keys
from voltana.services.router.protocol import CHARS_PER_TOKEN

__all__ = ["BLOCK_CHARS", "BLOCK_TOKENS", "prompt_prefix"]

BLOCK_TOKENS = 16
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN
_MAX_CHARS = 256 * 1024  # keys for at most this much text (bounded work per request)
_INT_TYPES = frozenset({int, bool})  # what isinstance(t, int) accepts from decoded JSON


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _chat_text(messages: list[Any]) -> str:
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content", "")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{m.get('role', '')}|>{content}")
    return "".join(parts)


def prompt_prefix(body: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """(prefix keys, tokens per key) of a /generate, completions or chat body; ((), 0) if none.

    A batch is keyed by its first prompt (the router places a batch as one request).
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        return text_block_keys(_chat_text(messages)[:_MAX_CHARS], BLOCK_CHARS), BLOCK_TOKENS
    ids = body.get("input_ids")
    if isinstance(ids, list) and ids:
        first = _first(ids) if isinstance(ids[0], list) else ids
        if isinstance(first, list):
            # token ids in [0, 2^64) (all real ones): checked and packed in one call
            keys = packed_token_keys(first, BLOCK_TOKENS, _MAX_CHARS)
            if keys is not None:
                return keys, BLOCK_TOKENS
            if set(map(type, first)) <= _INT_TYPES:  # negative or huge ids: masked
                return chain_token_keys(first[:_MAX_CHARS], BLOCK_TOKENS), BLOCK_TOKENS
    text = body.get("text", body.get("prompt"))
    text = _first(text)
    if isinstance(text, str) and text:
        return text_block_keys(text[:_MAX_CHARS], BLOCK_CHARS), BLOCK_TOKENS
    return (), 0
