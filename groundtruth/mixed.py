"""Colocated serving with mixed chunks: SGLang's non-PD scheduler with ``--enable-mixed-chunk``.

On a unified instance a prefill batch would stall every running request for the
length of the chunk. With mixed chunks the scheduler runs the running requests'
decode step in the same forward pass as the prefill chunk: each decoding request
is one more token of extend (a ``(1, context)`` chunk), and the prefill budget
shrinks by the number of decode tokens riding along (SGLang's ``PrefillAdder``
with ``mixed_with_decode_tokens``). So decode never stops, but a request's
inter-token gap is as long as the whole mixed iteration: chunked prefill trades
TTFT against ITL on the same GPU. With nothing to prefill it is a plain decode
step (CUDA graph); with nothing decoding, a plain prefill.
"""

from __future__ import annotations

from voltana.groundtruth.engine import BatchPlan, Engine, EngineConfig, EngineEvent, Phase

__all__ = ["MixedEngine", "make_engine"]


class MixedEngine(Engine):
    """``Engine`` whose prefill batches carry the running requests' decode step."""

    _split: tuple[BatchPlan, int] | None = None  # the mixed plan in flight, its prefill count

    def next_batch(self, now: float) -> BatchPlan | None:
        running = [r for r in self.requests.values() if r.phase is Phase.RUNNING]
        running = running[: self.config.max_running_requests]
        budget = self.config.chunked_prefill_size - len(running)
        pre = self._prefill_plan(max(budget, 1)) if budget > 0 or not running else None
        if pre is None:
            return super().next_batch(now) if running else None
        if not running:
            return pre
        dec = tuple((1, r.prefilled_tokens + r.generated_tokens) for r in running)
        plan = BatchPlan(
            kind="mixed",
            rids=pre.rids + tuple(r.rid for r in running),
            chunks=pre.chunks + dec,
            new_tokens=pre.new_tokens + len(dec),
            kv_tokens=pre.kv_tokens + sum(c for _, c in dec),
        )
        self._split = (plan, len(pre.rids))  # one iteration is in flight at a time
        return plan

    def complete(self, plan: BatchPlan, now: float, tokens: bool = True) -> list[EngineEvent]:
        if plan.kind != "mixed":
            return super().complete(plan, now, tokens)
        if self._split is None or self._split[0] is not plan:
            raise ValueError("complete() got a mixed plan this engine did not make last")
        n_pre = self._split[1]
        self._split = None
        dec_rids = plan.rids[n_pre:]
        events = super().complete(
            BatchPlan(kind="decode", rids=dec_rids, new_tokens=len(dec_rids)), now, tokens
        )
        pre = BatchPlan(kind="prefill", rids=plan.rids[:n_pre], chunks=plan.chunks[:n_pre])
        return events + super().complete(pre, now, tokens)


def make_engine(config: EngineConfig) -> Engine:
    """The scheduler for ``config``: mixed chunks on a unified instance when enabled."""
    if config.enable_mixed_chunk and config.role == "unified":
        return MixedEngine(config)
    return Engine(config)
