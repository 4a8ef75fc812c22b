"""The router's one-call token-id keying gives chain_token_keys's keys, or None when it must not."""

from __future__ import annotations

import random

import pytest
from voltana.common.prefix_keys import chain_token_keys, packed_token_keys
from voltana.services.router.prefix import BLOCK_TOKENS, prompt_prefix


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 128, 1000])
def test_same_keys_as_chain_token_keys(n: int) -> None:
    rnd = random.Random(n)
    ids = [rnd.randrange(0, 1 << 64) for _ in range(n)]
    assert packed_token_keys(ids, 16, 1 << 20) == chain_token_keys(ids, 16)
    assert packed_token_keys(ids, 16, 40) == chain_token_keys(ids[:40], 16)


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.0, "7", None, [1]])
def test_none_when_an_id_does_not_pack(bad: object) -> None:
    ids: list[object] = [1] * 40
    ids[35] = bad  # past the keyed blocks too: every id is checked
    assert packed_token_keys(ids, 16, 32) is None  # type: ignore[arg-type]


def test_bools_pack_as_ints() -> None:
    ids = [True, False, 3] * 20
    assert packed_token_keys(ids, 16, 1 << 20) == chain_token_keys(ids, 16)


@pytest.mark.parametrize(
    ("ids", "keyed"),
    [
        (list(range(1, 129)), True),
        ([-5, *range(40)], True),  # negative: masked, as chain_token_keys does
        ([1.5, *range(40)], False),  # not ints: not keyed as ids
        ([[*range(40)], [1, 2]], True),  # a batch: its first prompt
    ],
)
def test_prompt_prefix_of_input_ids(ids: list[object], keyed: bool) -> None:
    keys, block = prompt_prefix({"input_ids": ids})
    if not keyed:
        assert (keys, block) == ((), 0)
        return
    first = ids[0] if isinstance(ids[0], list) else ids
    assert block == BLOCK_TOKENS
    assert keys == chain_token_keys(first, BLOCK_TOKENS)  # type: ignore[arg-type]
