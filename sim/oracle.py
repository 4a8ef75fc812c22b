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

- decode: every request of the batch keeps its mean ITL within the SLO: its
  remaining allowance ``first_token + SLO * (out - 1) - now`` spread over its
  remaining tokens (the oracle knows each request's output length);
- prefill: every request of the batch (its later chunks at the top clock) and
  every request waiting behind it (FIFO, each at the top clock) still makes
  the TTFT SLO after its KV transfer; and no prefill iteration takes more
  than half the TTFT SLO (the oracle does not foresee arrivals, so it leaves
  room for a request that arrives just after an iteration starts); while requests
  queue behind the batch it runs at the fastest clock (least energy among those
  within 1% of the fastest time), so no backlog builds up from a slow clock;
- idle: the lowest clock at once, woken for free.

The oracle's run uses noise-free hardware (perfect knowledge means knowing
every iteration's time exactly). Routing is ``ecoroute`` on both sides (the
consolidating what-if router; on the Azure slice it gave the oracle 15% less
energy than least-load/round-robin or the tile packer). What it bounds: the
energy of the clock-control lever alone on this trace, cluster and SLO under
that routing, with perfect knowledge. It is a reference, not a proof of
optimality: a policy may beat it by routing (consolidation) or by missing SLOs
the oracle keeps, and the greedy per-iteration choice is not a global optimum
over the whole schedule.
"""

from __future__ import annotations

import numpy as np
from voltana.groundtruth.engine import BatchPlan, Phase, iteration_cost
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel, GpuSpec
from voltana.schemas.config import SloConfig
from voltana.sim.instance import Instance

__all__ = ["OracleChooser"]


class OracleChooser:
    """Per-iteration minimum-energy clock meeting the SLO, from the ground truth.

    Args:
        gpu, model, tp: the cluster's hardware (the noise-free model is built here).
        slo: the SLO to keep (the margin is ignored: the oracle knows the truth).
        clock_stride: evaluate every n-th supported clock (2 = 30 MHz on an H100).
        spec: the GPU's constants, if not the built-in ``GPUS[gpu]`` (a spec file).
    """

    def __init__(
        self,
        gpu: str,
        model: str,
        tp: int,
        slo: SloConfig,
        clock_stride: int = 2,
        spec: GpuSpec | None = None,
    ) -> None:
        self.gm = GpuModel(spec or GPUS[gpu], MODELS[model], tp, noise=0.0)
        asc = sorted(self.gm.supported_clocks_mhz)
        picked = asc[::-1][::clock_stride]
        if asc[0] not in picked:
            picked.append(asc[0])
        self.clocks = np.array(sorted(picked), dtype=np.int64)
        self.slo = slo
        self.idle_floor_w = self.gm.idle_power_w(self.gm.min_clock_mhz)
        self._dec_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._pre_cache: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
        self._max_prefill_cache: dict[int, float] = {}

    def _table(self, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        t = np.empty(len(self.clocks))
        e = np.empty(len(self.clocks))
        for i, c in enumerate(self.clocks):
            cost = iteration_cost(self.gm, plan, int(c))
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
        reqs = inst.engine.requests
        if plan.kind == "decode":
            # Mean ITL <= SLO  <=>  finish - first_token <= SLO * (out - 1): spread each
            # request's remaining allowance over its remaining tokens (known to the oracle).
            itl = self.slo.itl_s
            budget = np.inf
            for rid in plan.rids:
                r = reqs[rid]
                left = r.output_tokens - r.generated_tokens
                if left > 0 and r.first_token_s is not None:
                    allow = r.first_token_s + itl * (r.output_tokens - 1) - now
                    budget = min(budget, allow / left)
            key = (plan.batch_size, plan.kv_tokens // 1024)
            tab = self._dec_cache.get(key)
            if tab is None:
                tab = self._dec_cache[key] = self._table(plan)
            return int(self.clocks[self._pick(tab[0], tab[1], min(budget, itl))])
        # prefill: the tightest slack among the requests in this batch (their remaining
        # chunks at the top clock) and those waiting behind it (FIFO, at the top clock).
        ttft = self.slo.ttft_s
        budget = ttft / 2  # leaves half the SLO to a request arriving just after the start
        for rid, (n, ctx) in zip(plan.rids, plan.chunks, strict=True):
            r = reqs[rid]
            rest = r.prompt_tokens - ctx - n
            later = self._max_prefill_s(rest) if rest > 0 else 0.0
            xfer = self.gm.kv_transfer_s(r.prompt_tokens)
            budget = min(budget, r.arrival_s + ttft - now - xfer - later)
        ahead = 0.0
        queued = False
        for r in reqs.values():
            if r.phase is Phase.WAITING:
                queued = True
                ahead += self._max_prefill_s(r.prompt_tokens)
                xfer = self.gm.kv_transfer_s(r.prompt_tokens)
                budget = min(budget, r.arrival_s + ttft - now - ahead - xfer)
        pkey = tuple((-(-n // 32) * 32, -(-c // 256) * 256) for n, c in plan.chunks)
        ptab = self._pre_cache.get(pkey)
        if ptab is None:
            ptab = self._pre_cache[pkey] = self._table(plan)
        if queued:  # a queue builds: keep up (least energy among the fastest clocks)
            budget = -np.inf
        return int(self.clocks[self._pick(ptab[0], ptab[1], budget)])
