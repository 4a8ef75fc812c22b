"""SGLang's radix prefix cache, at block granularity: what a prefill instance keeps of past prompts.

SGLang keeps the KV of every prompt it has computed in a radix tree over token
ids (``RadixCache``): a new request reuses the longest cached prefix and
computes only the rest; finished requests leave their KV in the tree; nodes in
use by a running request are locked (``inc_lock_ref``); when the KV pool runs
short, unlocked leaves are evicted least recently used first, and the tree
shares the pool with the running requests.

This module is that tree with pages of ``block_tokens`` tokens (SGLang with
``--page-size`` > 1 matches whole pages the same way). A prompt's identity is
its chain of block keys (:class:`PrefixIdentity`): key ``i`` stands for tokens
``0 .. (i+1)*block_tokens`` - equal keys mean equal prefixes - so the tree is
stored flat, one node per key with its parent's key. ``chain_token_keys`` and
``chain_keys`` (``common/prefix_keys.py``) build such a chain from token ids or
from per-block ids (the Mooncake trace's ``hash_ids``). Recency is a logical
clock (one tick per use), so results never depend on wall time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from voltana.common.prefix_keys import chain_keys, chain_token_keys

__all__ = ["CacheMatch", "PrefixCache", "PrefixIdentity", "chain_keys", "chain_token_keys"]


class PrefixIdentity(msgspec.Struct, frozen=True, gc=False):
    """What a prompt is made of, for prefix matching: chained block keys.

    Block ``i`` covers tokens ``[i*block_tokens, min((i+1)*block_tokens, prompt))``;
    ``keys`` may stop short of the prompt (an uncacheable tail).
    """

    keys: tuple[int, ...]
    block_tokens: int


@dataclass(frozen=True, slots=True)
class CacheMatch:
    """A lookup's answer: the matched keys (a path from the root) and their tokens."""

    keys: tuple[int, ...]
    tokens: int
    unlocked_tokens: int  # of ``tokens``, those no running request holds (evictable now)


@dataclass(slots=True)
class _Node:
    parent: int | None
    tokens: int
    lock: int = 0
    children: int = 0
    last_use: int = 0


class PrefixCache:
    """The tree of one instance. It owns no capacity: the engine asks it to make room.

    ``total_tokens`` is what the tree holds (locked or not); ``evictable_tokens`` what
    eviction may free now. ``hit_tokens`` / ``query_tokens`` count admitted prompts'
    cached and total tokens (SGLang's ``cache_hit_rate`` is their ratio).
    """

    def __init__(self) -> None:
        self._nodes: dict[int, _Node] = {}
        self._leaves: list[tuple[int, int]] = []  # (last_use, key), validated on pop
        self._tick = 0
        self.total_tokens = 0
        self.locked_tokens = 0
        self.hit_tokens = 0
        self.query_tokens = 0
        self.evicted_tokens = 0

    @property
    def evictable_tokens(self) -> int:
        return self.total_tokens - self.locked_tokens

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: int) -> bool:
        return key in self._nodes

    def clear(self) -> bool:
        """Drop every cached prefix (SGLang's ``/flush_cache``); False while any is in use."""
        if self.locked_tokens:
            return False
        self._nodes.clear()
        self._leaves.clear()
        self.total_tokens = 0
        return True

    # ----- lookups ---------------------------------------------------------------------
    def match(self, prefix: PrefixIdentity) -> CacheMatch:
        """The longest cached prefix of ``prefix`` (no state change)."""
        nodes = self._nodes
        keys: list[int] = []
        tokens = unlocked = 0
        for k in prefix.keys:
            node = nodes.get(k)
            if node is None:
                break
            keys.append(k)
            tokens += node.tokens
            if node.lock == 0:
                unlocked += node.tokens
        return CacheMatch(tuple(keys), tokens, unlocked)

    def record_query(self, prompt_tokens: int, hit_tokens: int) -> None:
        """Count an admitted prompt (what SGLang's hit-rate gauge and cached-token counter see)."""
        self.query_tokens += prompt_tokens
        self.hit_tokens += hit_tokens

    # ----- locks -----------------------------------------------------------------------
    def lock(self, keys: Iterable[int]) -> None:
        """A running request uses these nodes: they cannot be evicted until ``unlock``."""
        self._tick += 1
        for k in keys:
            node = self._nodes[k]
            if node.lock == 0:
                self.locked_tokens += node.tokens
            node.lock += 1
            node.last_use = self._tick

    def unlock(self, keys: Iterable[int]) -> None:
        """The request is done with these nodes (they stay cached, now evictable)."""
        self._tick += 1
        for k in keys:
            node = self._nodes.get(k)
            if node is None or node.lock == 0:
                continue
            node.lock -= 1
            node.last_use = self._tick
            if node.lock == 0:
                self.locked_tokens -= node.tokens
                if node.children == 0:
                    heapq.heappush(self._leaves, (node.last_use, k))

    # ----- insertion and eviction ------------------------------------------------------
    def insert(self, prefix: PrefixIdentity, prompt_tokens: int) -> tuple[tuple[int, ...], int]:
        """Add the blocks of a computed prompt that are not cached yet, locked by the caller.

        Returns (the keys added, their tokens). Blocks already present are left as they
        are (the caller locked them when it matched them, or another request holds them).
        """
        bt = prefix.block_tokens
        nodes = self._nodes
        added: list[int] = []
        tokens = 0
        parent: int | None = None
        self._tick += 1
        for i, k in enumerate(prefix.keys):
            n = min(bt, prompt_tokens - i * bt)
            if n <= 0:
                break
            if k not in nodes:
                if parent is not None and parent not in nodes:
                    break  # an ancestor was evicted meanwhile: the chain is broken here
                nodes[k] = _Node(parent, n, lock=1, last_use=self._tick)
                if parent is not None:
                    nodes[parent].children += 1
                added.append(k)
                tokens += n
            parent = k
        self.total_tokens += tokens
        self.locked_tokens += tokens
        return tuple(added), tokens

    def evict(self, tokens: int) -> int:
        """Free at least ``tokens`` (as far as possible), least recently used leaves first."""
        freed = 0
        nodes, leaves = self._nodes, self._leaves
        while freed < tokens and leaves:
            last_use, k = heapq.heappop(leaves)
            node = nodes.get(k)
            if node is None or node.lock or node.children or node.last_use != last_use:
                continue  # stale entry: used, locked or re-parented since
            del nodes[k]
            freed += node.tokens
            self.total_tokens -= node.tokens
            if node.parent is not None:
                parent = nodes[node.parent]
                parent.children -= 1
                if parent.children == 0 and parent.lock == 0:
                    heapq.heappush(leaves, (parent.last_use, node.parent))
        self.evicted_tokens += freed
        return freed
