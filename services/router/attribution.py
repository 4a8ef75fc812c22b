"""Energy per request: how a GPU's measured energy is split among the requests it served.

Pure and shared: the live router (``energy_live.LiveAttribution``) and the
simulator (``sim.energy``) book every interval through the same
:class:`EnergyBook` with the same :class:`AttributionRule`. The rule, with its
reasoning, is in docs/energy.md:

- While a request is in a GPU's batch it holds a *weight*, its share of the work:
  prefill, the tokens it computes there with their context
  (:meth:`AttributionRule.prefill_work`); decode, per step, ``1 + kv / kv_tokens``
  for a sequence of ``kv`` cached tokens (:meth:`AttributionRule.decode_weight`).
- A GPU's measured energy over an interval splits into a busy part (the fraction
  of the interval in which some request held a weight) and an idle part. The busy
  part goes to the requests in proportion to weight x time in the interval.
- The idle part is kept as cluster overhead (``idle="overhead"``, unattributed),
  or carried to the next busy interval of the same GPU and split there like busy
  energy (``idle="spread"``: being ready for the next request is part of its cost).

Everything booked is either attributed to a request or unattributed, so
``attributed_j + unattributed_j == measured_j`` by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

__all__ = [
    "AttributionRule",
    "DecodeSteps",
    "EnergyBook",
    "IdleMode",
    "Phase",
    "RequestEnergy",
]

IdleMode = Literal["overhead", "spread"]
"""What happens to a GPU's idle energy: kept as overhead, or spread over the next requests."""

Phase = Literal["prefill", "decode"]

IDLE_MODES: tuple[IdleMode, ...] = ("overhead", "spread")


class AttributionRule(msgspec.Struct, frozen=True, kw_only=True):
    """The weights of the split.

    ``attention_tokens``: the context length at which a prefill token's attention
    costs as much as its linear layers (2 x parameters / (4 x layers x hidden
    size): about 30,000 tokens for Llama-3.1-8B and 70B alike).
    ``kv_tokens``: the KV length at which a decode step of a sequence weighs
    twice a fresh one (its KV reads equal its share of the weight reads at a
    batch of about 32 on Llama-3.1-8B).
    """

    attention_tokens: float = 30_000.0
    kv_tokens: float = 4_096.0
    idle: IdleMode = "overhead"

    def __post_init__(self) -> None:
        if not self.attention_tokens > 0 or not self.kv_tokens > 0:
            raise ValueError("attention_tokens and kv_tokens must be positive")
        if self.idle not in IDLE_MODES:
            raise ValueError(f"idle must be one of {', '.join(IDLE_MODES)}, got {self.idle!r}")

    def prefill_work(self, new_tokens: float, context_tokens: float = 0.0) -> float:
        """Work of computing ``new_tokens`` after ``context_tokens`` already cached.

        A token at context position k costs ``1 + k / attention_tokens``.
        """
        n = max(new_tokens, 0.0)
        return n + (n * context_tokens + n * (n + 1) / 2) / self.attention_tokens

    def decode_weight(self, kv_tokens: float) -> float:
        """Weight of one sequence in one decode step with ``kv_tokens`` cached."""
        return 1.0 + max(kv_tokens, 0.0) / self.kv_tokens

    def decode_work(self, kv_start: float, steps: float) -> float:
        """Sum of the step weights over ``steps`` steps starting at ``kv_start`` cached tokens."""
        s = max(steps, 0.0)
        return s + (s * kv_start + s * (s - 1) / 2) / self.kv_tokens


@dataclass(slots=True)
class RequestEnergy:
    """One request's energy by phase (J); ``idle_j`` is its share of idle energy (spread mode)."""

    prefill_j: float = 0.0
    decode_j: float = 0.0
    idle_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.prefill_j + self.decode_j + self.idle_j

    def add(self, phase: Phase, busy_j: float, idle_j: float) -> None:
        if phase == "prefill":
            self.prefill_j += busy_j
        else:
            self.decode_j += busy_j
        self.idle_j += idle_j


