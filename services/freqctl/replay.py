"""Replay: re-run clock decisions from recorded bus events and compare with what happened.

The JetStream event log keeps every telemetry message, router state, clock
state and controller decision. Feeding them, in order, through the very same
pure pieces the freqctl service uses (``build_input`` and the controllers from
``make_controller``) reproduces each decision, or shows what another policy or
SLO would have decided from the same inputs. Time is the event's arrival time
(JetStream's storage timestamp), the ``now`` the live service saw.

Only telemetry-triggered decisions are replayed; decisions the service took on
its staleness tick (no telemetry at all) have no input event to replay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from voltana.predictor.profile import Profile
from voltana.schemas.clock import ClockDecision, ClockState
from voltana.schemas.config import ControllerConfig
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.freqctl.controllers import ClockController, ControlDecision, make_controller
from voltana.services.freqctl.core import build_input, router_brought_work


@dataclass(frozen=True, slots=True)
class Divergence:
    """A recorded decision the replay did not reproduce."""

    at_s: float
    instance: str
    recorded_mhz: int
    replayed_mhz: int
    recorded_reason: str
    replayed_reason: str


@dataclass
class ReplayReport:
    """What a replay found, per instance and overall."""

    decisions: Counter[str] = field(default_factory=Counter)
    compared: Counter[str] = field(default_factory=Counter)
    agreed: Counter[str] = field(default_factory=Counter)
    clocks: dict[str, Counter[int]] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        n = sum(self.compared.values())
        return sum(self.agreed.values()) / n if n else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed_decisions": dict(self.decisions),
            "compared_with_recorded": dict(self.compared),
            "agreed": dict(self.agreed),
            "agreement": self.agreement,
            "replayed_clock_histogram_mhz": {
                k: dict(sorted(v.items())) for k, v in self.clocks.items()
            },
            "divergences": len(self.divergences),
        }


@dataclass
class _Inst:
    controller: ClockController
    config: ControllerConfig
    router: InstanceState | None = None
    router_at_s: float | None = None
    tel: InstanceTelemetry | None = None
    tel_at_s: float = 0.0
    node_gpu: tuple[str, int] | None = None
    last: ControlDecision | None = None


class Replayer:
    """Feeds recorded events through fresh controllers, one per instance.

    Args:
        profile: the profile the controllers predict with.
        config_for: the controller config per instance (what the live service had, or
            a what-if).
        keep_divergences: how many divergences to keep in the report.
    """

    def __init__(
        self,
        profile: Profile,
        config_for: Callable[[str], ControllerConfig],
        *,
        keep_divergences: int = 100,
    ) -> None:
        self.profile = profile
        self.config_for = config_for
        self.keep = keep_divergences
        self.report = ReplayReport()
        self._inst: dict[str, _Inst] = {}
        self._locked: dict[tuple[str, int], int | None] = {}

    def _get(self, instance: str) -> _Inst:
        inst = self._inst.get(instance)
        if inst is None:
            cfg = self.config_for(instance)
            inst = _Inst(make_controller(cfg, self.profile), cfg)
            self._inst[instance] = inst
        return inst

    def feed(self, at_s: float, msg: object) -> ControlDecision | None:
        """One recorded event, received at ``at_s`` (wall seconds). Returns a replayed decision."""
        if isinstance(msg, InstanceTelemetry):
            inst = self._get(msg.instance)
            inst.tel, inst.tel_at_s = msg, at_s
            if msg.gpus:
                inst.node_gpu = (msg.node, msg.gpus[0])
            return self._decide(inst, at_s)
        if isinstance(msg, InstanceState):
            inst = self._get(msg.instance)
            prev = inst.router
            inst.router, inst.router_at_s = msg, at_s
            if inst.tel is not None and router_brought_work(prev, msg):
                return self._decide(inst, at_s)  # the service's wake on dispatch
        elif isinstance(msg, ClockState):
            self._locked[(msg.node, msg.gpu)] = msg.locked_clock_mhz
        elif isinstance(msg, GpuTelemetry):
            # the service reads the lock from GPU readings too (whichever came last); in
            # a dry run they say "none" while the actuator's state says what it would lock
            if any(i.node_gpu == (msg.node, msg.gpu) for i in self._inst.values()):
                self._locked[(msg.node, msg.gpu)] = msg.locked_clock_mhz
        elif isinstance(msg, ClockDecision):
            self._compare(at_s, msg)
        return None

    def _decide(self, inst: _Inst, at_s: float) -> ControlDecision:
        tel = inst.tel
        assert tel is not None  # decisions follow the instance's first telemetry
        current = self._locked.get(inst.node_gpu) if inst.node_gpu else None
        inp = build_input(
            tel,
            received_s=inst.tel_at_s,
            router=inst.router,
            router_received_s=inst.router_at_s,
            now_s=at_s,
            stale_after_s=inst.config.stale_after_s,
            current_clock_mhz=current,
        )
        decision = inst.controller.decide(inp, at_s)
        inst.last = decision
        self.report.decisions[tel.instance] += 1
        self.report.clocks.setdefault(tel.instance, Counter())[decision.clock_mhz] += 1
        return decision

    def _compare(self, at_s: float, rec: ClockDecision) -> None:
        inst = self._inst.get(rec.instance)
        if inst is None or inst.last is None or rec.role == "unknown":
            return
        self.report.compared[rec.instance] += 1
        if inst.last.clock_mhz == rec.clock_mhz:
            self.report.agreed[rec.instance] += 1
        elif len(self.report.divergences) < self.keep:
            self.report.divergences.append(
                Divergence(
                    at_s,
                    rec.instance,
                    rec.clock_mhz,
                    inst.last.clock_mhz,
                    rec.reason,
                    inst.last.reason,
                )
            )

    def run(self, events: Iterable[tuple[float, object]]) -> ReplayReport:
        for at_s, msg in events:
            self.feed(at_s, msg)
        return self.report
