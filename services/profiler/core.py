"""The profiling procedure: sweep clocks and shapes on a prober, then fit.

:func:`default_plan` chooses what to measure (clocks in even steps including
both ends; prefill lengths; decode batch sizes on both sides of every bucket
boundary at several context lengths); :func:`run_profiling` measures it on any
:class:`~voltana.predictor.measurements.Prober`;
:func:`profile_from_prober` adds the one fitting routine. :class:`SimulatedProber`
plays the hardware with the emulator's ground-truth GPU model (with noise) for
the simulator and for the packaged default profiles; the live prober is in
:mod:`voltana.services.profiler.live`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec
import numpy as np
from voltana.predictor.buckets import default_buckets
from voltana.predictor.fitting import fit_profile
from voltana.predictor.measurements import (
    DecodeSample,
    HardwareInfo,
    IdleSample,
    Measurements,
    PrefillSample,
    Prober,
)
from voltana.predictor.profile_format import ProfileFile

if TYPE_CHECKING:
    from voltana.groundtruth.gpu_model import GpuModel

__all__ = [
    "ProbePlan",
    "SimulatedProber",
    "default_plan",
    "profile_from_prober",
    "run_profiling",
]

Progress = Callable[[int, int, str], None]


class ProbePlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one profiling run measures. ``repeats`` samples per point."""

    clocks_mhz: list[int]
    prefill_tokens: list[int]
    decode_batch_sizes: list[int]
    decode_context_tokens: list[int]
    buckets: list[int]
    max_kv_tokens: int | None = None
    repeats: int = 1
    # (new tokens, cached context tokens) prefills: the cost of a prefix-cache hit
    prefill_context_points: list[tuple[int, int]] = msgspec.field(default_factory=list)

    def decode_points(self) -> list[tuple[int, int]]:
        """(batch size, context tokens per request) pairs that fit the KV capacity.

        A batch whose every context overflows keeps the smallest context
        shrunk to fit, so each batch size is measured at least once.
        """
        out: list[tuple[int, int]] = []
        for b in self.decode_batch_sizes:
            fit = [
                c
                for c in self.decode_context_tokens
                if self.max_kv_tokens is None or b * c <= self.max_kv_tokens
            ]
            if not fit and self.max_kv_tokens:
                fit = [max(1, self.max_kv_tokens // b)]
            out.extend((b, c) for c in fit)
        return out

    def size(self) -> int:
        n_clk = len(self.clocks_mhz)
        per_clock = len(self.prefill_tokens) + len(self.decode_points())
        return n_clk * (per_clock * self.repeats + 1 + len(self.prefill_context_points))


def _pick_clocks(supported: Sequence[int], stride: int) -> list[int]:
    asc = sorted(supported)
    picked = asc[::-1][::stride]  # from the top, so the maximum is always profiled
    if asc[0] not in picked:
        picked.append(asc[0])
    return sorted(picked)


def _batch_sizes(buckets: Sequence[int], max_batch_size: int, dense: bool) -> list[int]:
    out: set[int] = set()
    prev = 0
    for bk in buckets:
        if prev >= max_batch_size:
            break
        hi = min(bk, max_batch_size)
        out.update({prev + 1, hi})
        if dense and hi - prev >= 4:
            out.add((prev + 1 + hi) // 2)
        prev = bk
    return sorted(out)


def default_plan(
    hw: HardwareInfo,
    *,
    quick: bool = False,
    max_batch_size: int = 512,
    max_kv_tokens: int | None = None,
    max_prefill_tokens: int = 8192,
    repeats: int = 1,
    clock_stride: int | None = None,
) -> ProbePlan:
    """A plan for ``hw``: dense for simulated hardware, ``quick`` for live runs.

    ``quick`` profiles every 12th clock (180 MHz at 15 MHz steps) with the two
    sides of each bucket at three context lengths; the full plan every 6th clock,
    bucket middles too, four context lengths and more prefill lengths.
    """
    buckets = default_buckets(max_batch_size)
    if quick:
        prefill = [64, 128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192]
        contexts = [128, 512, 1536]
    else:
        prefill = [32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
        contexts = [64, 512, 1536, 3072]
    return ProbePlan(
        clocks_mhz=_pick_clocks(hw.supported_clocks_mhz, clock_stride or (12 if quick else 6)),
        prefill_tokens=[t for t in prefill if t <= max_prefill_tokens] or [max_prefill_tokens],
        decode_batch_sizes=_batch_sizes(buckets, max_batch_size, dense=not quick),
        decode_context_tokens=contexts,
        buckets=buckets,
        max_kv_tokens=max_kv_tokens,
        repeats=repeats,
        prefill_context_points=[
            (t, c)
            for t, c in CONTEXT_POINTS
            if t <= max_prefill_tokens and (max_kv_tokens is None or t + c <= max_kv_tokens)
        ],
    )


CONTEXT_POINTS = ((256, 4096), (1024, 4096), (256, 16384), (1024, 16384), (2048, 16384))
"""(new tokens, cached tokens) of the prefix-cache-hit prefills every plan measures."""


def run_profiling(
    prober: Prober, plan: ProbePlan, progress: Progress | None = None
) -> Measurements:
    """Measure every point of ``plan`` on ``prober`` (clock by clock, idle last per clock)."""
    prefill: list[PrefillSample] = []
    decode: list[DecodeSample] = []
    idle: list[IdleSample] = []
    total, done = plan.size(), 0
    points = plan.decode_points()

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    for clock in sorted(plan.clocks_mhz, reverse=True):
        for _ in range(plan.repeats):
            for t in plan.prefill_tokens:
                prefill.append(prober.measure_prefill(clock, t))
                tick(f"{clock} MHz prefill {t}")
            for b, c in points:
                decode.append(prober.measure_decode(clock, b, c))
                tick(f"{clock} MHz decode B={b} ctx={c}")
        idle.append(prober.measure_idle(clock))
        tick(f"{clock} MHz idle")
    # after everything else, so the points above are measured exactly as without them
    context: list[PrefillSample] = []
    measure = getattr(prober, "measure_prefill_context", None)
    if measure is not None:
        for clock in sorted(plan.clocks_mhz, reverse=True):
            for t, c in plan.prefill_context_points:
                sample = measure(clock, t, c)  # None: the worker has no prefix cache
                if sample is not None:
                    context.append(sample)
                tick(f"{clock} MHz prefill {t} over {c} cached")
    return Measurements(
        hardware=prober.hardware(),
        source=prober.source,
        prefill=prefill,
        decode=decode,
        idle=idle,
        prefill_context=context,
    )


def profile_from_prober(
    prober: Prober,
    plan: ProbePlan,
    *,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    created_t_ns: int | None = None,
    notes: str = "",
) -> tuple[ProfileFile, Measurements]:
    """Run the plan and fit a profile (held-out accuracy in ``profile.accuracy``)."""
    m = run_profiling(prober, plan, progress)
    pf = fit_profile(
        m,
        buckets=plan.buckets,
        prefill_max_batched_tokens=max(plan.prefill_tokens),
        heldout_fraction=heldout_fraction,
        seed=seed,
        created_t_ns=created_t_ns,
        notes=notes,
    )
    return pf, m


class SimulatedProber:
    """The emulator's ground-truth GPU model as hardware, measured like a real GPU.

    Each decode sample averages ``iterations`` noisy iterations (a live run
    averages the tokens of a stream), each prefill sample ``prefill_iterations``
    (a live run times several prefills per point). Idle power gets measurement noise too. Energies are instance
    totals (``tp`` GPUs).

    Args:
        gpu_model: the ground-truth model (its own ``noise`` and seed apply).
        gpu: GPU name written into the profile (e.g. "h100").
        model: model name written into the profile (e.g. "llama-3.1-8b").
        iterations: decode iterations averaged per sample.
        prefill_iterations: prefills averaged per sample.
        idle_noise: relative standard deviation of idle power readings.
        seed: seed of the idle-noise generator.
    """

    source: Literal["simulated", "live", "synthetic"] = "simulated"

    def __init__(
        self,
        gpu_model: GpuModel,
        gpu: str,
        model: str,
        *,
        iterations: int = 8,
        prefill_iterations: int = 3,
        idle_noise: float = 0.01,
        seed: int | None = 0,
    ) -> None:
        self.gm = gpu_model
        self.gpu = gpu
        self.model = model
        self.iterations = max(1, iterations)
        self.prefill_iterations = max(1, prefill_iterations)
        self.idle_noise = idle_noise
        self._rng = np.random.default_rng(seed)

    def hardware(self) -> HardwareInfo:
        return HardwareInfo(
            gpu=self.gpu,
            model=self.model,
            tp=self.gm.tp,
            supported_clocks_mhz=sorted(self.gm.supported_clocks_mhz),
            power_limit_w=self.gm.gpu.power_limit_w * self.gm.tp,
        )

    def max_kv_tokens(self) -> int:
        """KV tokens the simulated instance can hold."""
        return int(self.gm.kv_capacity_tokens())

    def measure_prefill(self, clock_mhz: int, batched_tokens: int) -> PrefillSample:
        n = self.prefill_iterations
        costs = [self.gm.prefill(clock_mhz, batched_tokens) for _ in range(n)]
        return PrefillSample(
            clock_mhz=clock_mhz,
            batched_tokens=batched_tokens,
            latency_s=math.fsum(c.time_s for c in costs) / n,
            energy_j=math.fsum(c.energy_j for c in costs) / n * self.gm.tp,
            effective_clock_mhz=float(np.median([c.effective_clock_mhz for c in costs])),
        )

    def measure_prefill_context(
        self, clock_mhz: int, batched_tokens: int, context_tokens: int
    ) -> PrefillSample:
        """A prefill of ``batched_tokens`` new tokens over ``context_tokens`` cached ones."""
        n = self.prefill_iterations
        costs = [self.gm.prefill(clock_mhz, batched_tokens, context_tokens) for _ in range(n)]
        return PrefillSample(
            clock_mhz=clock_mhz,
            batched_tokens=batched_tokens,
            latency_s=math.fsum(c.time_s for c in costs) / n,
            energy_j=math.fsum(c.energy_j for c in costs) / n * self.gm.tp,
            effective_clock_mhz=float(np.median([c.effective_clock_mhz for c in costs])),
            context_tokens=context_tokens,
        )

    def measure_decode(self, clock_mhz: int, batch_size: int, context_tokens: int) -> DecodeSample:
        kv = batch_size * context_tokens
        costs = [self.gm.decode(clock_mhz, batch_size, kv) for _ in range(self.iterations)]
        return DecodeSample(
            clock_mhz=clock_mhz,
            batch_size=batch_size,
            kv_tokens=float(kv),
            latency_s=math.fsum(c.time_s for c in costs) / len(costs),
            energy_j=math.fsum(c.energy_j for c in costs) / len(costs) * self.gm.tp,
            effective_clock_mhz=float(np.median([c.effective_clock_mhz for c in costs])),
        )

    def measure_idle(self, clock_mhz: int) -> IdleSample:
        p = self.gm.idle_power_w(clock_mhz) * self.gm.tp
        p *= math.exp(self.idle_noise * float(self._rng.standard_normal()))
        return IdleSample(clock_mhz=clock_mhz, power_w=p)

    def close(self) -> None:
        """Nothing to restore."""
