"""SGLang's Prometheus metrics for one emulated server (its own CollectorRegistry).

Names, labels and buckets follow the released packages: 0.4.7 labels the scheduler
gauges ``{model_name, engine_type="unified"}`` and the tokenizer series
``{model_name}``; 0.5.23 sets ``engine_type`` to the PD role, fills the PD queue
gauges and adds ``kv_used_tokens``, ``decode_sum_seq_lens``, ``utilization`` and
``request_time_per_output_token_seconds`` (see docs/emulator.md).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["SglangMetrics"]

TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
ITL_BUCKETS = [
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.015,
    0.020,
    0.025,
    0.030,
    0.035,
    0.040,
    0.060,
    0.080,
    0.100,
    0.200,
    0.400,
    0.600,
    0.800,
    1,
    2,
    4,
    6,
    8,
]


class SglangMetrics:
    """Gauges set from engine state at scrape time; counters/histograms on events."""

    def __init__(
        self, *, model_name: str, role: str, sglang_version: Literal["0.4.7", "0.5.23"]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.new_style = sglang_version != "0.4.7"
        engine_type = role if self.new_style and role != "unified" else "unified"
        sched = {"model_name": model_name, "engine_type": engine_type}
        tok = {"model_name": model_name}
        self._sched_labels, self._tok_labels = sched, tok
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"sglang:{name}", doc, labelnames=list(sched), registry=r)

        self.gauges: dict[str, Gauge] = {
            "num_running_reqs": gauge("num_running_reqs", "The number of running requests."),
            "num_used_tokens": gauge("num_used_tokens", "The number of used tokens."),
            "token_usage": gauge("token_usage", "The token usage."),
            "gen_throughput": gauge("gen_throughput", "The generation throughput (token/s)."),
            "num_queue_reqs": gauge(
                "num_queue_reqs", "The number of requests in the waiting queue."
            ),
            "num_grammar_queue_reqs": gauge("num_grammar_queue_reqs", "Grammar queue requests."),
            "cache_hit_rate": gauge("cache_hit_rate", "The prefix cache hit rate."),
            "spec_accept_length": gauge("spec_accept_length", "Speculative accept length."),
            "avg_request_queue_latency": gauge("avg_request_queue_latency", "Queue latency (s)."),
            "num_decode_prealloc_queue_reqs": gauge(
                "num_decode_prealloc_queue_reqs", "PD prealloc."
            ),
            "num_decode_transfer_queue_reqs": gauge(
                "num_decode_transfer_queue_reqs", "PD transfer."
            ),
        }
        if self.new_style:
            extra = {
                "num_prefill_bootstrap_queue_reqs": "PD bootstrap queue.",
                "num_prefill_inflight_queue_reqs": "PD inflight (transfer) queue.",
                "kv_used_tokens": "KV tokens in use.",
                "decode_sum_seq_lens": "Sum of sequence lengths of the decode batch.",
                "utilization": "Engine utilization (0-1).",
            }
        else:
            extra = {
                "num_prefill_prealloc_queue_reqs": "PD prealloc queue (unfilled in 0.4.7).",
                "num_prefill_infight_queue_reqs": "PD inflight queue (unfilled in 0.4.7).",
            }
        for name, doc in extra.items():
            self.gauges[name] = gauge(name, doc)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"sglang:{name}", doc, labelnames=list(tok), registry=r)

        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens.")
        self.cached_tokens = counter("cached_tokens", "Number of cached prompt tokens.")
        self._cached_total = 0  # what cached_tokens holds (the engine's count at last sync)
        self.num_requests = counter("num_requests", "Number of requests processed.")
        self.aborted = counter("num_aborted_requests", "Number of aborted requests.")

        def hist(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(
                f"sglang:{name}", doc, labelnames=list(tok), buckets=buckets, registry=r
            )

        e2e = [*TTFT_BUCKETS, 800] + ([1200, 1600, 2400] if self.new_style else [])
        self.ttft = hist("time_to_first_token_seconds", "Time to first token (s).", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Inter-token latency (s).", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency (s).", e2e)
        self.tpot: Histogram | None = None
        if self.new_style:
            self.tpot = hist(
                "request_time_per_output_token_seconds", "Time per output token (s).", ITL_BUCKETS
            )

        # Labelled children resolved once: labels() is too slow for a per-token path.
        lt = self._tok_labels
        self._ttft, self._itl, self._e2e = (
            self.ttft.labels(**lt),
            self.itl.labels(**lt),
            self.e2e.labels(**lt),
        )
        self._gen, self._prompt = (
            self.generation_tokens.labels(**lt),
            self.prompt_tokens.labels(**lt),
        )
        self._nreq, self._aborted = self.num_requests.labels(**lt), self.aborted.labels(**lt)
        self._tpot = self.tpot.labels(**lt) if self.tpot is not None else None

    def set_gauge(self, name: str, value: float) -> None:
        g = self.gauges.get(name)
        if g is not None:
            g.labels(**self._sched_labels).set(value)

    def on_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def on_tokens(self, n: int, itl_s: float | None) -> None:
        self._gen.inc(n)
        if itl_s is not None:
            self._itl.observe(itl_s)

    def on_finish(self, prompt_tokens: int, e2e_s: float, tpot_s: float | None) -> None:
        self._prompt.inc(prompt_tokens)
        self._nreq.inc()
        self._e2e.observe(e2e_s)
        if self._tpot is not None and tpot_s is not None:
            self._tpot.observe(tpot_s)

    def set_cached_tokens(self, total: int) -> None:
        """Bring ``cached_tokens_total`` up to the engine's count of prompt tokens served
        from the prefix cache (SGLang counts them as requests are scheduled)."""
        c = self.cached_tokens.labels(**self._tok_labels)  # the series exists from the start
        if total > self._cached_total:
            c.inc(total - self._cached_total)
            self._cached_total = total

    def on_abort(self) -> None:
        self._aborted.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