@dataclass(slots=True)
class EnergyBook:
    """Every joule of a run, booked interval by interval, GPU by GPU (``meter``).

    ``requests`` holds the energy of each request so far (keyed by request id);
    ``unattributed_j`` is idle energy kept as overhead plus idle energy still
    waiting for a request (spread mode), so nothing measured is lost.
    """

    rule: AttributionRule = field(default_factory=AttributionRule)
    requests: dict[str, RequestEnergy] = field(default_factory=dict)
    measured_j: float = 0.0
    attributed_j: float = 0.0
    overhead_j: float = 0.0
    pool_j: dict[str, float] = field(default_factory=dict)

    @property
    def unattributed_j(self) -> float:
        return self.overhead_j + sum(self.pool_j.values())

    def request(self, rid: str) -> RequestEnergy:
        e = self.requests.get(rid)
        if e is None:
            e = self.requests[rid] = RequestEnergy()
        return e

    def idle(self, meter: str, energy_j: float) -> None:
        """Energy of a stretch in which the GPU served nobody."""
        self.measured_j += energy_j
        if self.rule.idle == "spread":
            self.pool_j[meter] = self.pool_j.get(meter, 0.0) + energy_j
        else:
            self.overhead_j += energy_j

    def take_pool(self, meter: str) -> float:
        """The idle energy waiting on ``meter`` for the next busy interval (spread mode)."""
        return self.pool_j.pop(meter, 0.0)

    def interval(
        self,
        meter: str,
        energy_j: float,
        busy_fraction: float,
        weights: Mapping[tuple[str, Phase], float],
    ) -> None:
        """Split one interval's energy: ``weights`` are weight x time per (request, phase).

        ``busy_fraction`` (0..1) is the part of the interval in which some request
        held a weight; with no positive weight the whole interval is idle.
        """
        total_w = sum(w for w in weights.values() if w > 0)
        if total_w <= 0 or busy_fraction <= 0:
            self.idle(meter, energy_j)
            return
        frac = min(busy_fraction, 1.0)
        busy = energy_j * frac
        self.idle(meter, energy_j - busy)
        self.measured_j += busy
        carried = self.take_pool(meter)
        for (rid, phase), w in weights.items():
            if w > 0:
                share = w / total_w
                self.request(rid).add(phase, busy * share, carried * share)
        self.attributed_j += busy + carried

    def take(self, rid: str) -> RequestEnergy:
        """Remove and return one request's energy (zero if it was never booked)."""
        return self.requests.pop(rid, None) or RequestEnergy()


@dataclass(slots=True)
class DecodeSteps:
    """The decode rule in closed form over many steps of one GPU, O(1) per step and per request.

    In continuous batching every running sequence is in every decode step and
    its KV grows by one token per step, so a request's share of step s,
    ``E_s (1 + kv_s / K) / W_s`` with ``W_s = batch + kv_sum / K``, sums over its
    steps to two running sums: ``A0 = sum E_s / W_s`` and ``A1 = sum s E_s / W_s``.
    Equal to booking every step through :meth:`EnergyBook.interval` (tested), at
    a fraction of the cost: the simulator books millions of steps.
    """

    rule: AttributionRule
    step_no: int = 0
    a0: float = 0.0
    a1: float = 0.0
    i0: float = 0.0  # the same two sums over the idle energy carried into each step
    i1: float = 0.0

    def mark(self) -> tuple[int, float, float, float, float]:
        """The sums before the next step: take it when a request joins the batch."""
        return (self.step_no, self.a0, self.a1, self.i0, self.i1)

    def step(self, busy_j: float, carried_j: float, batch: int, kv_sum: float) -> None:
        """Book one step: its energy, the idle energy carried into it, its batch and KV sum."""
        w = batch + kv_sum / self.rule.kv_tokens
        if w > 0:
            s = self.step_no
            self.a0 += busy_j / w
            self.a1 += s * busy_j / w
            self.i0 += carried_j / w
            self.i1 += s * carried_j / w
        self.step_no += 1

    def energy(
        self, mark: tuple[int, float, float, float, float], kv_first: float
    ) -> tuple[float, float]:
        """(busy J, carried idle J) of a request that joined at ``mark`` with ``kv_first``
        cached tokens at its first step, up to the last booked step."""
        s0, a0, a1, i0, i1 = mark
        k = self.rule.kv_tokens
        c = 1.0 + (kv_first - s0) / k
        return (
            c * (self.a0 - a0) + (self.a1 - a1) / k,
            c * (self.i0 - i0) + (self.i1 - i1) / k,
        )
