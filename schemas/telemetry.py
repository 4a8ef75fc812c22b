"""Telemetry: per-GPU power/clock samples and per-instance engine state."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from voltana.schemas.base import Count, Event, GpuIndex, Name, Role, Text

__all__ = ["GpuSourceKind", "GpuTelemetry", "InstanceTelemetry", "LatencyWindow", "Role"]

GpuSourceKind = Literal["nvml", "emulated"]
"""Where a GPU's readings came from."""


class LatencyWindow(msgspec.Struct, frozen=True, kw_only=True):
    """Latency statistics over one window (from histogram deltas or raw samples).

    Quantiles are in seconds; ``count`` is the number of observations in the window.
    """

    count: int
    window_s: float
    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None


class GpuTelemetry(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """One power/clock sample of one GPU.

    ``energy_j`` is the cumulative counter since the source started counting:
    it is never reset and never wrapped; ``avg_power_w`` is the energy delta over
    ``interval_s`` (the time since this GPU's previous counter read).
    ``energy_t_ns`` is when the counter was read: NVML sources read it at a
    lower rate than power (a read costs ~4 ms of CPU on an H100, and the counter
    itself moves every 100 ms), so between reads ``energy_j`` repeats the last
    value and ``avg_power_w``/``interval_s`` are None. ``power_instant_w`` is
    NVML's instantaneous power where available (``power_w`` is NVML's power
    usage reading, a 1 s average on recent GPUs and drivers).
    """

    node: Name
    gpu: GpuIndex
    seq: int
    instance: Name | None = None
    role: Role | None = None
    power_w: float
    energy_j: float
    avg_power_w: float | None = None
    interval_s: float | None = None
    sm_clock_mhz: int
    locked_clock_mhz: int | None = None
    app_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    util_gpu_pct: float | None = None
    mem_used_mib: float | None = None
    temperature_c: float | None = None
    source: GpuSourceKind = "nvml"
    energy_t_ns: int | None = None
    power_instant_w: float | None = None


class InstanceTelemetry(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """Engine state of one serving instance, scraped from SGLang.

    ``healthy`` is False (with ``error`` set) when the instance stopped answering;
    the engine fields then hold their last known values or zero.
    """

    instance: Name
    role: Role
    node: Name
    url: Text
    seq: int
    gpus: Annotated[list[GpuIndex], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    healthy: bool = True
    error: Text | None = None
    num_running_reqs: Count = 0
    num_queue_reqs: Count = 0
    kv_used_tokens: Count = 0
    kv_capacity_tokens: Count | None = None
    token_usage: float = 0.0
    gen_throughput_tps: float = 0.0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    requests_total: float = 0.0
    cache_hit_rate: float = 0.0  # sglang:cache_hit_rate (prefix cache, cumulative ratio)
    cached_tokens_total: float = 0.0  # sglang:cached_tokens_total (prompt tokens from cache)
    num_bootstrap_queue_reqs: Count = 0
    num_prealloc_queue_reqs: Count = 0
    num_transfer_queue_reqs: Count = 0
    num_inflight_queue_reqs: Count = 0
    ttft: LatencyWindow | None = None
    itl: LatencyWindow | None = None
    scrape_latency_s: float | None = None
    engine_version: Text | None = None
