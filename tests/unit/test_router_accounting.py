"""The shared load accounting: one request's lifecycle on both sides, and the view it yields."""

from __future__ import annotations

from voltana.services.router.accounting import InstanceLoad


def test_prefill_side_counts_prompt_tokens_until_done_once() -> None:
    p = InstanceLoad()
    p.prefill_dispatched("r1", 100, now=1.0)
    p.prefill_dispatched("r2", 50, now=2.0)
    assert (p.in_flight_requests, p.in_flight_tokens, p.queued_prefill_tokens) == (2, 150, 150)
    assert p.view("p0", "prefill", 3.5).oldest_wait_s == 2.5
    assert p.prefill_done("r1", 100)
    assert not p.prefill_done("r1", 100)  # a second end of the same prefill is ignored
    assert (p.in_flight_requests, p.in_flight_tokens, p.queued_prefill_tokens) == (1, 50, 50)
    assert p.view("p0", "prefill", 3.5).oldest_wait_s == 1.5  # r2 is now the oldest
    assert p.prefill_done("r2", 50)
    assert (p.in_flight_requests, p.in_flight_tokens, p.queued_prefill_tokens) == (0, 0, 0)
    assert p.view("p0", "prefill", 9.0).oldest_wait_s == 0.0 and not p.waiting_since


def test_decode_side_holds_the_kv_footprint_until_done() -> None:
    d = InstanceLoad()
    d.decode_dispatched("r1", 100, 20, now=1.0)
    assert (d.in_flight_requests, d.in_flight_tokens, d.queued_prefill_tokens) == (1, 120, 0)
    d.first_token("r1")
    assert d.view("d0", "decode", 5.0).oldest_wait_s == 0.0
    assert d.in_flight_requests == 1  # still decoding
    d.decode_done("r1", 100, 20)
    assert (d.in_flight_requests, d.in_flight_tokens) == (0, 0)


def test_view_carries_counters_and_the_callers_telemetry() -> None:
    p = InstanceLoad()
    p.prefill_dispatched("r1", 300, now=10.0)
    v = p.view("p0", "prefill", 10.25, clock_mhz=1410, power_w=250.0, telemetry_age_s=0.1)
    assert (v.instance, v.role, v.healthy, v.url) == ("p0", "prefill", True, "")
    assert (v.in_flight_requests, v.in_flight_tokens, v.queued_prefill_tokens) == (1, 300, 300)
    assert (v.oldest_wait_s, v.clock_mhz, v.power_w, v.telemetry_age_s) == (0.25, 1410, 250.0, 0.1)
    assert v.running_batch is None and v.batch_size == 1  # falls back to own accounting
    assert p.view("p0", "prefill", 9.0).oldest_wait_s == 0.0  # never negative
