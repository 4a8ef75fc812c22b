"""Every message voltana puts on the bus, and the subject names it uses.

All messages are frozen, keyword-only msgspec Structs carrying a schema version
(``v``) and a wall-clock timestamp (``t_ns``, Unix nanoseconds). They travel as
msgpack; :func:`voltana.schemas.codec.to_json` renders any of them for humans.
New fields go last with defaults so older readers keep working.
"""

from voltana.schemas.base import SCHEMA_VERSION, Event, Role, now_ns
from voltana.schemas.clock import ClockCommand, ClockDecision, ClockState, ResetClock, SetClock
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.schemas.router import InstanceState, RequestRecord, RouteDecision
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry, LatencyWindow

__all__ = [
    "SCHEMA_VERSION",
    "ClockCommand",
    "ClockDecision",
    "ClockState",
    "ControllerConfig",
    "Event",
    "GpuTelemetry",
    "InstanceState",
    "InstanceTelemetry",
    "LatencyWindow",
    "RequestRecord",
    "ResetClock",
    "Role",
    "RouteDecision",
    "SetClock",
    "SloConfig",
    "now_ns",
]
