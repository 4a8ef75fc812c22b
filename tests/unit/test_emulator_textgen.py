"""Token counting and the deterministic filler text of the emulated model."""

from __future__ import annotations

import pytest
from voltana.services.emulator.textgen import (
    chat_prompt_tokens,
    count_prompt_tokens,
    filler_ids,
    filler_text,
)


@pytest.mark.parametrize(
    ("start", "end"), [(0, 1), (0, 7), (3, 40), (27, 28), (100, 300), (0, 1000)]
)
def test_filler_text_slices_concatenate(start: int, end: int) -> None:
    whole = filler_text(0, end)
    assert whole == filler_text(0, start) + filler_text(start, end)
    assert len(filler_text(start, end).split()) == end - start
    assert len(filler_ids(start, end)) == end - start


def test_filler_text_empty_and_deterministic() -> None:
    assert filler_text(5, 5) == "" and filler_text(6, 5) == ""
    assert filler_text(0, 50) == filler_text(0, 50)


@pytest.mark.parametrize(
    ("prompt", "tokens"), [([1, 2, 3], 3), ("", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_count_prompt_tokens(prompt: object, tokens: int) -> None:
    assert count_prompt_tokens(prompt) == tokens


def test_chat_prompt_tokens_counts_template_overhead() -> None:
    msgs = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]},
    ]
    assert chat_prompt_tokens(msgs) == (1 + 4) + (2 + 4)
