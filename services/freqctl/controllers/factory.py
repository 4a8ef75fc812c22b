"""Build a clock controller from its live configuration."""

from __future__ import annotations

from voltana.common.errors import ConfigError
from voltana.predictor.profile import Profile
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.controllers.base import ClockController
from voltana.services.freqctl.controllers.ecofreq import EcoFreqController
from voltana.services.freqctl.controllers.static import StaticController
from voltana.services.freqctl.controllers.voltana import VoltanaController

__all__ = ["POLICIES", "make_controller"]

POLICIES: tuple[str, ...] = (
    "voltana",
    "ecofreq",
    "ecofreq-2level",
    "static",
    "static-max",
    "static-min",
)


def make_controller(config: ControllerConfig, profile: Profile) -> ClockController:
    """The controller named by ``config.policy``, predicting with ``profile``.

    Raises:
        ConfigError: unknown policy.
    """
    policy = config.policy
    if policy == "voltana":
        return VoltanaController(config, profile)
    if policy == "ecofreq":
        return EcoFreqController(config, profile)
    if policy == "ecofreq-2level":
        return EcoFreqController(config, profile, two_level=True)
    if policy == "static":
        return StaticController(config, profile, mode="given")
    if policy == "static-max":
        return StaticController(config, profile, mode="max")
    if policy == "static-min":
        return StaticController(config, profile, mode="min")
    raise ConfigError(f"unknown controller policy {policy!r} (choose from {', '.join(POLICIES)})")
