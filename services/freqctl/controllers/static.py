"""Static clocks: the baselines (always max, always min, or one given clock)."""

from __future__ import annotations

from voltana.predictor.profile import Profile
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.controllers.base import ControlDecision, ControlInput, ControllerCore

__all__ = ["StaticController"]


class StaticController:
    """Always the same clock, whatever the telemetry says.

    Args:
        config: ``static_clock_mhz`` (rounded to the nearest allowed clock);
            None means the GPU's default clocks (no lock).
        profile: supplies the clock table and the power prediction.
        mode: ``"max"``, ``"min"`` or ``"given"``.
    """

    def __init__(self, config: ControllerConfig, profile: Profile, mode: str = "given") -> None:
        self._core = ControllerCore(config, profile)
        clocks = [int(c) for c in self._core.clocks]
        self.default_clocks = False
        if mode == "max":
            self.name, self.clock_mhz = "static-max", clocks[-1]
        elif mode == "min":
            self.name, self.clock_mhz = "static-min", clocks[0]
        else:
            self.name = "static"
            if config.static_clock_mhz is None:
                self.clock_mhz, self.default_clocks = clocks[-1], True
            else:
                want = config.static_clock_mhz
                self.clock_mhz = min(clocks, key=lambda c: (abs(c - want), -c))

    def decide(self, inp: ControlInput, now: float) -> ControlDecision:
        reason = "default clocks" if self.default_clocks else f"fixed at {self.clock_mhz} MHz"
        return ControlDecision(
            clock_mhz=self.clock_mhz,
            rule="static",
            reason=reason,
            default_clocks=self.default_clocks,
        )

    def reset(self) -> None:
        """Stateless."""
