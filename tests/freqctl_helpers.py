"""Builders shared by the controller tests (importable as ``freqctl_helpers``)."""

from __future__ import annotations

from typing import Any

import msgspec
from voltana.predictor.profile import Profile, default_profile
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.services.freqctl.controllers import (
    ControlInput,
)

PROFILES = [default_profile("h100", "llama-3.1-8b"), default_profile("a100", "llama-3.1-8b")]


def cfg(policy: str = "voltana", **over: object) -> ControllerConfig:
    base: dict = dict(policy=policy, slo=SloConfig(ttft_s=0.6, itl_s=0.03, margin=0.1))
    base.update(over)
    return ControllerConfig(**base)


def decoding(batch: int, kv: int, **over: Any) -> ControlInput:
    """Instance "d" at t=0 (decode unless ``over`` says else): ``batch`` requests, ``kv`` KV."""
    inp = ControlInput(
        instance="d", role="decode", t=0.0, batch_size=batch, kv_tokens=kv, running_reqs=batch
    )
    return msgspec.structs.replace(inp, **over)


def prefilling(tokens: int, **over: Any) -> ControlInput:
    """Prefill instance "p" at t=0 with one request of ``tokens`` in hand (oldest_wait_s 0)."""
    inp = ControlInput(instance="p", role="prefill", t=0.0, prefill_tokens=tokens, running_reqs=1)
    return msgspec.structs.replace(inp, **over)


def predicted(prof: Profile, inp: ControlInput, clock: int) -> tuple[float, float, float]:
    """(decode latency, prefill latency, energy) from plain scalar lookups."""
    d = p = e = 0.0
    if inp.role != "prefill":
        d = prof.decode_latency_s(clock, inp.batch_size or 0, inp.kv_tokens or 0)
        e += prof.decode_energy_j(clock, inp.batch_size or 0, inp.kv_tokens or 0)
    if inp.role != "decode":
        p = prof.prefill_latency_s(clock, inp.prefill_tokens or 0)
        e += prof.prefill_energy_j(clock, inp.prefill_tokens or 0)
    return d, p, e


def fits(c: ControllerConfig, inp: ControlInput, lat: tuple[float, float, float]) -> bool:
    keep = 1 - c.slo.margin
    ok_d = inp.role == "prefill" or lat[0] <= c.slo.itl_s * keep + 1e-12
    ok_p = inp.role == "decode" or lat[1] <= c.slo.ttft_s * keep - (inp.oldest_wait_s or 0) + 1e-12
    return ok_d and ok_p
