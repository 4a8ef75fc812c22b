"""Prefix keys: a prompt as a chain of block keys, key ``i`` standing for blocks ``0..i``.

Equal keys mean equal prefixes, so a prefix tree can be stored flat (one entry per
key). The engine's cache (``groundtruth.prefix_cache``) keys token blocks; the
router's approximate tree keys blocks of request text, as sglang-router's tree
works on characters. Keys are 63-bit ints from BLAKE2b (stable across processes
and runs, unlike ``hash()``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from hashlib import blake2b

__all__ = ["chain_keys", "chain_token_keys", "packed_token_keys", "text_block_keys"]

_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def _chain(blocks: Iterable[bytes]) -> tuple[int, ...]:
    keys: list[int] = []
    prev = b"\0" * 8
    for block in blocks:
        prev = blake2b(prev + block, digest_size=8).digest()
        keys.append(int.from_bytes(prev, "little") & _MASK63)
    return tuple(keys)


def _chain_packed(packed: bytes, step: int, n: int) -> tuple[int, ...]:
    """``_chain`` of the first ``n`` blocks of ``step`` bytes of ``packed``, without a
    generator per call (the router keys every prompt: this is its hot path)."""
    keys: list[int] = []
    append, from_bytes = keys.append, int.from_bytes
    prev = b"\0" * 8
    for i in range(0, n * step, step):
        prev = blake2b(prev + packed[i : i + step], digest_size=8).digest()
        append(from_bytes(prev, "little") & _MASK63)
    return tuple(keys)


def chain_keys(block_ids: Iterable[int], seed: int = 0) -> tuple[int, ...]:
    """Chain per-block ids (e.g. the Mooncake trace's ``hash_ids``) into prefix keys."""
    head = struct.pack("<Q", seed & _MASK64)
    return _chain(head + struct.pack("<Q", int(b) & _MASK64) for b in block_ids)


def chain_token_keys(token_ids: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """Prefix keys of the full blocks of a token sequence (a partial tail block has none)."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    n = len(token_ids) // block_tokens
    try:  # ids in [0, 2^64) (all real ones): one pack in C, the same bytes as below
        packed = struct.pack(f"<{n * block_tokens}Q", *token_ids[: n * block_tokens])
    except (struct.error, TypeError):  # negative, too large or not ints: masked per block
        fmt = f"<{block_tokens}Q"
        return _chain(
            struct.pack(fmt, *(int(t) & _MASK64 for t in token_ids[i : i + block_tokens]))
            for i in range(0, n * block_tokens, block_tokens)
        )
    return _chain_packed(packed, 8 * block_tokens, n)


def packed_token_keys(
    token_ids: Sequence[int], block_tokens: int, max_tokens: int
) -> tuple[int, ...] | None:
    """``chain_token_keys(token_ids[:max_tokens], block_tokens)`` when every id of
    ``token_ids`` (all of them, also past ``max_tokens``) is an int in [0, 2^64), else None.

    One ``struct.pack`` both checks the ids and packs them, so a caller that needs all
    ids to be ints need not look at their types first.
    """
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    try:
        packed = struct.pack(f"<{len(token_ids)}Q", *token_ids)
    except (struct.error, TypeError):  # a float, a string, a negative or too large id
        return None
    n = min(len(token_ids), max_tokens) // block_tokens
    return _chain_packed(packed, 8 * block_tokens, n)


def text_block_keys(text: str, block_chars: int) -> tuple[int, ...]:
    """Prefix keys of the full blocks of ``block_chars`` characters of a text."""
    if block_chars < 1:
        raise ValueError(f"block_chars must be >= 1, got {block_chars}")
    n = len(text) // block_chars
    return _chain(
        text[i : i + block_chars].encode("utf-8", "surrogatepass")
        for i in range(0, n * block_chars, block_chars)
    )
