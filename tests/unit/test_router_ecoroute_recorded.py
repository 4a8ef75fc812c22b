"""EcoRoute answers as it did when the decisions were recorded, float for float.

``tests/data/ecoroute_decisions.json`` holds seeded decision sequences (inputs
and answers) made by ``python -m voltana.tests.ecoroute_decisions`` from the
policy before its per-state table cache: each profile, two SLOs, prefill and
decode candidates with and without telemetry, queues past the chunk size,
prompts sharing prefixes. Replaying them must give the same selections, reasons
and what-ifs, and a policy that has already answered other states must too.
Exact ties (equal energies, a latency equal to the budget) are rare in real
tables, so the per-state answer is also checked against ``cheapest_rows`` on
small tables full of them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.services.router.policies.ecoroute import cheapest_rows
from voltana.services.router.policies.ecoroute_rows import ClockRow, RowCache, answer
from voltana.tests.ecoroute_decisions import FIXTURE, replay

CASES = json.loads(FIXTURE.read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['gpu']}-itl{c['slo']['itl_s']}")
def test_recorded_decisions_replay_identically(case: dict) -> None:
    got = replay(case)
    assert len(got) == len(case["answers"])
    for step, (g, want) in enumerate(zip(got, case["answers"], strict=True)):
        assert g == want, f"step {step}"
    # answers must not depend on what the policy's table caches hold
    assert replay(case, warm=True) == case["answers"]


small = st.integers(0, 4).map(float)  # few values: ties in latency, energy and budget abound


@settings(max_examples=300, deadline=None)
@given(
    table=st.lists(st.tuples(small, small), min_size=1, max_size=8),
    budget=st.one_of(small, st.just(math.nan), st.just(math.inf)),
    first=st.integers(0, 7),
)
def test_clock_row_answers_as_cheapest_rows(
    table: list[tuple[float, float]], budget: float, first: int
) -> None:
    first = min(first, len(table) - 1)
    lat, en = (np.array(col) for col in zip(*table, strict=True))
    idx, ok = cheapest_rows(lat[None, :], en[None, :], np.array([budget]), np.array([first]))
    want = (int(idx[0]), bool(ok[0]))
    row = ClockRow(lat, en)
    # first a scan, then the sorted tables are built, then kept: the same answer each time
    assert [row.cheapest(budget, first) for _ in range(3)] == [want] * 3
    rows = RowCache(lambda keys: (lat[None, :], en[None, :])).rows(["s"])
    assert answer(rows * 2, [budget] * 2, [first] * 2) == [want] * 2
