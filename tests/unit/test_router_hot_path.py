"""The router's hot-path shortcuts give the same answers as the plain ways they replace."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from voltana.common.prefix_keys import _MASK64, _chain, chain_token_keys
from voltana.services.router.metrics import ITL_BUCKETS, observe_many
from voltana.services.router.protocol import ProtocolError
from voltana.services.router.upstream import PrefillFailed, watch
from voltana.services.router.validate import check_depth, parse_request


def _hist() -> tuple[Histogram, CollectorRegistry]:
    reg = CollectorRegistry()
    return Histogram("gap_seconds", "gaps", buckets=ITL_BUCKETS, registry=reg), reg


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=60))
def test_observe_many_matches_observe_one_by_one(values: list[float]) -> None:
    one, reg_one = _hist()
    many, reg_many = _hist()
    for v in values:
        one.observe(v)
    observe_many(many, values)
    assert _samples(reg_one) == _samples(reg_many)


def _samples(reg: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    """Every sample but the creation time (which differs between two histograms)."""
    return [
        (s.name, s.labels, round(s.value, 9))
        for m in reg.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    ]


def test_observe_many_counts_a_value_on_a_bound_in_that_bucket() -> None:
    h, reg = _hist()
    observe_many(h, [0.002, 0.002, 2.0, 5.0])
    text = generate_latest(reg).decode()
    assert 'gap_seconds_bucket{le="0.002"} 2.0' in text
    assert 'gap_seconds_bucket{le="2.0"} 3.0' in text
    assert 'gap_seconds_bucket{le="+Inf"} 4.0' in text


def _nested(depth: int) -> bytes:
    return json.dumps(
        {"text": "x", "sampling_params": {"stop": [[[]]]}, "a": _deep(depth)}
    ).encode()


def _deep(depth: int) -> object:
    obj: object = []
    for _ in range(depth):
        obj = [obj]
    return obj


@pytest.mark.parametrize("depth", [1, 5, 14, 15, 16, 40])
def test_depth_limit_holds_with_the_bracket_count_shortcut(depth: int) -> None:
    raw = _nested(depth)
    try:
        check_depth(json.loads(raw), 16)
        walk_ok = True
    except ProtocolError:
        walk_ok = False
    try:
        parse_request("/generate", raw, max_depth=16, max_batch=8)
        fast_ok = True
    except ProtocolError:
        fast_ok = False
    assert fast_ok == walk_ok


@pytest.mark.parametrize(
    ("ids", "ok"),
    [
        ([1, 2, 3], True),
        ([], True),
        ([[1, 2], [3]], True),
        ([1, True, 3], False),  # a bool is not a token id
        ([1, 2.0], False),
        ([[1], [True]], False),
        ([[1], 2], False),
        (["a"], False),
    ],
)
def test_input_ids_types(ids: list[object], ok: bool) -> None:
    raw = json.dumps({"input_ids": ids}).encode()
    if ok:
        parse_request("/generate", raw, max_depth=16, max_batch=8)
    else:
        with pytest.raises(ProtocolError, match="input_ids"):
            parse_request("/generate", raw, max_depth=16, max_batch=8)


def test_text_list_must_be_strings() -> None:
    parse_request("/generate", b'{"text": ["a", "b"]}', max_depth=16, max_batch=8)
    with pytest.raises(ProtocolError, match="text"):
        parse_request("/generate", b'{"text": ["a", 1]}', max_depth=16, max_batch=8)


async def test_watch_returns_the_value_and_raises_when_the_prefill_fails() -> None:
    async def prefill(fail: bool, after: float) -> bytes:
        await asyncio.sleep(after)
        if fail:
            raise PrefillFailed("boom")
        return b"ok"

    async def slow(v: str, after: float) -> str:
        await asyncio.sleep(after)
        return v

    p = asyncio.create_task(prefill(False, 0.0))
    assert await watch(p, slow("a", 0.01)) == "a"  # the prefill ends first, well
    assert await watch(p, slow("b", 0.0)) == "b"  # already done: awaited directly
    p = asyncio.create_task(prefill(True, 0.0))
    started = asyncio.create_task(slow("c", 10))
    with pytest.raises(PrefillFailed):
        await watch(p, started)  # fails while the other side still waits
    await asyncio.sleep(0)
    assert started.cancelled()
    with pytest.raises(PrefillFailed):
        await watch(p, slow("d", 0))  # failed before: the coroutine is closed, not awaited
    p = asyncio.create_task(prefill(False, 10))
    assert await watch(p, slow("e", 0.0)) == "e"  # the other side first
    p.cancel()


def _masked_keys(ids: list[int], block: int) -> tuple[int, ...]:
    """Prefix keys the plain way: every id masked to 64 bits, one block at a time."""
    n = len(ids) // block
    return _chain(
        struct.pack(f"<{block}Q", *(int(t) & _MASK64 for t in ids[i : i + block]))
        for i in range(0, n * block, block)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(0, 200_000), st.integers(-(2**70), 2**70), st.booleans()),
        max_size=80,
    ),
    st.sampled_from([1, 4, 16]),
)
def test_token_keys_fast_pack_gives_the_same_keys(ids: list[int], block: int) -> None:
    assert chain_token_keys(ids, block) == _masked_keys(ids, block)
