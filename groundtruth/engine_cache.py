"""The engine's side of the prefix cache: admission against a shared KV pool, hand-over of prompts.

With SGLang's radix cache the KV pool is shared by the running requests (their own
tokens, ``Engine._reserved``) and the cache (matched prefixes locked by requests,
computed prompts, evictable leaves). Admission matches the prompt, locks the match
and evicts least recently used leaves when the free part is short; once a prompt is
computed its new blocks move from the request's reservation into the cache, locked
until the request leaves (``Engine._release`` unlocks them).
"""

from __future__ import annotations

from voltana.groundtruth.engine_types import EngineConfig, EngineRequest
from voltana.groundtruth.prefix_cache import PrefixCache

__all__ = ["admit_with_cache", "cache_gauges", "cache_prompt"]


def admit_with_cache(
    cache: PrefixCache, req: EngineRequest, config: EngineConfig, slots_used: int, reserved: int
) -> bool:
    """Match, lock, evict to make room; set the request's cached tokens. False: it must wait.

    The request needs KV for its uncached prompt tokens and its output. SGLang always
    computes at least the last prompt token, so a full match serves all but one token.
    """
    if slots_used >= config.max_running_requests:
        return False
    m = cache.match(req.prefix) if req.prefix is not None else None
    hit = 0 if m is None else min(m.tokens, req.prompt_tokens - 1)
    need = req.prompt_tokens - hit + req.max_new_tokens
    free = config.kv_capacity_tokens - reserved - cache.total_tokens
    evictable = cache.evictable_tokens - (0 if m is None else m.unlocked_tokens)
    if need > free + evictable:
        return False
    if m is not None and m.keys:
        cache.lock(m.keys)
        req.cache_keys = m.keys
    if need > free:
        cache.evict(need - free)
    req.cached_tokens = req.prefilled_tokens = hit
    cache.record_query(req.prompt_tokens, hit)
    return True


def cache_prompt(cache: PrefixCache, req: EngineRequest) -> int:
    """The prompt's KV is computed: insert its new blocks, locked by ``req``.

    Returns the tokens that moved from the request's reservation to the cache.
    """
    assert req.prefix is not None
    added, tokens = cache.insert(req.prefix, req.prompt_tokens)
    if tokens:
        req.cache_moved_tokens += tokens
        req.cache_keys = req.cache_keys + added
    return tokens


def cache_gauges(cache: PrefixCache) -> dict[str, int]:
    """The prefix cache's figures for ``EngineStats``."""
    return {
        "cache_tokens": cache.total_tokens,
        "cache_hit_tokens": cache.hit_tokens,
        "cache_query_tokens": cache.query_tokens,
        "cache_evicted_tokens": cache.evicted_tokens,
    }
