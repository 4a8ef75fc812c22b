"""Colocated serving in the simulator: ``Nu`` clusters of unified instances.

Each unified instance runs SGLang's non-PD scheduler (prefill and decode on the same
GPUs, chunked prefill mixed into decode batches: ``groundtruth.mixed``). The router
picks one worker per request, as sglang-router does without ``--pd-disaggregation``,
with the policy's decode-side routing over the unified instances' views; the first
token comes at the end of the iteration that finishes the prompt (no KV transfer).
Clock controllers see ``role="unified"`` inputs (queued prompt tokens and the running
batch together) and pick one clock per GPU that must keep both TTFT and ITL.
Everything else (events, telemetry, clock lag, energy) is the PD simulator's.
"""

from __future__ import annotations

from typing import Any

from voltana.common.errors import ConfigError
from voltana.groundtruth.engine import AdmissionError
from voltana.services.router.policies.base import RouteRequest
from voltana.sim.config import SimConfig
from voltana.sim.core import Simulator
from voltana.sim.instance import Instance
from voltana.sim.metrics import RequestOutcome

__all__ = ["ColocatedSimulator", "simulator_class"]


class ColocatedSimulator(Simulator):
    """One run of one policy on unified instances (see the module docstring)."""

    def __init__(self, config: SimConfig, **kw: Any) -> None:
        c = config.cluster
        if c.n_unified < 1 or c.n_prefill or c.n_decode:
            raise ConfigError(
                f"a colocated cluster has unified instances only, got {c.label} "
                f"({c.n_prefill} prefill, {c.n_decode} decode, {c.n_unified} unified)"
            )
        if kw.get("oracle") is not None:
            raise ConfigError("the oracle reference is defined for PD clusters only")
        super().__init__(config, **kw)

    def _arrive(self, rr: RouteRequest, out: RequestOutcome, t: float) -> None:
        name = self.router.select_unified(rr, t)
        if name is None:
            self._open -= 1  # rejected: stays unfinished, counted as a miss
            return
        u = self.instances[name]
        try:
            u.engine.submit(
                rr.request_id,
                prompt_tokens=rr.input_tokens,
                max_new_tokens=rr.max_new_tokens,
                now=t,
            )
        except AdmissionError:
            self._open -= 1  # rejected: never finishes, counted as a miss
            return
        out.prefill = out.decode = name
        self.router.unified_dispatched(name, rr, t)
        self._kick(u, t)
        if self.cfg.control == "telemetry" and self.cfg.wake_on_dispatch:
            self._decide(u, t)  # as the PD simulator does for a prefill dispatch

    def _iteration_done(self, inst: Instance, t: float) -> None:
        run = inst.finish_iteration()
        self.energy.iteration(inst, run)
        plan = run.plan
        events = inst.engine.complete(plan, t, tokens=False)
        self._token_gaps(inst, plan.rids, t)  # the requests that were decoding
        for ev in events:
            if ev.kind == "first_token":
                out = self.outcomes[ev.rid]
                out.prefill_done_s = out.first_token_s = t
                self._last_tok[ev.rid] = t
                inst.observe_ttft(t, t - out.arrival_s)
                self.energy.join_decode(inst, ev.rid, out.input_tokens + 1)
                self.router.unified_first_token(inst.name, self._route[ev.rid])
        for ev in events:
            if ev.kind == "finished":
                self._finish(inst, ev.rid, t)
        self._kick(inst, t)


def simulator_class(config: SimConfig) -> type[Simulator]:
    """The simulator for the cluster: colocated for ``Nu``, PD for ``NpMd``."""
    return ColocatedSimulator if config.cluster.n_unified else Simulator
