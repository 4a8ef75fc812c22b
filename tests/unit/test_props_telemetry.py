"""Property tests: telemetry's parsers of what an SGLang server answers.

Whatever ``/metrics``, ``/v1/loads`` or ``/get_load`` returns, the parser gives
a snapshot or a ``ValueError`` (which the scraper reports as the engine being
unreadable); it never raises anything else, so the scraping loop goes on.
"""

from __future__ import annotations

import math

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.services.telemetry.engine_metrics import parse_get_load, parse_metrics, parse_v1_loads

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "num_running_reqs",
        "num_waiting_reqs",
        "num_used_tokens",
        "max_total_num_tokens",
        "token_usage",
        "gen_throughput",
        "disaggregation",
        "load",
        "mode",
    ]
)
_row = st.dictionaries(_keys, _json, max_size=8)
_docs = st.one_of(
    _json,
    st.builds(lambda rows: {"loads": rows}, st.lists(st.one_of(_row, _json), max_size=4)),
    st.lists(st.one_of(_row, _json), max_size=4),
    _row,
)


@settings(max_examples=100, deadline=None)
@given(doc=_docs)
def test_load_parsers_give_a_snapshot_or_value_error(doc: object) -> None:
    for parse in (parse_v1_loads, parse_get_load):
        try:
            snap = parse(doc)
        except ValueError:
            continue
        for value in (snap.running_reqs, snap.used_tokens, snap.capacity_tokens, snap.load):
            assert value is None or math.isfinite(value)


_lines = st.one_of(
    st.sampled_from(
        [
            "# TYPE sglang:num_running_reqs gauge",
            "# TYPE sglang:time_to_first_token_seconds histogram",
            "# TYPE sglang:prompt_tokens counter",
            "sglang:num_running_reqs 3",
            'sglang:num_running_reqs{engine_type="unified"} 1e400',
            "sglang:num_running_reqs NaN",
            'sglang:time_to_first_token_seconds_bucket{le="0.1"} 2',
            'sglang:time_to_first_token_seconds_bucket{le="+Inf"} 5',
            "sglang:time_to_first_token_seconds_bucket 5",
            'sglang:time_to_first_token_seconds_bucket{le="abc"} 5',
            "sglang:time_to_first_token_seconds_sum 0.5",
            "sglang:time_to_first_token_seconds_count 5",
            "sglang:prompt_tokens_total -1",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(_lines, max_size=10))
def test_metrics_parser_gives_a_snapshot_or_value_error(lines: list[str]) -> None:
    try:
        snap = parse_metrics("\n".join(lines) + "\n")
    except ValueError:
        return
    assert all(not math.isnan(v) for v in snap.gauges.values())


def test_json_nesting_from_a_server_is_a_value_error() -> None:
    """msgspec raises RecursionError on deep nesting; the scraper must see a ValueError."""
    from voltana.services.telemetry.engine import decode_answer

    for raw in (b"[" * 100_000, b'{"loads": ' + b"[" * 5000):
        try:
            decode_answer(raw)
        except ValueError:
            continue
        raise AssertionError("accepted")
    assert decode_answer(b'{"loads": []}') == {"loads": []}
    assert isinstance(msgspec.json.decode(b"1"), int)
