"""Synthetic multi-turn conversations: sessions whose every turn resends the growing context.

A session starts (Poisson, ``sessions_per_s``) with one of ``system_prompts``
shared system prompts, optionally a document pasted into its first turn, then
runs a geometric number of turns. Turn ``k`` sends the whole conversation so
far (system prompt, every earlier user message and answer) plus a new user
message; the next turn arrives an exponential think time later (open loop:
the gap is counted from the previous turn's arrival, so a slow answer may still
be running when the next turn comes, as with a user who does not wait).

Every request carries its prefix identity (:class:`PrefixIdentity`): blocks of
``block_tokens`` that lie inside the system prompt share ids across sessions,
later blocks are the session's own, so turn ``k+1`` matches turn ``k``'s whole
prompt. Answers are part of the next prompt but were never a prompt themselves:
in PD mode no prefill instance has them cached.

Defaults per turn come from LMSYS-Chat-1M (Zheng et al., "LMSYS-Chat-1M: A
Large-Scale Real-World LLM Conversation Dataset", ICLR 2024, Table 1): 2.0 turns
per conversation, 69.5 tokens per user prompt, 214.5 tokens per response. The
system prompt, the pasted document and the think time are not in that table:
they are assumptions of the scenario, set by the caller (defaults: none, none,
a mean of 10 s).
"""

from __future__ import annotations

import numpy as np
from voltana.common.errors import ConfigError
from voltana.groundtruth.prefix_cache import PrefixIdentity, chain_keys
from voltana.sim.workload import LengthDist, SimRequest, Workload

__all__ = ["MultiTurnSpec", "multiturn"]

import msgspec


class MultiTurnSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The conversation workload's parameters (see the module docstring for sources)."""

    sessions_per_s: float = 1.0
    duration_s: float = 300.0  # sessions start in [0, duration_s)
    turns_mean: float = 2.0  # geometric number of turns >= 1 (LMSYS-Chat-1M: 2.0)
    user_tokens: LengthDist = LengthDist("lognormal", 69.5, 1.0, 1, 4096)  # LMSYS: 69.5
    output_tokens: LengthDist = LengthDist("lognormal", 214.5, 0.9, 1, 2048)  # LMSYS: 214.5
    document_tokens: LengthDist | None = None  # pasted into the first turn (assumption)
    system_prompt_tokens: int = 0  # shared by the sessions of one system prompt (assumption)
    system_prompts: int = 1
    think_time_s: float = 10.0  # mean gap between turns of a session (assumption)
    max_context_tokens: int = 32768  # a session ends before its prompt would exceed this
    block_tokens: int = 64  # prefix-identity granularity (a page of the cache)

    def __post_init__(self) -> None:
        if self.sessions_per_s <= 0 or self.duration_s <= 0:
            raise ConfigError("sessions_per_s and duration_s must be positive")
        if self.turns_mean < 1 or self.think_time_s < 0:
            raise ConfigError("turns_mean must be >= 1 and think_time_s >= 0")
        if self.system_prompt_tokens < 0 or self.system_prompts < 1 or self.block_tokens < 1:
            raise ConfigError("bad system prompt or block size")


def multiturn(spec: MultiTurnSpec, *, seed: int = 0) -> Workload:
    """The requests of every session, sorted by arrival (same seed, same workload)."""
    rng = np.random.default_rng(seed)
    starts: list[float] = []
    t = float(rng.exponential(1.0 / spec.sessions_per_s))
    while t < spec.duration_s:
        starts.append(t)
        t += float(rng.exponential(1.0 / spec.sessions_per_s))
    reqs: list[SimRequest] = []
    bt, sys_len = spec.block_tokens, spec.system_prompt_tokens
    for sid, t0 in enumerate(starts):
        turns = int(rng.geometric(1.0 / spec.turns_mean))
        sp = int(rng.integers(spec.system_prompts))
        users = spec.user_tokens.sample(rng, turns)
        outs = spec.output_tokens.sample(rng, turns)
        gaps = rng.exponential(spec.think_time_s, size=turns) if spec.think_time_s > 0 else None
        doc = int(spec.document_tokens.sample(rng, 1)[0]) if spec.document_tokens else 0
        ctx = sys_len + doc
        t_turn = t0
        for k in range(turns):
            prompt = ctx + int(users[k])
            if prompt + int(outs[k]) > spec.max_context_tokens:
                break
            nblocks = prompt // bt
            # blocks inside the system prompt: shared; the rest: this session's own
            ids = [
                (sp << 32) | j if (j + 1) * bt <= sys_len else (1 << 62) | (sid << 20) | j
                for j in range(nblocks)
            ]
            prefix = PrefixIdentity(chain_keys(ids), bt) if ids else None
            reqs.append(SimRequest(f"c{sid}t{k}", t_turn, prompt, int(outs[k]), prefix))
            ctx = prompt + int(outs[k])
            if gaps is not None:
                t_turn += float(gaps[k])
    reqs.sort(key=lambda r: (r.arrival_s, r.request_id))
    if not reqs:
        raise ConfigError("the multi-turn workload holds no request (longer duration?)")
    t_first = reqs[0].arrival_s
    out = tuple(
        SimRequest(r.request_id, r.arrival_s - t_first, r.input_tokens, r.output_tokens, r.prefix)
        for r in reqs
    )
    name = f"multiturn-{spec.sessions_per_s:g}sps"
    return Workload(name=name, requests=out, source="synthetic:multiturn")
