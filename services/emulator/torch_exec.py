"""Run an engine iteration's work on a real device: the GPU-backed worker's executor.

``TorchExecutor`` owns a random-weight Llama-shaped model (``torch_llama``) and a KV
pool on one torch device, and runs what one ``BatchPlan`` asks for:

- prefill: the plan's new tokens as one sequence through every layer, KV written,
  logits of the last token, padded to a prefill bucket (``prefill_bucket``, at most
  6.25% more tokens) and replayed from a CUDA graph captured at start-up (``warm_up``):
  launched eagerly, its ~500 kernel launches per pass wait for the GIL behind the
  worker's HTTP thread, which doubled prefill time on a busy H200 worker;
- decode: one step of the plan's sequences padded to the engine's CUDA-graph batch
  bucket (``decode_bucket``), the plan's KV spread over the bucket's sequences (padded
  slots read none in an engine) and rounded up to a KV bucket, replayed from a CUDA graph
  per (batch, KV) bucket. ``warm_up`` captures the grid ``decode_grid`` lists (every
  batch bucket up to the running-request limit, every KV bucket up to
  ``warm_decode_kv`` tokens a sequence) before serving, as SGLang captures its batch
  sizes at start-up; a pair outside the grid is captured the first time it is met,
  which stalls that step (~0.1 s on an H200).

What is run is the work's shape, not a language model's output: the scheduler decides
tokens, as in the emulated worker. On a CPU device (tests) the same passes run eagerly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from voltana.predictor.buckets import decode_bucket
from voltana.services.emulator.torch_llama import SHAPES, RandomLlama, kv_pool, kv_view

__all__ = ["TorchExecutor", "decode_grid", "kv_bucket", "prefill_bucket"]


def length_bucket(tokens: int, per_octave: int = 8) -> int:
    """Length a graph is captured for: >= ``tokens``, at most 1/``per_octave`` above it past 512.

    Up to 512 tokens the step is 64; above, ``per_octave`` steps per doubling.
    """
    t = max(1, tokens)
    step = 64 if t <= 512 else max(1, (1 << ((t - 1).bit_length() - 1)) // per_octave)
    return -(-t // step) * step


def kv_bucket(tokens: int) -> int:
    """KV length a decode graph is captured for: >= ``tokens``, within 12.5% above 512."""
    return length_bucket(tokens, 8)


def prefill_bucket(tokens: int) -> int:
    """Tokens a prefill graph is captured for: >= ``tokens``, within 6.25% above 512."""
    return length_bucket(tokens, 16)


def decode_grid(max_batch_size: int, kv_max: int, pool_tokens: int) -> list[tuple[int, int]]:
    """(batch bucket, KV length) decode graphs to capture before serving.

    Every ``decode_bucket`` up to the one holding ``max_batch_size``, times every
    ``kv_bucket`` up to the one holding ``kv_max`` tokens a sequence, less the pairs
    whose cache view (batch x (KV + 1) tokens) the pool cannot hold. Empty for
    ``kv_max`` <= 0.
    """
    if kv_max <= 0 or max_batch_size < 1:
        return []
    batches, b = [], 0
    while b < max_batch_size:
        b = decode_bucket(b + 1)
        batches.append(b)
    lengths, t = [], 0
    while t < kv_max:
        t = kv_bucket(t + 1)
        lengths.append(t)
    return [(b, t) for b in batches for t in lengths if b * (t + 1) <= pool_tokens]


class TorchExecutor:
    """The device work of engine iterations, one call at a time (one thread owns it).

    Args:
        shape: a ``torch_llama.SHAPES`` name.
        device: torch device ("cuda", "cuda:1", "cpu").
        kv_pool_gib: size of the KV pool; a decode view that would not fit is clamped
            to a shorter KV length (and counted in ``clamped``).
        max_prefill_tokens: the longest prefill (the engine's chunk size).
        graphs: replay decode from CUDA graphs (on CUDA devices).
        seed: seed of the random weights and KV.
        max_batch_size: the engine's running-request limit (the decode grid's batches).
        warm_decode_kv: KV tokens a sequence up to which ``warm_up`` captures decode
            graphs (0: decode graphs only on first use).
    """

    def __init__(
        self,
        shape: str,
        device: str,
        kv_pool_gib: float,
        max_prefill_tokens: int,
        graphs: bool = True,
        seed: int = 0,
        max_batch_size: int = 256,
        warm_decode_kv: int = 0,
    ) -> None:
        import torch

        if shape not in SHAPES:
            raise ValueError(f"unknown torch shape {shape!r}; known: {sorted(SHAPES)}")
        self.torch = torch
        self.shape = SHAPES[shape]
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise ValueError(f"torch device {device!r} asked for, but torch sees no CUDA GPU")
        pool_tokens = int(kv_pool_gib * 2**30 // self.shape.kv_bytes_per_token)
        if pool_tokens < prefill_bucket(max_prefill_tokens):
            raise ValueError(
                f"a KV pool of {kv_pool_gib} GiB holds {pool_tokens} tokens, fewer than one "
                f"prefill chunk ({max_prefill_tokens})"
            )
        self.pool_tokens = pool_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.max_positions = max(pool_tokens, prefill_bucket(max_prefill_tokens)) + 1
        self.model = RandomLlama(self.shape, self.device, self.max_positions, seed=seed)
        self.model.probe_gqa()
        self.pool = kv_pool(self.shape, pool_tokens, self.device, seed=seed + 1)
        self.graphs_on = graphs and self.cuda
        self._graph_pool: Any = torch.cuda.graph_pool_handle() if self.graphs_on else None
        self._decode: dict[tuple[int, int], Callable[[], Any]] = {}
        self._static: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed + 2)
        self.captured = 0
        self.clamped = 0
        self.max_batch_size, self.warm_decode_kv = max_batch_size, warm_decode_kv
        self.warm_up_s = 0.0

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def _ids(self, n: int) -> Any:
        return self.torch.randint(
            0, self.shape.vocab, (n,), device=self.device, generator=self._gen
        )

    def _decode_step(self, batch: int, length: int) -> tuple[Callable[[], Any], bool]:
        """The step for (batch bucket, KV length): a graph replay (captured on first use)."""
        key = (batch, length)
        step = self._decode.get(key)
        if step is not None:
            return step, False
        ids = self._ids(batch)
        kv = kv_view(self.pool, self.shape, batch, length + 1)
        model = self.model

        def run() -> Any:
            return model.decode(ids, kv, length)

        return self._graphed(key, run, (ids, kv)), True

    def _prefill_step(self, tokens: int) -> tuple[Callable[[], Any], bool]:
        """The prefill of ``tokens`` (a bucket): a graph replay (captured on first use)."""
        key = (0, tokens)
        step = self._decode.get(key)
        if step is not None:
            return step, False
        ids = self._ids(tokens)
        kv = kv_view(self.pool, self.shape, 1, tokens)
        model = self.model

        def run() -> Any:
            return model.prefill(ids, kv)

        return self._graphed(key, run, (ids, kv)), True

    def warm_up(self) -> int:
        """Capture every prefill bucket's graph and the decode grid now, before serving.

        Returns the number of graphs captured (``warm_up_s`` is how long it took).
        """
        if not self.graphs_on:
            return 0
        t0 = time.monotonic()
        t, n = 1, 0
        with self.torch.inference_mode():
            while t <= self.max_prefill_tokens:
                b = prefill_bucket(t)
                n += self._prefill_step(b)[1]
                t = b + 1
            grid = decode_grid(self.max_batch_size, self.warm_decode_kv, self.pool_tokens)
            for batch, length in grid:
                n += self._decode_step(batch, length)[1]
        self._sync()
        self.warm_up_s = time.monotonic() - t0
        return n

    def _graphed(
        self, key: tuple[int, int], run: Callable[[], Any], static: tuple[Any, ...]
    ) -> Callable[[], Any]:
        """``run`` as a CUDA-graph replay on a CUDA device (as itself elsewhere), kept by key."""
        step: Callable[[], Any] = run
        if self.graphs_on:
            torch = self.torch
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                run()
            step = graph.replay
            # The graph reads these addresses on every replay: they must live as long as it.
            self._static[key] = (graph, *static)
            self.captured += 1
        self._decode[key] = step
        return step

    def decode_shape(self, batch_size: int, kv_tokens: int) -> tuple[int, int, bool]:
        """(batch bucket, KV length per sequence, clamped) a decode plan runs as."""
        b = decode_bucket(batch_size)
        # The plan's KV spread over the whole bucket: padded slots read no KV of their own
        # in an engine (their length is 0), so the step reads the plan's KV, not b/batch x.
        length = kv_bucket(math.ceil(kv_tokens / b))
        longest = self.pool_tokens // b - 1
        if length > longest:
            return b, max(1, longest), True
        return b, length, False

    def run(self, kind: str, new_tokens: int, batch_size: int, kv_tokens: int) -> dict[str, Any]:
        """Run one iteration's work to completion; -> what ran and how long it took."""
        t0 = time.monotonic()
        if kind == "prefill":
            n = max(1, min(new_tokens, self.max_prefill_tokens))
            padded = prefill_bucket(n) if self.graphs_on else n
            with self.torch.inference_mode():
                step, new = self._prefill_step(padded)
                step()
            self._sync()
            return {
                "kind": kind,
                "tokens": n,
                "padded_tokens": padded,
                "captured": new and self.graphs_on,
                "device_s": time.monotonic() - t0,
            }
        b, length, clamped = self.decode_shape(batch_size, kv_tokens)
        self.clamped += clamped
        with self.torch.inference_mode():
            step, new = self._decode_step(b, length)
            step()
        self._sync()
        return {
            "kind": kind,
            "bucket": b,
            "kv_len": length,
            "clamped": clamped,
            "captured": new and self.graphs_on,
            "device_s": time.monotonic() - t0,
        }
