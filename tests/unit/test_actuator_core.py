"""The actuator's pure lease table: validation, leases, rate limit (table-driven + stateful)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from voltana.schemas.clock import ResetClock, SetClock
from voltana.services.actuator.core import ActuatorConfig, LeaseTable

CLOCKS = list(range(1980, 344, -15))
NODE = "n1"


def table(**kw: Any) -> LeaseTable:
    return LeaseTable(ActuatorConfig(node=NODE, **kw), {0: CLOCKS, 1: CLOCKS})


def set_cmd(
    mhz: int, *, gpu: int = 0, node: str = NODE, t_ns: int = 1, seq: int = 1, lease_s: float = 2.0
) -> SetClock:
    return SetClock(
        t_ns=t_ns, node=node, gpu=gpu, sm_clock_mhz=mhz, lease_s=lease_s, seq=seq, issued_by="c"
    )


@pytest.mark.parametrize(
    ("cmd", "subject_gpu", "reason"),
    [
        (set_cmd(1410, node="n2"), 0, "node 'n2'"),
        (set_cmd(1410, gpu=1), 0, "differs from the subject"),
        (set_cmd(1410, gpu=7), 7, "not controlled"),
        (set_cmd(1412), 0, "not a supported clock"),
        (set_cmd(2100), 0, "not a supported clock"),
        (set_cmd(1410, lease_s=0.0), 0, "lease"),
        (set_cmd(1410, lease_s=-1.0), 0, "lease"),
        (set_cmd(1410, lease_s=math.nan), 0, "lease"),
        (ResetClock(t_ns=1, node="other", gpu=0), 0, "node 'other'"),
    ],
)
def test_rejections_change_nothing(
    cmd: SetClock | ResetClock, subject_gpu: int, reason: str
) -> None:
    t = table()
    t.on_command(set_cmd(1005, t_ns=0, seq=0), 0.0)
    v = t.on_command(cmd, 0.5, subject_gpu=subject_gpu)
    assert v.kind == "rejected"
    assert reason in v.reason
    assert t.target_mhz(0) == 1005
    assert t.lease_expires_s(0) == pytest.approx(2.0)


def test_lock_renew_expire() -> None:
    t = table()
    v = t.on_command(set_cmd(1410, t_ns=1, lease_s=1.0), 10.0)
    assert (v.kind, v.target_mhz, v.lease_expires_s) == ("apply", 1410, 11.0)
    v = t.on_command(set_cmd(1410, t_ns=2, lease_s=1.0), 10.8)
    assert (v.kind, v.lease_expires_s) == ("renew", pytest.approx(11.8))
    assert t.on_tick(11.5) == []
    assert t.next_deadline_s() == pytest.approx(11.8)
    [v] = t.on_tick(11.8)
    assert (v.gpu, v.kind, v.target_mhz) == (0, "expired", None)
    assert t.target_mhz(0) is None
    assert t.next_deadline_s() is None


def test_lease_clamped_to_max() -> None:
    t = table(max_lease_s=5.0)
    v = t.on_command(set_cmd(1410, lease_s=1e9), 0.0)
    assert v.lease_expires_s == 5.0


def test_stale_and_duplicate_commands_rejected() -> None:
    t = table()
    assert t.on_command(set_cmd(1410, t_ns=100, seq=5), 0.0).kind == "apply"
    assert t.on_command(set_cmd(1005, t_ns=100, seq=5), 0.1).kind == "rejected"  # duplicate
    assert t.on_command(set_cmd(1005, t_ns=90, seq=9), 0.1).kind == "rejected"  # reordered
    # a restarted issuer (seq from 0, newer time) is accepted
    assert t.on_command(set_cmd(1005, t_ns=200, seq=0), 0.2).kind == "apply"


def test_rate_limit_defers_and_latest_wins() -> None:
    t = table(min_change_interval_s=0.1)
    assert t.on_command(set_cmd(1410, t_ns=1), 0.0).kind == "apply"
    v = t.on_command(set_cmd(1005, t_ns=2), 0.02)
    assert (v.kind, v.target_mhz, v.requested_mhz) == ("deferred", 1410, 1005)
    v = t.on_command(set_cmd(900, t_ns=3), 0.05)
    assert v.kind == "deferred"
    assert t.next_deadline_s() == pytest.approx(0.1)
    assert t.on_tick(0.09) == []
    [v] = t.on_tick(0.1)
    assert (v.kind, v.target_mhz, v.command_seq) == ("apply", 900, 1)
    # a request for the current clock cancels a pending change
    t.on_command(set_cmd(1200, t_ns=4), 0.15)
    assert t.pending_mhz(0) == 1200
    assert t.on_command(set_cmd(900, t_ns=5), 0.16).kind == "renew"
    assert t.pending_mhz(0) is None


def test_reset_is_never_deferred() -> None:
    t = table(min_change_interval_s=10.0)
    t.on_command(set_cmd(1410, t_ns=1), 0.0)
    v = t.on_command(ResetClock(t_ns=2, node=NODE, gpu=0, issued_by="c"), 0.01)
    assert (v.kind, v.target_mhz) == ("reset", None)


def test_release_all_resets_every_gpu() -> None:
    t = table()
    t.on_command(set_cmd(1410, gpu=0, t_ns=1), 0.0)
    t.on_command(set_cmd(1005, gpu=1, t_ns=2), 0.0)
    out = t.release_all(0.5, "bus lost")
    assert [(v.gpu, v.kind, v.target_mhz) for v in out] == [
        (0, "released", None),
        (1, "released", None),
    ]
    assert t.target_mhz(0) is None and t.target_mhz(1) is None


class LeaseMachine(RuleBasedStateMachine):
    """Random interleavings of commands, time and releases keep the actuator's promises."""

    MIN_INTERVAL_S = 0.05

    @initialize()
    def setup(self) -> None:
        self.t = LeaseTable(
            ActuatorConfig(node=NODE, min_change_interval_s=self.MIN_INTERVAL_S, max_lease_s=3.0),
            {0: CLOCKS[:20], 1: CLOCKS[20:40]},
        )
        self.now = 0.0
        self.t_ns = 0
        self.last_apply: dict[int, float] = {}

    def _observe(self, verdicts: list) -> None:
        for v in verdicts:
            if v.kind == "apply":
                prev = self.last_apply.get(v.gpu, -math.inf)
                assert self.now - prev >= self.MIN_INTERVAL_S - 1e-9, "rate limit broken"
                self.last_apply[v.gpu] = self.now
            if v.kind in ("reset", "expired", "released"):
                assert v.target_mhz is None

    @rule(dt=st.floats(0.0, 1.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        self._observe(self.t.on_tick(self.now))
        for g in self.t.gpus:  # nothing is held past its lease once the tick ran
            if self.t.target_mhz(g) is not None:
                assert self.t.lease_expires_s(g) > self.now

    @rule(
        gpu=st.integers(-1, 2),
        mhz=st.sampled_from([*CLOCKS, 1412, 0, 5000]),
        lease_s=st.floats(-1.0, 5.0),
        foreign=st.booleans(),
    )
    def command(self, gpu: int, mhz: int, lease_s: float, foreign: bool) -> None:
        self.t_ns += 1
        before = {g: self.t.target_mhz(g) for g in self.t.gpus}
        cmd = set_cmd(mhz, gpu=gpu, node="n9" if foreign else NODE, t_ns=self.t_ns, lease_s=lease_s)
        v = self.t.on_command(cmd, self.now, subject_gpu=gpu)
        self._observe([v])
        ok = (
            not foreign
            and gpu in (0, 1)
            and lease_s >= 0.05
            and mhz in (CLOCKS[:20] if gpu == 0 else CLOCKS[20:40])
        )
        if not ok:
            assert v.kind == "rejected"
            assert {g: self.t.target_mhz(g) for g in self.t.gpus} == before
        else:
            assert v.kind in ("apply", "renew", "deferred")

    @rule(gpu=st.integers(0, 1))
    def reset(self, gpu: int) -> None:
        self.t_ns += 1
        v = self.t.on_command(
            ResetClock(t_ns=self.t_ns, node=NODE, gpu=gpu, issued_by="c"), self.now
        )
        self._observe([v])
        assert self.t.target_mhz(gpu) is None

    @precondition(lambda self: hasattr(self, "t"))
    @rule()
    def release(self) -> None:
        self._observe(self.t.release_all(self.now, "bus lost"))
        assert all(self.t.target_mhz(g) is None for g in self.t.gpus)

    @invariant()
    def targets_supported_and_leased(self) -> None:
        for g in self.t.gpus:
            target = self.t.target_mhz(g)
            if target is not None:
                assert target in (CLOCKS[:20] if g == 0 else CLOCKS[20:40])
                expires = self.t.lease_expires_s(g)
                assert expires is not None and expires - self.now <= 3.0 + 1e-9


LeaseMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLeaseMachine = LeaseMachine.TestCase
