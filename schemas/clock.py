"""Clock control: commands to the actuator, its applied state, controller decisions."""

from __future__ import annotations

from typing import Literal

from voltana.schemas.base import Event, GpuIndex, Name, OptName, Text


class SetClock(Event, frozen=True, kw_only=True, tag="set"):  # type: ignore[call-arg, unused-ignore]
    """Lock one GPU's SM clock to ``sm_clock_mhz`` for at most ``lease_s`` seconds.

    The actuator resets the GPU to default clocks unless a fresh command renews
    the lease in time. ``seq`` lets the actuator ignore reordered duplicates.
    """

    node: Name
    gpu: GpuIndex
    sm_clock_mhz: int
    lease_s: float = 2.0
    seq: int = 0
    issued_by: OptName = ""
    instance: Name | None = None
    reason: Text = ""


class ResetClock(Event, frozen=True, kw_only=True, tag="reset"):  # type: ignore[call-arg, unused-ignore]
    """Return one GPU to its default clocks (nothing locked)."""

    node: Name
    gpu: GpuIndex
    seq: int = 0
    issued_by: OptName = ""
    instance: Name | None = None
    reason: Text = ""


ClockCommand = SetClock | ResetClock
"""Tagged union: the actuator decodes either form from one subject."""

ClockStatus = Literal["applied", "unchanged", "reset", "rejected", "expired", "error"]


class ClockState(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """What the actuator did with a command (or a lease expiry) and what holds now.

    ``locked_clock_mhz`` None means default clocks. ``status`` says what happened;
    ``reason`` explains a rejection or error.
    """

    node: Name
    gpu: GpuIndex
    seq: int
    status: ClockStatus
    locked_clock_mhz: int | None
    requested_clock_mhz: int | None = None
    command_seq: int | None = None
    lease_expires_t_ns: int | None = None
    backend: Literal["nvml", "emulated", "dry-run"] = "nvml"
    reason: Text = ""
    apply_latency_s: float | None = None


class ClockDecision(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """One controller decision with its reason, kept for replay and debugging."""

    instance: Name
    role: Text
    policy: Text
    clock_mhz: int
    reason: Text
    predicted_latency_s: float | None = None
    budget_s: float | None = None
    predicted_power_w: float | None = None
    telemetry_age_s: float | None = None
