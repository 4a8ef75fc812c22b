"""Energy per request, live: the router's request spans against each GPU's energy counter (pure).

The router sees when each request was sent to an instance and when that side
ended, not which batch it sat in, so a request counts as *in the batch* of its
prefill instance from dispatch to the prefill answer, and of its decode
instance from dispatch (SGLang preallocates its KV there) to its last token.
Each energy-counter sample of a GPU closes one interval of that GPU, which is
split at once among the spans of its instance by the shared rule
(:class:`~voltana.services.router.attribution.EnergyBook`): prefill spans weigh
their prompt's work, decode spans ``1 + kv / kv_tokens`` with the KV growing
evenly from the prompt to prompt + output over the span (an open span counts
its prompt only).

A finished request's energy is final once every GPU of every instance it used
has a counter sample at or after its end there (:meth:`LiveAttribution.sample`
returns those requests). All times are the caller's (the router's monotonic
seconds); the shell converts each counter's read time into that base.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.services.router.attribution import (
    AttributionRule,
    EnergyBook,
    Phase,
    RequestEnergy,
)

__all__ = ["LiveAttribution", "Span"]


@dataclass(slots=True)
class Span:
    """One request's stay on one instance."""

    rid: str
    phase: Phase
    t0: float
    t1: float | None = None
    weight: float = 0.0  # prefill: the prompt's work
    kv0: float = 0.0  # decode: KV at the start (the prompt)
    tokens: int = 0  # decode: output tokens, known at the end

    def overlap(self, a: float, b: float) -> tuple[float, float] | None:
        lo = max(a, self.t0)
        hi = b if self.t1 is None else min(b, self.t1)
        return (lo, hi) if hi > lo else None

    def weight_time(self, rule: AttributionRule, lo: float, hi: float) -> float:
        """Weight x time over [lo, hi] (inside the span)."""
        if self.phase == "prefill":
            return self.weight * (hi - lo)
        rate = 0.0
        if self.t1 is not None and self.t1 > self.t0:
            rate = self.tokens / (self.t1 - self.t0)
        kv_mid = self.kv0 + rate * ((lo + hi) / 2 - self.t0)
        return rule.decode_weight(kv_mid) * (hi - lo)


@dataclass(slots=True)
class _Meter:
    instance: str
    t: float
    energy_j: float


@dataclass(slots=True)
class LiveAttribution:
    """Spans and energy counters of every instance; the book of every joule seen."""

    book: EnergyBook = field(default_factory=EnergyBook)
    by_instance: dict[str, dict[tuple[str, Phase], Span]] = field(default_factory=dict)
    by_request: dict[str, list[tuple[str, Span]]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    meters: dict[str, _Meter] = field(default_factory=dict)
    dropped_j: float = 0.0  # attributed to requests whose record left without it
    rejected_samples: int = 0

    @property
    def rule(self) -> AttributionRule:
        return self.book.rule

    # -- the request side --------------------------------------------------------------

    def start(
        self,
        rid: str,
        instance: str,
        phase: Phase,
        t: float,
        *,
        input_tokens: int,
    ) -> None:
        """The request was sent to ``instance`` for ``phase`` at ``t``."""
        span = Span(rid, phase, t)
        if phase == "prefill":
            span.weight = self.rule.prefill_work(input_tokens)
        else:
            span.kv0 = float(input_tokens)
        self.by_instance.setdefault(instance, {})[(rid, phase)] = span
        self.by_request.setdefault(rid, []).append((instance, span))

    def end(self, rid: str, instance: str, phase: Phase, t: float, tokens: int = 0) -> None:
        """That side ended (answered, failed or cancelled); ``tokens``: decode output tokens."""
        span = self.by_instance.get(instance, {}).get((rid, phase))
        if span is not None and span.t1 is None:
            span.t1 = max(t, span.t0)
            span.tokens = max(tokens, 0)

    def finish(self, rid: str, t: float) -> RequestEnergy | None:
        """No more spans will come for ``rid``; its energy if already final, else None."""
        for inst, span in self.by_request.get(rid, []):
            self.end(rid, inst, span.phase, t)
        self.finished.add(rid)
        return self._take(rid) if self._final(rid) else None

    def measurable(self, rid: str) -> bool:
        """True when every instance ``rid`` used has sent at least one energy reading."""
        known = {m.instance for m in self.meters.values()}
        return all(inst in known for inst, _ in self.by_request.get(rid, []))

    def forget(self, rid: str) -> None:
        """Stop waiting for ``rid`` (its record left without energy); later intervals skip it."""
        for inst, span in self.by_request.pop(rid, []):
            self.by_instance.get(inst, {}).pop((rid, span.phase), None)
        self.finished.discard(rid)
        self.dropped_j += self.book.take(rid).total_j

    # -- the energy side -----------------------------------------------------------------

    def sample(
        self, meter: str, instance: str, t: float, energy_j: float
    ) -> list[tuple[str, RequestEnergy]]:
        """One counter reading of one GPU of ``instance``; the requests now final."""
        m = self.meters.get(meter)
        if m is None or m.instance != instance:
            self.meters[meter] = _Meter(instance, t, energy_j)
            return []
        if t <= m.t:
            return []  # a repeat or out of order: nothing new
        delta = energy_j - m.energy_j
        t_prev = m.t
        m.t, m.energy_j = t, energy_j
        if delta < 0:
            self.rejected_samples += 1  # a counter that went back: skip this interval
            return []
        self._split(meter, instance, t_prev, t, delta)
        return self._settle(instance)

    def _split(self, meter: str, instance: str, a: float, b: float, energy_j: float) -> None:
        weights: dict[tuple[str, Phase], float] = {}
        covered: list[tuple[float, float]] = []
        for key, span in self.by_instance.get(instance, {}).items():
            ov = span.overlap(a, b)
            if ov is None:
                continue
            covered.append(ov)
            w = span.weight_time(self.rule, *ov)
            if w > 0:
                weights[key] = weights.get(key, 0.0) + w
        self.book.interval(meter, energy_j, _union(covered) / (b - a), weights)

    def _settled_t(self, instance: str) -> float | None:
        ts = [m.t for m in self.meters.values() if m.instance == instance]
        return min(ts) if ts else None

    def _settle(self, instance: str) -> list[tuple[str, RequestEnergy]]:
        settled = self._settled_t(instance)
        spans = self.by_instance.get(instance, {})
        done: list[tuple[str, RequestEnergy]] = []
        for key, span in list(spans.items()):
            if settled is not None and span.t1 is not None and span.t1 <= settled:
                # Nothing of this instance's future touches it. A colocated request's other
                # span here may already be gone with it (taken below on an earlier key).
                if spans.pop(key, None) is None:
                    continue
                rid = key[0]
                if rid in self.finished and self._final(rid):
                    done.append((rid, self._take(rid)))
        return done

    def _final(self, rid: str) -> bool:
        for inst, span in self.by_request.get(rid, []):
            settled = self._settled_t(inst)
            if span.t1 is None or settled is None or settled < span.t1:
                return False
        return True

    def _take(self, rid: str) -> RequestEnergy:
        for inst, span in self.by_request.pop(rid, []):
            self.by_instance.get(inst, {}).pop((rid, span.phase), None)
        self.finished.discard(rid)
        return self.book.take(rid)


def _union(spans: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total
