"""What every clock controller shares: its input, its decision, the protocol, fail-safe rules.

Controllers are pure objects: a :class:`ControlInput` (engine state at telemetry
time ``t``) and the current time ``now`` go in, a :class:`ControlDecision` with
its reason comes out. They read no clocks and do no I/O, so the freqctl
service, the simulator and replay reach the same decisions from the same
inputs. Times are seconds on one monotonic timeline chosen by the caller.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import msgspec
import numpy as np
import numpy.typing as npt
from voltana.predictor.profile import Profile
from voltana.schemas.base import Role
from voltana.schemas.clock import ClockDecision
from voltana.schemas.config import ControllerConfig

__all__ = [
    "ClockController",
    "ControlDecision",
    "ControlInput",
    "ControllerCore",
    "Role",
    "to_event",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ControlInput(msgspec.Struct, frozen=True, kw_only=True):
    """Engine state of one instance, as of telemetry time ``t`` (seconds).

    ``batch_size`` and ``kv_tokens`` describe the running decode batch (window
    medians are fine: buckets round up); ``prefill_tokens`` counts queued and
    running prompt tokens still to prefill; ``oldest_wait_s`` is how long the
    oldest of those requests has already waited. ``None`` means unknown and
    sends the controller to its safe clock. ``observed_*`` are recent measured
    latencies (None: no observation in the window).
    """

    instance: str
    role: Role
    t: float
    queue_reqs: int | None = 0
    running_reqs: int | None = 0
    batch_size: float | None = 0.0
    kv_tokens: float | None = 0.0
    prefill_tokens: float | None = 0.0
    oldest_wait_s: float | None = 0.0
    observed_ttft_s: float | None = None
    observed_itl_s: float | None = None
    current_clock_mhz: int | None = None
    healthy: bool = True


DecisionRule = Literal[
    "static", "stale", "missing", "unhealthy", "queue", "idle", "feasible", "infeasible", "hold"
]


class ControlDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The clock to lock and why.

    ``rule`` is a short stable code (for metrics); ``reason`` explains it.
    ``default_clocks`` asks the actuator to reset to default clocks rather than
    lock ``clock_mhz`` (static policy without a clock). Predictions are for the
    chosen clock; ``budget_s`` is the latency budget it was checked against.
    """

    clock_mhz: int
    rule: DecisionRule
    reason: str
    predicted_latency_s: float | None = None
    budget_s: float | None = None
    predicted_power_w: float | None = None
    default_clocks: bool = False


@runtime_checkable
class ClockController(Protocol):
    """A clock policy for one or more instances (state is kept per instance)."""

    name: str

    def decide(self, inp: ControlInput, now: float) -> ControlDecision:
        """The clock for ``inp.instance`` from now on."""
        ...

    def reset(self) -> None:
        """Forget all per-instance state (dwell timers, corrections)."""
        ...


def _bad(x: float | None) -> bool:
    return x is None or math.isnan(x) or x < 0 or math.isinf(x)


