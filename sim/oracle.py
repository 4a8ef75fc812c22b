"""The oracle reference: what a clairvoyant per-iteration clock choice would spend.

Not a deployable policy and not used by any service. For every iteration the
simulator is about to run, the oracle sees the exact plan and the noise-free
ground-truth GPU model (which no controller may read) and picks, with no lag
and no switching cost, among the clocks that keep the SLO, the one of least
*energy above the idle floor* ``E(f) - P_idle(f_min) * t(f)``. Over a fixed
window every GPU burns at least its parked idle power, so the time an
iteration saves is not free: it is spent idling at ``P_idle(f_min)``. (Plain
per-iteration energy ``E(f)`` bottoms out near 900 MHz on the H100 model,
while the energy above the idle floor keeps falling to the lowest clock for
decode; minimising ``E(f)`` per iteration over-clocks.) The SLO conditions:

- decode: the step time is within the ITL SLO (no margin);
- prefill: every request of the batch that completes in it, and every request
  still waiting behind it (at its own max-clock prefill time), still makes the
  TTFT SLO after the KV transfer;
- idle: the lowest clock at once, woken for free.

Routing is least-load prefill and round-robin decode. What it bounds: the
energy of the clock-control lever alone on this trace, cluster and SLO under
that routing, with perfect knowledge. It is a reference, not a proof of
optimality: a policy may beat it by routing (consolidation) or by missing SLOs
the oracle keeps, and the greedy per-iteration choice is not a global optimum
over the whole schedule.
"""

from __future__ import annotations

import numpy as np
from voltana.schemas.config import SloConfig
from voltana.services.emulator.engine import BatchPlan, Phase
from voltana.services.emulator.gpu_model import GPUS, MODELS, GpuModel
from voltana.sim.instance import Instance

__all__ = ["OracleChooser"]


class OracleChooser:
    """Per-iteration minimum-energy clock meeting the SLO, from the ground truth.

    Args:
        gpu, model, tp: the cluster's hardware (the noise-free model is built here).
        slo: the SLO to keep (the margin is ignored: the oracle knows the truth).
        clock_stride: evaluate every n-th supported clock (2 = 30 MHz on an H100).
    """

    def __init__(
        self, gpu: str, model: str, tp: int, slo: SloConfig, clock_stride: int = 2
    ) -> None:
        self.gm = GpuModel(GPUS[gpu], MODELS[model], tp, noise=0.0)
        asc = sorted(self.gm.supported_clocks_mhz)
        picked = asc[::-1][::clock_stride]
        if asc[0] not in picked:
            picked.append(asc[0])
        self.clocks = np.array(sorted(picked), dtype=np.int64)
        self.slo = slo
        self.idle_floor_w = self.gm.idle_power_w(self.gm.min_clock_mhz)
        self._dec_cache: dict[tuple[int, int], int] = {}
        self._pre_cache: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
        self._max_prefill_cache: dict[int, float] = {}

    def _table(self, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        t = np.empty(len(self.clocks))
        e = np.empty(len(self.clocks))
        for i, c in enumerate(self.clocks):
            cost = (
                self.gm.prefill_batch(int(c), plan.chunks)
                if plan.kind == "prefill"
                else self.gm.decode(int(c), plan.batch_size, plan.kv_tokens)
            )
            t[i], e[i] = cost.time_s, cost.energy_j - self.idle_floor_w * cost.time_s
        return t, e

    @staticmethod
    def _pick(t: np.ndarray, e: np.ndarray, budget_s: float) -> int:
        ok = t <= budget_s
        if ok.any():
            return int(np.argmin(np.where(ok, e, np.inf)))
        near = t <= float(t.min()) * 1.01
        return int(np.argmin(np.where(near, e, np.inf)))

    def _max_prefill_s(self, tokens: int) -> float:
        key = -(-tokens // 64) * 64
        v = self._max_prefill_cache.get(key)
        if v is None:
            v = self._max_prefill_cache[key] = self.gm.prefill(self.gm.max_clock_mhz, key).time_s
        return v

    def __call__(self, inst: Instance, plan: BatchPlan, now: float) -> int:
        if plan.kind == "decode":
            key = (plan.batch_size, plan.kv_tokens // 1024)
            c = self._dec_cache.get(key)
            if c is None:
                t, e = self._table(plan)
                c = self._dec_cache[key] = int(self.clocks[self._pick(t, e, self.slo.itl_s)])
            return c
        # prefill: the tightest remaining slack among requests this iteration completes
        # and those still waiting behind it.
        reqs = inst.engine.requests
        budget = np.inf
        for rid, (n, ctx) in zip(plan.rids, plan.chunks, strict=True):
            r = reqs[rid]
            if n + ctx >= r.prompt_tokens:
                deadline = r.arrival_s + self.slo.ttft_s - self.gm.kv_transfer_s(r.prompt_tokens)
                budget = min(budget, deadline - now)
        for r in reqs.values():
            if r.phase is Phase.WAITING:
                own = self._max_prefill_s(r.prompt_tokens) + self.gm.kv_transfer_s(r.prompt_tokens)
                budget = min(budget, r.arrival_s + self.slo.ttft_s - now - own)
        pkey = tuple((-(-n // 32) * 32, -(-c // 256) * 256) for n, c in plan.chunks)
        tab = self._pre_cache.get(pkey)
        if tab is None:
            tab = self._pre_cache[pkey] = self._table(plan)
        return int(self.clocks[self._pick(tab[0], tab[1], budget)])
