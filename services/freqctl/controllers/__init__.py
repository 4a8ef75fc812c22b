"""Clock controllers: pure policies from engine state to a GPU clock.

- :mod:`.base`     ``ControlInput``, ``ControlDecision``, ``ClockController``, fail-safe rules
- :mod:`.static`   ``static``, ``static-max``, ``static-min`` baselines
- :mod:`.ecofreq`  the published EcoFreq (multi-level and two-level)
- :mod:`.voltana`  minimum predicted energy within the SLO, closed loop
- :mod:`.factory`  ``make_controller(ControllerConfig, Profile)``
"""

from voltana.services.freqctl.controllers.base import (
    ClockController,
    ControlDecision,
    ControlInput,
    to_event,
)
from voltana.services.freqctl.controllers.ecofreq import EcoFreqController
from voltana.services.freqctl.controllers.factory import POLICIES, make_controller
from voltana.services.freqctl.controllers.static import StaticController
from voltana.services.freqctl.controllers.voltana import VoltanaController, VoltanaTuning

__all__ = [
    "POLICIES",
    "ClockController",
    "ControlDecision",
    "ControlInput",
    "EcoFreqController",
    "StaticController",
    "VoltanaController",
    "VoltanaTuning",
    "make_controller",
    "to_event",
]
