"""sglang-router's ``cache_aware`` policy: send a prompt where its prefix was sent before.

The router cannot see the workers' radix caches, so it keeps an approximate one:
a tree of what it routed to each worker (a tenant per worker), pruned least
recently used first. Per request (sglang-router 0.3.x, ``CacheAwarePolicy``):

1. if the load is imbalanced - ``max - min > balance_abs_threshold`` *and*
   ``max > min * balance_rel_threshold`` over the workers' in-flight requests -
   the least loaded worker;
2. otherwise the longest prefix match in the tree: if the matched share of the
   prompt exceeds ``cache_threshold``, the worker holding that match; else the
   worker whose tree is smallest (the most room to cache);
3. the prompt is inserted into the chosen worker's tree (here: on dispatch).

Every ``eviction_interval_secs`` each tenant is pruned, least recently used
leaves first, to ``max_tree_size``. Defaults are sglang-router's
(``sgl-router/py_src/sglang_router/router_args.py``: 0.3, 64, 1.5, 120 s, 2**26).
sglang-router's tree is over characters of the request text; this one is over
the prompt's block keys (``RouteRequest.prefix_keys``; sizes in tokens), which
is the same tree at block granularity.
"""

from __future__ import annotations

import msgspec
import numpy as np
from voltana.services.router.policies.base import (
    InstanceView,
    PolicyBase,
    RouteRequest,
    Selection,
)

__all__ = ["ApproxPrefixTree", "CacheAwareConfig", "CacheAwarePolicy"]


class CacheAwareConfig(msgspec.Struct, frozen=True, kw_only=True):
    """sglang-router's cache-aware knobs, under its flag names (``--cache-threshold`` ...)."""

    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_secs: float = 120.0
    max_tree_size: int = 2**26

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1], got {self.cache_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("balance_abs_threshold must be >= 0, balance_rel_threshold >= 1")
        if self.eviction_interval_secs <= 0 or self.max_tree_size < 1:
            raise ValueError("eviction_interval_secs and max_tree_size must be positive")


class ApproxPrefixTree:
    """Per-tenant prefix trees over chained block keys (a key stands for its whole prefix).

    A tenant's set of keys is prefix-closed, so the tree is stored flat: key ->
    {tenant: (last use, depth)}. Recency is a logical counter (deterministic).
    """

    def __init__(self) -> None:
        self._owners: dict[int, dict[str, tuple[int, int]]] = {}
        self._size: dict[str, int] = {}  # tenant -> tokens
        self._block: dict[str, int] = {}  # tenant -> block tokens of its keys
        self._tick = 0

    def size(self, tenant: str) -> int:
        return self._size.get(tenant, 0)

    def match(self, keys: tuple[int, ...], tenants: set[str]) -> tuple[int, set[str]]:
        """(matched blocks, the tenants among ``tenants`` holding that longest match)."""
        best: set[str] = set()
        n = 0
        owners = self._owners
        for k in keys:
            here = owners.get(k)
            if here is None:
                break
            cands = tenants.intersection(here)
            if not cands:
                break
            best, n = cands, n + 1
        return n, best

    def match_each(self, keys: tuple[int, ...], tenants: list[str]) -> list[int]:
        """Matched blocks of every tenant of ``tenants`` (in that order)."""
        counts = dict.fromkeys(tenants, 0)
        alive = set(tenants)
        owners = self._owners
        for i, k in enumerate(keys):
            here = owners.get(k)
            if here is None:
                break
            alive.intersection_update(here)
            if not alive:
                break
            for t in alive:
                counts[t] = i + 1
        return [counts[t] for t in tenants]

    def last_use(self, key: int, tenant: str) -> int:
        return self._owners[key][tenant][0]

    def insert(self, keys: tuple[int, ...], block_tokens: int, tenant: str) -> None:
        self._tick += 1
        tick, added = self._tick, 0
        owners = self._owners
        for depth, k in enumerate(keys):
            here = owners.setdefault(k, {})
            if tenant not in here:
                added += block_tokens
            here[tenant] = (tick, depth)
        self._size[tenant] = self._size.get(tenant, 0) + added
        self._block[tenant] = block_tokens

    def evict_to(self, max_size: int) -> None:
        """Prune every tenant over ``max_size`` tokens: least recently used, deepest first."""
        for tenant, size in list(self._size.items()):
            if size <= max_size:
                continue
            mine = sorted(
                ((v[tenant][0], -v[tenant][1], k) for k, v in self._owners.items() if tenant in v)
            )
            bt = self._block.get(tenant, 1)
            for _, _, k in mine:
                if size <= max_size:
                    break
                here = self._owners[k]
                del here[tenant]
                if not here:
                    del self._owners[k]
                size -= bt
            self._size[tenant] = size


class CacheAwarePolicy(PolicyBase):
    name = "cache-aware"

    def __init__(self, config: CacheAwareConfig | None = None) -> None:
        self.config = config or CacheAwareConfig()
        self.tree = ApproxPrefixTree()
        self._last_eviction: float | None = None

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        cfg = self.config
        loads = [v.in_flight_requests for v in cands]
        lo, hi = min(loads), max(loads)
        if hi - lo > cfg.balance_abs_threshold and hi > lo * cfg.balance_rel_threshold:
            v = cands[loads.index(lo)]
            return Selection(v.instance, f"cache-aware: imbalanced load {hi}/{lo}, least loaded")
        names = {v.instance for v in cands}
        n, holders = self.tree.match(request.prefix_keys, names)
        rate = min(n * request.prefix_block_tokens, request.input_tokens) / max(
            request.input_tokens, 1
        )
        if rate > cfg.cache_threshold and holders:
            key = request.prefix_keys[n - 1]
            # several workers hold the match: the most recent one (sglang-router takes any)
            best = max(sorted(holders), key=lambda t: self.tree.last_use(key, t))
            return Selection(best, f"cache-aware: prefix match {rate:.0%}")
        v = min(cands, key=lambda c: (self.tree.size(c.instance), c.instance))
        return Selection(v.instance, f"cache-aware: match {rate:.0%}, smallest tree")

    def on_dispatch(self, instance: str, request: RouteRequest, now: float) -> None:
        if request.prefix_keys:
            self.tree.insert(request.prefix_keys, request.prefix_block_tokens, instance)
        if self._last_eviction is None:
            self._last_eviction = now
        elif now - self._last_eviction >= self.config.eviction_interval_secs:
            self._last_eviction = now
            self.tree.evict_to(self.config.max_tree_size)
