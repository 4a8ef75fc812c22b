"""EcoFreq as published: lowest clock whose predicted latency fits the budget.

A non-empty waiting queue forces the maximum clock; the decode budget is the
ITL SLO, the prefill budget the TTFT SLO minus the longest wait so far (both
less the SLO margin). The clocks are walked from low to high; the first that
fits wins, else the maximum. ``levels`` restricts the walk (the published
deployment used two: about 71% of the maximum and the maximum). This is the
baseline the ``voltana`` controller is measured against.
"""

from __future__ import annotations

import numpy as np
from voltana.predictor.profile import Profile
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.controllers.base import ControlDecision, ControlInput, ControllerCore

__all__ = ["TWO_LEVEL_LOW_FRACTION", "EcoFreqController"]

TWO_LEVEL_LOW_FRACTION = 1005 / 1410
"""The published low level (1005 of 1410 MHz on an A100), as a fraction of the maximum."""


class EcoFreqController:
    """The published frequency controller (stateless).

    Args:
        config: SLO, clock range, staleness.
        profile: the fitted predictor.
        two_level: walk only {low, max}; low is ``config.min_clock_mhz`` if set,
            else the allowed clock nearest to 71% of the maximum.
    """

    def __init__(self, config: ControllerConfig, profile: Profile, two_level: bool = False) -> None:
        self.core = ControllerCore(config, profile)
        self.name = "ecofreq-2level" if two_level else "ecofreq"
        mask = np.ones(len(self.core.clocks), dtype=bool)
        if two_level:
            hi = int(self.core.clocks[-1])
            want = (
                config.min_clock_mhz
                if config.min_clock_mhz is not None
                else round(hi * TWO_LEVEL_LOW_FRACTION)
            )
            lo_i = int(np.argmin(np.abs(self.core.clocks - want)))
            mask[:] = False
            mask[[lo_i, len(mask) - 1]] = True
        self.levels = mask

    def decide(self, inp: ControlInput, now: float) -> ControlDecision:
        core = self.core
        safe = core.fail_safe(inp, now)
        if safe is not None:
            return safe
        if inp.queue_reqs:
            return core.safe("queue", f"{inp.queue_reqs} requests waiting")
        dec_l, pre_l, _energy, power = core.predict(inp)
        itl_b, pre_b = core.budgets(inp)
        fits = (dec_l <= itl_b) & (pre_l <= pre_b) & self.levels
        budget = core.budget_for_report(inp, itl_b, pre_b)
        if fits.any():
            i = int(np.argmax(fits))  # the lowest clock that fits
            rule, why = "feasible", "lowest clock predicted to fit the budget"
        else:
            i = len(core.clocks) - 1
            rule, why = "infeasible", "no clock fits the budget: maximum"
        lat = core.latency_for_report(inp, float(dec_l[i]), float(pre_l[i]))
        return ControlDecision(
            clock_mhz=int(core.clocks[i]),
            rule=rule,
            reason=f"{why} ({lat * 1e3:.1f} ms vs {budget * 1e3:.1f} ms)",
            predicted_latency_s=lat,
            budget_s=budget,
            predicted_power_w=float(power[i]),
        )

    def reset(self) -> None:
        """Stateless."""
