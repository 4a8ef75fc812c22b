"""The actuator's bounds on commands: wall-clock age, future stamps, resets, issuer tables."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.schemas import codec
from voltana.schemas.clock import ClockCommand, ResetClock, SetClock
from voltana.services.actuator.core import ActuatorConfig, LeaseTable

CLOCKS = list(range(1980, 344, -15))
NODE = "n1"
WALL = 1_800_000_000 * 10**9  # the actuator's wall clock in these tests (Unix ns)
S = 10**9


def table(**kw: Any) -> LeaseTable:
    return LeaseTable(ActuatorConfig(node=NODE, **kw), {0: CLOCKS})


def lock(mhz: int, t_ns: int, *, issued_by: str = "fc", seq: int = 1) -> SetClock:
    return SetClock(t_ns=t_ns, node=NODE, gpu=0, sm_clock_mhz=mhz, seq=seq, issued_by=issued_by)


def test_old_command_under_a_new_issuer_is_rejected() -> None:
    t = table(max_command_age_s=5)
    v = t.on_command(lock(1410, WALL - 3600 * S, issued_by="new-name"), 0.0, wall_ns=WALL)
    assert v.kind == "rejected" and "old" in v.reason and t.target_mhz(0) is None
    v = t.on_command(lock(1410, 0, issued_by="zero"), 0.0, wall_ns=WALL)
    assert v.kind == "rejected"
    assert t.on_command(lock(1410, WALL - 1 * S), 0.0, wall_ns=WALL).kind == "apply"


def test_future_command_cannot_lock_the_controller_out() -> None:
    t = table(max_clock_skew_s=1)
    hour = WALL + 3600 * S
    v = t.on_command(lock(600, hour, issued_by="fc"), 0.0, wall_ns=WALL)
    assert v.kind == "rejected" and "future" in v.reason
    # the real controller, same issuer name, a moment later: accepted
    assert (
        t.on_command(lock(1410, WALL + S // 2, issued_by="fc"), 0.1, wall_ns=WALL).kind == "apply"
    )


def test_reset_always_gets_through() -> None:
    t = table()
    assert t.on_command(lock(1410, WALL), 0.0, wall_ns=WALL).kind == "apply"
    for t_ns in (0, WALL - 3600 * S, WALL + 3600 * S, WALL - 5):  # old, future, reordered
        reset = ResetClock(t_ns=t_ns, node=NODE, gpu=0, issued_by="fc")
        assert t.on_command(reset, 1.0, wall_ns=WALL).kind == "reset"
        assert t.target_mhz(0) is None
        assert t.on_command(lock(1410, WALL + t_ns % 7 + 1, seq=t_ns % 5 + 2), 1.1, wall_ns=WALL)


def test_issuer_table_is_bounded_and_pruned() -> None:
    t = table(max_issuers=8, max_command_age_s=5)
    for i in range(200):
        t.on_command(lock(1410, WALL, issued_by=f"x{i}", seq=i), 0.0, wall_ns=WALL)
        assert t.issuers(0) <= 8
    # ten seconds later every stamp is too old to matter: a new command prunes them
    later = WALL + 10 * S
    t.on_command(lock(1410, later, issued_by="fc"), 0.0, wall_ns=later)
    assert t.issuers(0) == 1


_commands: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    type=st.sampled_from(["set", "reset", "other"]),
    t_ns=st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(WALL)),
    node=st.sampled_from([NODE, "n2", "", "a.b", "²", "x" * 300]),
    gpu=st.one_of(st.integers(-5, 5), st.integers(2**40, 2**62)),
    sm_clock_mhz=st.one_of(st.sampled_from(CLOCKS), st.integers(-(2**40), 2**40)),
    lease_s=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(2.0)),
    seq=st.integers(0, 2**63 - 1),
    issued_by=st.text(max_size=200),
)


@settings(max_examples=150, deadline=None)
@given(raw=st.lists(st.one_of(_commands, st.binary(max_size=64)), max_size=8))
def test_any_payload_gets_a_verdict_or_a_clean_decode_error(raw: list[object]) -> None:
    """Whatever arrives on the subject: decoded strictly or dropped; a verdict, never a crash."""
    t = table()
    dec = codec.decoder(ClockCommand)
    for i, item in enumerate(raw):
        data = item if isinstance(item, bytes) else msgspec.msgpack.encode(item)
        try:
            cmd = dec.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        v = t.on_command(cmd, float(i), subject_gpu=cmd.gpu, wall_ns=WALL)
        assert v.kind in ("apply", "renew", "deferred", "reset", "rejected")
        if v.kind == "apply":
            assert v.target_mhz in CLOCKS and abs(cmd.t_ns - WALL) <= 5 * S
    # the table is still live: a fresh lock and a reset work
    assert t.on_command(lock(1410, WALL, seq=2**63 - 1, issued_by="last"), 99.0, wall_ns=WALL)
    assert t.on_command(ResetClock(t_ns=0, node=NODE, gpu=0), 100.0).kind == "reset"
    assert t.target_mhz(0) is None
