"""The ground truth's prefix cache: matching, locking, LRU eviction, and the engine around it."""

from __future__ import annotations

import pytest
from voltana.groundtruth.engine import Engine, EngineConfig, PrefixIdentity
from voltana.groundtruth.prefix_cache import PrefixCache, chain_keys, chain_token_keys


def _prefix(ids: list[int], bt: int = 100, seed: int = 0) -> PrefixIdentity:
    return PrefixIdentity(chain_keys(ids, seed), bt)


def _run(eng: Engine, t: float = 0.0) -> tuple[float, list[tuple[tuple[int, int], ...]]]:
    """Run the engine dry; returns the end time and every prefill plan's chunks."""
    chunks = []
    while not eng.idle:
        plan = eng.next_batch(t)
        assert plan is not None
        if plan.kind == "prefill":
            chunks.append(plan.chunks)
        eng.complete(plan, t)
        t += 1.0
    return t, chunks


def test_chain_keys_equal_prefixes_share_keys_and_differ_after() -> None:
    a = chain_keys([1, 2, 3])
    b = chain_keys([1, 2, 4])
    assert a[:2] == b[:2] and a[2] != b[2]
    assert chain_keys([2, 2])[1] != chain_keys([1, 2])[1]  # a key depends on the whole prefix
    toks = list(range(40))
    k = chain_token_keys(toks, 16)
    assert len(k) == 2  # the 8-token tail is not a full block
    assert chain_token_keys([*toks[:32], 999], 16) == k
    with pytest.raises(ValueError):
        chain_token_keys(toks, 0)


def test_match_lock_and_lru_eviction_spare_locked_nodes() -> None:
    c = PrefixCache()
    pa, pb = _prefix([1, 2, 3]), _prefix([7, 8])
    added, tokens = c.insert(pa, 300)
    assert len(added) == 3 and tokens == 300 and c.locked_tokens == 300
    c.unlock(added)
    c.insert(pb, 150)  # last block holds 50 tokens
    assert c.total_tokens == 450 and c.evictable_tokens == 300
    m = c.match(_prefix([1, 2, 9]))
    assert m.tokens == 200 and m.unlocked_tokens == 200
    c.unlock(chain_keys([7, 8]))
    # b is now the most recently used: eviction takes a's leaves first, deepest first
    assert c.evict(100) == 100
    assert c.match(pa).tokens == 200 and c.match(pb).tokens == 150
    c.lock(c.match(pa).keys)
    assert c.evict(10_000) == 150  # only b could go: a's path is locked
    assert c.match(pa).tokens == 200 and c.match(pb).tokens == 0
    assert c.evicted_tokens == 250


def test_second_request_prefills_only_its_new_tokens_with_the_rest_as_context() -> None:
    eng = Engine(EngineConfig(role="unified", kv_capacity_tokens=100_000, radix_cache=True))
    eng.submit("a", prompt_tokens=1000, max_new_tokens=2, now=0, prefix=_prefix(list(range(10))))
    t, chunks = _run(eng)
    assert chunks == [((1000, 0),)]
    shared = [*range(8), 50, 51, 52]
    eng.submit("b", prompt_tokens=1050, max_new_tokens=2, now=t, prefix=_prefix(shared))
    _, chunks = _run(eng, t)
    assert chunks == [((250, 800),)]
    s = eng.stats()
    assert (s.cache_hit_tokens, s.cache_query_tokens) == (800, 2050)
    assert s.cache_hit_rate == pytest.approx(800 / 2050)
    assert s.kv_reserved_tokens == 0 and s.cache_tokens == 1000 + 250  # b's 3 new blocks


def test_identical_prompt_recomputes_only_its_last_token() -> None:
    eng = Engine(EngineConfig(role="prefill", kv_capacity_tokens=100_000, radix_cache=True))
    p = _prefix(list(range(5)))
    eng.submit("a", prompt_tokens=500, max_new_tokens=4, now=0, prefix=p)
    plan = eng.next_batch(0)
    assert plan is not None
    eng.complete(plan, 1)
    eng.transfer_done("a", 2)
    eng.submit("b", prompt_tokens=500, max_new_tokens=4, now=3, prefix=p)
    plan = eng.next_batch(3)
    assert plan is not None and plan.chunks == ((1, 499),)


def test_memory_pressure_evicts_unlocked_prefixes_and_never_running_ones() -> None:
    eng = Engine(EngineConfig(role="unified", kv_capacity_tokens=2_000, radix_cache=True))
    eng.submit("a", prompt_tokens=1200, max_new_tokens=5, now=0, prefix=_prefix(list(range(12))))
    t, _ = _run(eng)
    assert eng.stats().cache_tokens == 1200
    # b does not fit beside a's cached prompt: a's leaves go, least recently used first
    eng.submit("b", prompt_tokens=1500, max_new_tokens=5, now=t, prefix=_prefix([9] * 15, seed=1))
    t, _ = _run(eng, t)
    s = eng.stats()
    assert s.cache_evicted_tokens == 800 and s.cache_tokens == 400 + 1500
    # while c runs on b's prefix, b's blocks are locked: d must wait, it cannot evict them
    eng.submit("c", prompt_tokens=1600, max_new_tokens=50, now=t, prefix=_prefix([9] * 16, seed=1))
    eng.submit("d", prompt_tokens=1500, max_new_tokens=5, now=t, prefix=_prefix([3] * 15, seed=2))
    plan = eng.next_batch(t)
    assert plan is not None and plan.rids == ("c",) and plan.chunks == ((100, 1500),)
    assert eng.requests["d"].phase == "waiting"
    _run(eng, t + 1)
    assert eng.idle and eng.stats().kv_reserved_tokens == 0


def test_decode_role_and_default_config_have_no_cache() -> None:
    assert Engine(EngineConfig(role="decode", radix_cache=True)).cache is None
    eng = Engine(EngineConfig(role="unified"))
    assert eng.cache is None
    eng.submit("a", prompt_tokens=300, max_new_tokens=2, now=0, prefix=_prefix([1, 2, 3]))
    _, chunks = _run(eng)
    assert chunks == [((300, 0),)]