class ControllerCore:
    """Clock table, SLO budgets and the fail-safe checks, shared by the policies.

    Args:
        config: controller settings (SLO, clock range, dwell, staleness).
        profile: the fitted profile used for every prediction.
    """

    def __init__(self, config: ControllerConfig, profile: Profile) -> None:
        self.config = config
        self.profile = profile
        lo = config.min_clock_mhz if config.min_clock_mhz is not None else profile.min_clock_mhz
        hi = config.max_clock_mhz if config.max_clock_mhz is not None else profile.max_clock_mhz
        idx = [i for i, c in enumerate(profile.clocks_mhz) if lo <= c <= hi]
        if not idx:  # a range outside the table: fall back to the whole table, safely
            idx = list(range(len(profile.clocks_mhz)))
        self.index: IntArray = np.array(idx, dtype=np.int64)
        self.clocks: IntArray = np.array([profile.clocks_mhz[i] for i in idx], dtype=np.int64)
        self.safe_clock_mhz = int(self.clocks[-1])
        self.floor_clock_mhz = int(self.clocks[0])
        slo = config.slo
        keep = 1.0 - min(max(slo.margin, 0.0), 0.9)
        self.itl_slo_s, self.ttft_slo_s = slo.itl_s, slo.ttft_s
        self.itl_target_s = slo.itl_s * keep
        self.ttft_target_s = slo.ttft_s * keep

    # -- fail-safe ----------------------------------------------------------------------

    def fail_safe(self, inp: ControlInput, now: float) -> ControlDecision | None:
        """The safe decision if telemetry is stale, unhealthy or incomplete, else None."""
        age = now - inp.t
        if math.isnan(age) or age > self.config.stale_after_s:
            return self.safe(
                "stale", f"telemetry is {age:.3f} s old (> {self.config.stale_after_s} s)"
            )
        if not inp.healthy:
            return self.safe("unhealthy", "instance reported unhealthy")
        missing = [n for n in self.required_fields(inp.role) if _bad(getattr(inp, n))]
        if missing:
            return self.safe("missing", f"missing or invalid {', '.join(missing)}")
        return None

    @staticmethod
    def required_fields(role: Role) -> tuple[str, ...]:
        common = ("queue_reqs", "running_reqs")
        if role == "decode":
            return (*common, "batch_size", "kv_tokens")
        if role == "prefill":
            return (*common, "prefill_tokens", "oldest_wait_s")
        return (*common, "batch_size", "kv_tokens", "prefill_tokens", "oldest_wait_s")

    def safe(self, rule: DecisionRule, reason: str) -> ControlDecision:
        return ControlDecision(
            clock_mhz=self.safe_clock_mhz, rule=rule, reason=f"{reason}: safe clock"
        )

    # -- work and budgets ---------------------------------------------------------------

    @staticmethod
    def is_idle(inp: ControlInput) -> bool:
        """Nothing queued, running, or waiting to prefill."""
        return (
            not inp.queue_reqs
            and not inp.running_reqs
            and not (inp.batch_size or 0) > 0
            and not (inp.prefill_tokens or 0) > 0
        )

    def predict(self, inp: ControlInput) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(decode latency, prefill latency, energy, power) at every allowed clock.

        A phase the role does not run has zero latency. Energy is for the work
        now in hand (one decode iteration and/or the pending prefill).
        """
        n = len(self.clocks)
        dec_l = np.zeros(n)
        pre_l = np.zeros(n)
        energy = np.zeros(n)
        if inp.role in ("decode", "unified"):
            b, k = float(inp.batch_size or 0.0), float(inp.kv_tokens or 0.0)
            dec_l = self.profile.decode_latency_table_s(b, k)[self.index]
            energy = energy + self.profile.decode_energy_table_j(b, k)[self.index]
        if inp.role in ("prefill", "unified"):
            t = float(inp.prefill_tokens or 0.0)
            pre_l = self.profile.prefill_latency_table_s(t)[self.index]
            energy = energy + self.profile.prefill_energy_table_j(t)[self.index]
        power = energy / np.maximum(dec_l + pre_l, 1e-9)
        return dec_l, pre_l, energy, power

    def budgets(
        self, inp: ControlInput, scale_itl: float = 1.0, scale_ttft: float = 1.0
    ) -> tuple[float, float]:
        """(ITL budget, prefill budget) in seconds; prefill = TTFT target - longest wait."""
        itl = self.itl_target_s * scale_itl if inp.role != "prefill" else math.inf
        pre = (
            self.ttft_target_s * scale_ttft - float(inp.oldest_wait_s or 0.0)
            if inp.role != "decode"
            else math.inf
        )
        return itl, pre

    def latency_for_report(self, inp: ControlInput, dec: float, pre: float) -> float:
        return dec if inp.role == "decode" else pre if inp.role == "prefill" else max(dec, pre)

    def budget_for_report(self, inp: ControlInput, itl_b: float, pre_b: float) -> float:
        return itl_b if inp.role == "decode" else pre_b if inp.role == "prefill" else itl_b


def to_event(
    decision: ControlDecision,
    inp: ControlInput,
    *,
    policy: str,
    t_ns: int,
    now: float,
) -> ClockDecision:
    """The bus record of a decision (``schemas.clock.ClockDecision``)."""
    return ClockDecision(
        t_ns=t_ns,
        instance=inp.instance,
        role=inp.role,
        policy=policy,
        clock_mhz=decision.clock_mhz,
        reason=f"{decision.rule}: {decision.reason}",
        predicted_latency_s=decision.predicted_latency_s,
        budget_s=decision.budget_s,
        predicted_power_w=decision.predicted_power_w,
        telemetry_age_s=now - inp.t,
    )
