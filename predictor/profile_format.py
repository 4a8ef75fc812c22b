"""The versioned profile file: fitted latency and energy models of one GPU + model + TP.

A profile is JSON (msgspec). Latencies are seconds, energies joules, powers
watts; energies and powers are instance totals (all ``tp`` GPUs). The format is
documented in docs/profile-format.md; bump :data:`PROFILE_VERSION` only on an
incompatible change (new optional fields keep the version).
"""

from __future__ import annotations

import itertools
from typing import ClassVar, Literal

import msgspec

__all__ = [
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "Accuracy",
    "DecodeBucketFit",
    "DecodeClockFit",
    "IdlePoint",
    "PrefillClockFit",
    "ProfileFile",
    "validate_profile_file",
]

PROFILE_FORMAT = "voltana-profile"
PROFILE_VERSION = 1


class PrefillClockFit(msgspec.Struct, frozen=True, kw_only=True):
    """Prefill at one clock for T batched tokens (all coefficients >= 0).

    ``latency_s = latency_s_per_token * T + latency_s_per_token2 * T**2 + latency_s``;
    ``energy_j`` likewise with the ``energy_*`` coefficients.
    """

    COEFFICIENTS: ClassVar[tuple[str, ...]] = (
        "latency_s_per_token",
        "latency_s_per_token2",
        "latency_s",
        "energy_j_per_token",
        "energy_j_per_token2",
        "energy_j",
    )

    clock_mhz: int
    latency_s_per_token: float
    latency_s_per_token2: float = 0.0
    latency_s: float
    energy_j_per_token: float
    energy_j_per_token2: float = 0.0
    energy_j: float
    effective_clock_mhz: float | None = None
    samples: int = 0
    # a prefix-cache hit: each new token also attends to the C cached tokens, adding
    # ``*_per_ctx_token * T * C`` (0 when the profile has no such measurements)
    latency_s_per_ctx_token: float = 0.0
    energy_j_per_ctx_token: float = 0.0

    def coefficients(self) -> list[float]:
        """The :attr:`COEFFICIENTS` in order: the row the predictor interpolates between clocks."""
        return [getattr(self, name) for name in self.COEFFICIENTS]


class DecodeBucketFit(msgspec.Struct, frozen=True, kw_only=True):
    """One decode iteration for B requests holding K KV tokens, batch bucket ``bucket``.

    ``latency_s = latency_s_per_req * B + latency_s_per_kv_token * K + latency_s``;
    ``energy_j`` likewise. ``bucket`` is the bucket's upper bound (batch sizes
    ``prev_bucket < B <= bucket`` use this fit).
    """

    COEFFICIENTS: ClassVar[tuple[str, ...]] = (
        "latency_s_per_req",
        "latency_s_per_kv_token",
        "latency_s",
        "energy_j_per_req",
        "energy_j_per_kv_token",
        "energy_j",
    )

    bucket: int
    latency_s_per_req: float
    latency_s_per_kv_token: float
    latency_s: float
    energy_j_per_req: float
    energy_j_per_kv_token: float
    energy_j: float
    samples: int = 0

    def coefficients(self) -> list[float]:
        """The :attr:`COEFFICIENTS` in order: the row the predictor interpolates between clocks."""
        return [getattr(self, name) for name in self.COEFFICIENTS]


class DecodeClockFit(msgspec.Struct, frozen=True, kw_only=True):
    """Decode fits at one clock, one per bucket of ``ProfileFile.decode_buckets``."""

    clock_mhz: int
    buckets: list[DecodeBucketFit]
    effective_clock_mhz: float | None = None


class IdlePoint(msgspec.Struct, frozen=True, kw_only=True):
    """Instance power with nothing running, at one locked clock."""

    clock_mhz: int
    power_w: float


class Accuracy(msgspec.Struct, frozen=True, kw_only=True):
    """Held-out error of the fit: mean absolute error as a percentage of the mean."""

    prefill_latency_mae_pct: float
    decode_latency_mae_pct: float
    prefill_energy_mae_pct: float
    decode_energy_mae_pct: float
    prefill_points: int
    decode_points: int


class ProfileFile(msgspec.Struct, frozen=True, kw_only=True):
    """The whole profile as stored on disk.

    ``supported_clocks_mhz`` is the clock table controllers choose from
    (ascending); the fits exist at a subset of it and are interpolated linearly
    in clock in between (clamped outside the profiled range).
    """

    format: str = PROFILE_FORMAT
    version: int = PROFILE_VERSION
    gpu: str
    model: str
    tp: int = 1
    source: Literal["simulated", "live", "synthetic"] = "live"
    created_t_ns: int = 0
    notes: str = ""
    supported_clocks_mhz: list[int]
    power_limit_w: float | None = None
    decode_buckets: list[int]
    prefill_max_batched_tokens: int = 8192
    prefill: list[PrefillClockFit]
    decode: list[DecodeClockFit]
    idle: list[IdlePoint]
    accuracy: Accuracy | None = None


def _nonneg(name: str, value: float) -> None:
    if not (value >= 0.0) or value == float("inf"):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def validate_profile_file(pf: ProfileFile) -> None:
    """Check what the type system cannot; raise ValueError naming the first problem."""
    if pf.format != PROFILE_FORMAT:
        raise ValueError(f"not a voltana profile (format={pf.format!r})")
    if pf.version != PROFILE_VERSION:
        raise ValueError(f"profile version {pf.version} is not supported (want {PROFILE_VERSION})")
    if pf.tp < 1:
        raise ValueError(f"tp must be >= 1, got {pf.tp}")
    clocks = pf.supported_clocks_mhz
    if not clocks or any(b <= a for a, b in itertools.pairwise(clocks)):
        raise ValueError("supported_clocks_mhz must be non-empty and strictly ascending")
    bk = pf.decode_buckets
    if not bk or bk[0] < 1 or any(b <= a for a, b in itertools.pairwise(bk)):
        raise ValueError("decode_buckets must be non-empty, >= 1 and strictly ascending")
    if pf.prefill_max_batched_tokens < 1:
        raise ValueError("prefill_max_batched_tokens must be >= 1")
    for label, seq in (("prefill", pf.prefill), ("decode", pf.decode), ("idle", pf.idle)):
        cl = [x.clock_mhz for x in seq]
        if not cl or any(b <= a for a, b in itertools.pairwise(cl)):
            raise ValueError(f"{label} fits must be non-empty and ascending by clock_mhz")
    for p in pf.prefill:
        for name in (*p.COEFFICIENTS, "latency_s_per_ctx_token", "energy_j_per_ctx_token"):
            _nonneg(f"prefill[{p.clock_mhz}].{name}", getattr(p, name))
    for d in pf.decode:
        if [b.bucket for b in d.buckets] != bk:
            raise ValueError(f"decode[{d.clock_mhz}] buckets do not match decode_buckets")
        for b in d.buckets:
            for name in b.COEFFICIENTS:
                _nonneg(f"decode[{d.clock_mhz}][{b.bucket}].{name}", getattr(b, name))
    for i in pf.idle:
        _nonneg(f"idle[{i.clock_mhz}].power_w", i.power_w)
