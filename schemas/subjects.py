"""The one place subject names are built and parsed.

Subjects run from general to specific. Every token a caller supplies (node,
instance, role) must be a plain ASCII name: letters, digits, ``-`` and ``_``.

| subject | message | publisher |
| --- | --- | --- |
| ``voltana.telemetry.gpu.<node>.<gpu>`` | GpuTelemetry | telemetry |
| ``voltana.telemetry.engine.<role>.<instance>`` | InstanceTelemetry | telemetry |
| ``voltana.router.state.<role>.<instance>`` | InstanceState | router |
| ``voltana.route.decision`` | RouteDecision | router |
| ``voltana.request.done`` | RequestRecord | router |
| ``voltana.clock.set.<node>.<gpu>`` | SetClock or ResetClock | freqctl controller |
| ``voltana.clock.state.<node>.<gpu>`` | ClockState | actuator |
| ``voltana.freqctl.decision.<instance>`` | ClockDecision | freqctl controller |

Request/reply endpoints (``nats.micro`` services, JSON replies) live under
``voltana-svc.`` instead, outside the ``voltana.>`` event log, so the stream never
captures a request nor answers it with a PubAck:

| subject | reply | service |
| --- | --- | --- |
| ``voltana-svc.actuator.<node>.status`` | per-GPU target, lock and lease; outcome and drop counts | actuator |
| ``voltana-svc.freqctl.<name>.status`` | per-instance policy, clock, rule, telemetry age; counts | freqctl controller |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from voltana.schemas.clock import ClockCommand, ClockDecision, ClockState
from voltana.schemas.router import InstanceState, RequestRecord, RouteDecision
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry

ROOT = "voltana"
ALL = f"{ROOT}.>"
"""Every voltana event: what the JetStream event log keeps."""

STREAM_NAME = "VOLTANA"
"""The JetStream stream that keeps every ``voltana.>`` event."""

KV_BUCKET = "voltana-config"
"""The KV bucket with live configuration (keys below)."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class SubjectError(ValueError):
    """A subject token or whole subject that does not follow the scheme."""


def _tok(value: object, what: str) -> str:
    text = str(value)
    if not _TOKEN.fullmatch(text):  # fullmatch: "a\n" and "²" are not tokens
        raise SubjectError(
            f"invalid {what} {text!r}: use letters, digits, '-' and '_' only (no '.', '*', '>' or spaces)"
        )
    return text


# -- builders ---------------------------------------------------------------


def telemetry_gpu(node: str, gpu: int | str) -> str:
    return f"{ROOT}.telemetry.gpu.{_tok(node, 'node')}.{_tok(gpu, 'gpu')}"


def telemetry_engine(role: str, instance: str) -> str:
    return f"{ROOT}.telemetry.engine.{_tok(role, 'role')}.{_tok(instance, 'instance')}"


def router_state(role: str, instance: str) -> str:
    return f"{ROOT}.router.state.{_tok(role, 'role')}.{_tok(instance, 'instance')}"


ROUTE_DECISION = f"{ROOT}.route.decision"
REQUEST_DONE = f"{ROOT}.request.done"


def clock_set(node: str, gpu: int | str) -> str:
    return f"{ROOT}.clock.set.{_tok(node, 'node')}.{_tok(gpu, 'gpu')}"


def clock_state(node: str, gpu: int | str) -> str:
    return f"{ROOT}.clock.state.{_tok(node, 'node')}.{_tok(gpu, 'gpu')}"


def freqctl_decision(instance: str) -> str:
    return f"{ROOT}.freqctl.decision.{_tok(instance, 'instance')}"


# wildcards for subscribers
TELEMETRY_GPU_ALL = f"{ROOT}.telemetry.gpu.>"
TELEMETRY_ENGINE_ALL = f"{ROOT}.telemetry.engine.>"
ROUTER_STATE_ALL = f"{ROOT}.router.state.>"
CLOCK_STATE_ALL = f"{ROOT}.clock.state.>"


def clock_set_node(node: str) -> str:
    """Every clock command addressed to one node (what that node's actuator hears)."""
    return f"{ROOT}.clock.set.{_tok(node, 'node')}.*"


# -- request/reply services (outside the event log) -------------------------

SERVICE_ROOT = "voltana-svc"


def actuator_status(node: str) -> str:
    """Status endpoint of one node's actuator (nats.micro service ``voltana-actuator``)."""
    return f"{SERVICE_ROOT}.actuator.{_tok(node, 'node')}.status"


def freqctl_status(name: str) -> str:
    """Status endpoint of one freqctl controller (nats.micro service ``voltana-freqctl``)."""
    return f"{SERVICE_ROOT}.freqctl.{_tok(name, 'controller name')}.status"


def router_status(node: str) -> str:
    """Status endpoint of one router (nats.micro service ``voltana-router``)."""
    return f"{SERVICE_ROOT}.router.{_tok(node, 'node')}.status"


def telemetry_status(node: str) -> str:
    """Status endpoint of one node's telemetry (nats.micro service ``voltana-telemetry``)."""
    return f"{SERVICE_ROOT}.telemetry.{_tok(node, 'node')}.status"


# -- KV keys ----------------------------------------------------------------


def kv_controller_key(instance: str) -> str:
    """KV key of one instance's ControllerConfig."""
    return f"controller.{_tok(instance, 'instance')}"


KV_DEFAULT_CONTROLLER_KEY = "controller.default"
"""KV key of the ControllerConfig used by instances without their own key."""


# -- parsing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    """A parsed subject: its kind (``telemetry.gpu``, ``clock.set`` ...) and named tokens."""

    kind: str
    fields: dict[str, str]
    message_type: Any


_PATTERNS: list[tuple[str, tuple[str, ...], Any]] = [
    ("telemetry.gpu", ("node", "gpu"), GpuTelemetry),
    ("telemetry.engine", ("role", "instance"), InstanceTelemetry),
    ("router.state", ("role", "instance"), InstanceState),
    ("route.decision", (), RouteDecision),
    ("request.done", (), RequestRecord),
    ("clock.set", ("node", "gpu"), ClockCommand),
    ("clock.state", ("node", "gpu"), ClockState),
    ("freqctl.decision", ("instance",), ClockDecision),
]


def parse(subject: str) -> Subject:
    """Parse a concrete subject into its kind and fields.

    Raises:
        SubjectError: the subject is not one voltana publishes.
    """
    parts = subject.split(".")
    if len(parts) < 2 or parts[0] != ROOT:
        raise SubjectError(f"not a voltana subject: {subject!r}")
    for kind, names, typ in _PATTERNS:
        kparts = kind.split(".")
        if parts[1 : 1 + len(kparts)] == kparts and len(parts) == 1 + len(kparts) + len(names):
            values = parts[1 + len(kparts) :]
            for name, value in zip(names, values, strict=True):
                _tok(value, name)
            return Subject(
                kind=kind, fields=dict(zip(names, values, strict=True)), message_type=typ
            )
    raise SubjectError(f"unknown voltana subject: {subject!r}")


def message_type(subject: str) -> Any:
    """The Struct type (or tagged union) carried on ``subject``."""
    return parse(subject).message_type
