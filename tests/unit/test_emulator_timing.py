"""Mid-iteration re-timing (groundtruth.timing): pro-rata books, and the exact arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.groundtruth.timing import Stretch, retime


def test_a_change_books_the_work_done_at_the_old_clock_and_the_rest_at_the_new() -> None:
    fresh = Stretch(0.0, 1.0, 10.0, 100.0)
    assert (fresh.end_s, fresh.energy_j, fresh.rest_s) == (10.0, 100.0, 10.0)
    run = retime(fresh, 2.5, 20.0, 300.0)  # a quarter done; the rest at half the speed
    assert run == Stretch(2.5, 0.75, 20.0, 300.0, 25.0)
    assert run.end_s == 17.5 and run.energy_j == 250.0
    again = retime(run, 7.5, 10.0, 100.0)  # a quarter more at the slow clock, back to fast
    assert again.left == pytest.approx(0.5) and again.done_j == pytest.approx(100.0)
    assert again.end_s == pytest.approx(12.5) and again.energy_j == pytest.approx(150.0)


def test_a_change_stamped_before_the_stretch_applies_from_its_start() -> None:
    run = Stretch(5.0, 0.5, 10.0, 100.0, 50.0)
    assert retime(run, 4.0, 20.0, 300.0) == Stretch(5.0, 0.5, 20.0, 300.0, 50.0)


def test_no_more_work_is_used_up_than_was_left() -> None:
    run = Stretch(0.0, 0.25, 10.0, 100.0, 75.0)
    late = retime(run, 9.0, 20.0, 300.0)  # past the planned end (2.5 s)
    assert late.left == 0.0 and late.done_j == 100.0 and late.end_s == 9.0


times = st.floats(1e-4, 1e4, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(t=st.floats(0.0, 1e5), dur=times, energy=times, frac=st.floats(0.0, 1.0), dur2=times)
def test_retime_keeps_the_operands_of_the_arithmetic_it_replaced(
    t: float, dur: float, energy: float, frac: float, dur2: float
) -> None:
    # The simulator's and the emulator's re-timing used these expressions inline;
    # their figures (checked bit for bit against reference runs) depend on them.
    t_c = t + frac * dur
    if not t < t_c < t + dur:
        return
    e2 = energy * 1.7
    run = retime(Stretch(t, 1.0, dur, energy), t_c, dur2, e2)
    f = (t_c - t) / dur
    assert run.left == 1.0 - f
    assert run.done_j == f * energy
    assert run.energy_j == f * energy + (1.0 - f) * e2
    assert run.rest_s == (1.0 - f) * dur2
    assert run.end_s == t_c + (1.0 - f) * dur2
