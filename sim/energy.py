"""Energy per request in the simulator: every joule of every instance through the shared rule.

The simulator knows each iteration's batch exactly, so it books the rule of
:mod:`voltana.services.router.attribution` iteration by iteration: a prefill
iteration's energy goes to its chunks by their work (tokens with context), a
decode step's to its sequences by ``1 + kv / kv_tokens`` (in closed form,
:class:`~voltana.services.router.attribution.DecodeSteps`), and the energy
between iterations is idle. The live router books the same rule on coarser
intervals (energy-counter samples) with the spans it can see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.groundtruth.engine_types import BatchPlan
from voltana.services.router.attribution import (
    AttributionRule,
    DecodeSteps,
    EnergyBook,
    Phase,
    RequestEnergy,
)
from voltana.sim.instance import Instance, IterationRun

__all__ = ["SimEnergy"]

_Mark = tuple[int, float, float, float, float]


@dataclass(slots=True)
class SimEnergy:
    """The energy book of one simulated run."""

    rule: AttributionRule = field(default_factory=AttributionRule)
    book: EnergyBook = field(init=False)
    steps: dict[str, DecodeSteps] = field(default_factory=dict)
    booked_j: dict[str, float] = field(default_factory=dict)
    marks: dict[str, tuple[str, _Mark, float]] = field(default_factory=dict)
    joining: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.book = EnergyBook(rule=self.rule)

    def _idle_to(self, inst: Instance, upto_j: float) -> None:
        """Book the instance's energy not yet booked, up to ``upto_j``, as idle."""
        gap = upto_j - self.booked_j.get(inst.name, 0.0)
        if gap > 0:
            self.book.idle(inst.name, gap)
        self.booked_j[inst.name] = max(upto_j, self.booked_j.get(inst.name, 0.0))

    def iteration(self, inst: Instance, run: IterationRun) -> None:
        """Book one finished iteration (call right after ``Instance.finish_iteration``)."""
        # the simulator books millions of iterations: kept to plain dict and float work
        name = inst.name
        energy = run.energy_j
        booked = self.booked_j
        book = self.book
        gap = inst.energy_j - energy - booked.get(name, 0.0)
        if gap > 0:
            book.idle(name, gap)
        plan = run.plan
        if plan.kind == "decode":
            self._decode_step(name, energy, plan.batch_size, plan.kv_tokens)
        elif plan.kind == "prefill":
            work = self.rule.prefill_work
            weights = {
                (rid, "prefill"): work(n, ctx)
                for rid, (n, ctx) in zip(plan.rids, plan.chunks, strict=True)
            }
            book.interval(name, energy, 1.0, weights)
        else:
            self._mixed(name, energy, plan)
        booked[name] = inst.energy_j

    def _decode_step(self, name: str, energy: float, batch: int, kv_tokens: int) -> None:
        book = self.book
        steps = self.steps.get(name)
        if steps is None:
            steps = self.steps[name] = DecodeSteps(self.rule)
        carried = book.take_pool(name) if book.pool_j else 0.0
        steps.step(energy, carried, batch, kv_tokens)
        book.measured_j += energy
        book.attributed_j += energy + carried
        if self.joining:
            for rid, kv_first in self.joining.pop(name, ()):
                self.marks[rid] = (name, steps.mark(), kv_first)

    def _mixed(self, name: str, energy: float, plan: BatchPlan) -> None:
        """A mixed iteration (colocated, SGLang's mixed chunks): prefill chunks and one
        decode step. Its energy splits between the two by the prefill work rule (a decode
        token is one token computed over its context); the decode part is one step of the
        decode batch, so every decode token of a request is a step of its closed form."""
        work = self.rule.prefill_work
        pre: dict[tuple[str, Phase], float] = {}
        w_dec = 0.0
        n_dec = kv_dec = 0
        for rid, (n, ctx) in zip(plan.rids, plan.chunks, strict=True):
            if rid in self.marks:
                w_dec += work(1, ctx)
                n_dec += 1
                kv_dec += ctx
            else:
                pre[(rid, "prefill")] = work(n, ctx)
        w_pre = sum(pre.values())
        e_pre = energy * w_pre / (w_pre + w_dec) if w_pre + w_dec > 0 else energy
        self.book.interval(name, e_pre, 1.0, pre)
        if n_dec:
            self._decode_step(name, energy - e_pre, n_dec, kv_dec)

    def join_decode(self, inst: Instance, rid: str, kv_first: float) -> None:
        """``rid`` joins the decode batch of ``inst`` from its next step, with ``kv_first``
        cached tokens at that step."""
        if inst.running is not None:  # the step in flight was planned without it
            self.joining.setdefault(inst.name, []).append((rid, kv_first))
            return
        steps = self.steps.get(inst.name)
        if steps is None:
            steps = self.steps[inst.name] = DecodeSteps(self.rule)
        self.marks[rid] = (inst.name, steps.mark(), kv_first)

    def finish_decode(self, rid: str) -> None:
        """``rid`` left the decode batch: book its share of every step it was in."""
        mark = self.marks.pop(rid, None)
        if mark is None:
            for lst in self.joining.values():  # finished before its first step
                lst[:] = [x for x in lst if x[0] != rid]
            return
        name, m, kv_first = mark
        busy, carried = self.steps[name].energy(m, kv_first)
        self.book.request(rid).add("decode", busy, carried)

    def close(self, instances: dict[str, Instance]) -> None:
        """End of the run: idle energy up to each instance's end; open requests settled."""
        for rid in list(self.marks):
            self.finish_decode(rid)
        for inst in instances.values():
            self._idle_to(inst, inst.energy_j)

    def energy_of(self, rid: str) -> RequestEnergy:
        return self.book.requests.get(rid) or RequestEnergy()
