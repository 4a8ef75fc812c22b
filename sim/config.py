"""What a simulation run is told: the cluster and the timing knobs (frozen msgspec Structs).

Both go into ``results.json`` as ``params`` (``msgspec.to_builtins``); change
one with ``msgspec.structs.replace``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec
from voltana.common.errors import ConfigError
from voltana.groundtruth.default_clock import with_idle_overrides
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel, GpuSpec
from voltana.groundtruth.spec_file import spec_changes
from voltana.schemas.config import SloConfig

__all__ = ["ClusterSpec", "SimConfig", "config_params"]


class ClusterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Instances and hardware: ``n_prefill`` + ``n_decode`` PD instances, or ``n_unified``
    colocated ones (prefill and decode on the same GPUs), each of ``tp`` GPUs."""

    n_prefill: int = 2
    n_decode: int = 2
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    tp: int = 1
    n_unified: int = 0

    @staticmethod
    def parse(text: str, **kw: Any) -> ClusterSpec:
        """``"2p2d"`` -> 2 prefill + 2 decode; ``"4u"`` -> 4 unified (colocated) instances.

        Raises:
            ConfigError: not of the form ``<n>p<m>d`` or ``<n>u`` with positive counts.
        """
        t = text.strip().lower()
        try:
            if t.endswith("u"):
                n = int(t[:-1])
                if n >= 1:
                    return ClusterSpec(n_prefill=0, n_decode=0, n_unified=n, **kw)
            else:
                p, d = t.rstrip("d").split("p")
                if int(p) >= 1 and int(d) >= 1:
                    return ClusterSpec(n_prefill=int(p), n_decode=int(d), **kw)
        except ValueError:
            pass
        raise ConfigError(
            f"cluster must look like 2p2d (prefill + decode instances) or 4u (unified, "
            f"colocated instances), with counts >= 1; got {text!r}"
        )

    @property
    def label(self) -> str:
        if self.n_unified:
            return f"{self.n_unified}u"
        return f"{self.n_prefill}p{self.n_decode}d"

    @property
    def n_instances(self) -> int:
        return self.n_prefill + self.n_decode + self.n_unified


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about a run except the policy and the workload."""

    cluster: ClusterSpec = msgspec.field(default_factory=ClusterSpec)
    slo: SloConfig = msgspec.field(default_factory=SloConfig)
    seed: int = 0
    noise: float = 0.02  # ground-truth iteration-time jitter (relative std)
    control: Literal["iteration", "telemetry"] = "telemetry"
    # decision -> clock in effect: bus hops, actuator and the NVML lock (freqctl loop
    # measured p50 6 ms, p99 18 ms on the emulated backend; the NVML lock itself ~3 ms)
    control_lag_s: float = 0.01
    telemetry_period_s: float = 0.25  # router (and telemetry-mode controller) refresh
    wake_on_dispatch: bool = True  # telemetry mode: a prefill dispatch asks the controller too
    observed_window_s: float = 1.0  # span of observed TTFT/ITL fed to controllers
    max_running_requests: int = 256
    chunked_prefill_size: int = 8192
    enable_mixed_chunk: bool = True  # unified instances: decode steps ride along prefill chunks
    kv_mem_fraction: float = 0.88
    kv_capacity_override_tokens: int | None = None  # instead of the memory-derived capacity
    series_min_dt_s: float = 0.05
    drain_limit_s: float = 600.0  # stop this long after the last arrival, whatever is left
    energy_idle: Literal["overhead", "spread"] = "overhead"  # idle energy (docs/energy.md)
    # default clocks (no lock): override the GPU's idle hold and decay (GpuSpec), e.g. measured
    default_idle_hold_s: float | None = None
    default_idle_decay_s: float | None = None
    # the GPU's constants from a spec file (groundtruth/spec_file.py) instead of
    # GPUS[cluster.gpu]; cluster.gpu still names the kind it describes
    gpu_override: GpuSpec | None = None

    def gpu_spec(self) -> GpuSpec:
        """The simulated GPU: ``GPUS[cluster.gpu]`` (or the override) with the idle
        overrides applied.

        Raises:
            ConfigError: an unknown GPU or a negative override.
        """
        spec = self.gpu_override or GPUS.get(self.cluster.gpu)
        if spec is None:
            raise ConfigError(f"unknown gpu {self.cluster.gpu!r}; choose from {', '.join(GPUS)}")
        try:
            return with_idle_overrides(spec, self.default_idle_hold_s, self.default_idle_decay_s)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def kv_capacity_tokens(self) -> int:
        if self.kv_capacity_override_tokens is not None:
            return self.kv_capacity_override_tokens
        c = self.cluster
        spec = self.gpu_override or GPUS[c.gpu]
        return GpuModel(spec, MODELS[c.model], c.tp).kv_capacity_tokens(self.kv_mem_fraction)


def _json_number(v: float | None) -> float | str | None:
    """JSON has no infinity: an unbounded idle hold is written as the string "inf"."""
    return "inf" if v is not None and math.isinf(v) else v


def config_params(cfg: SimConfig) -> dict[str, Any]:
    """``cfg`` as results.json's ``params``: the overrides as given (JSON-safe) and the idle
    hold and decay the GPU actually used (``gpu_default_idle_*``)."""
    d: dict[str, Any] = msgspec.to_builtins(cfg)
    spec = cfg.gpu_spec()
    d["default_idle_hold_s"] = _json_number(cfg.default_idle_hold_s)
    d["default_idle_decay_s"] = _json_number(cfg.default_idle_decay_s)
    d["gpu_default_idle_hold_s"] = _json_number(spec.default_idle_hold_s)
    d["gpu_default_idle_decay_s"] = _json_number(spec.default_idle_decay_s)
    if cfg.gpu_override is not None:  # what the spec file changed, in the file's own form
        changes = spec_changes(cfg.cluster.gpu, cfg.gpu_override)
        d["gpu_override"] = {
            k: _json_number(v) if isinstance(v, float) else v for k, v in changes.items()
        }
    return d
