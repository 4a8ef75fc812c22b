"""Run an engine iteration's work on a real device: the GPU-backed worker's executor.

``TorchExecutor`` owns a random-weight Llama-shaped model (``torch_llama``) and a KV
pool on one torch device, and runs what one ``BatchPlan`` asks for:

- prefill: the plan's new tokens as one sequence through every layer, KV written,
  logits of the last token (eagerly, as SGLang runs prefill without piecewise graphs);
- decode: one step of the plan's sequences padded to the engine's CUDA-graph batch
  bucket (``decode_bucket``), each reading the plan's mean KV length rounded up to a
  KV bucket, replayed from a CUDA graph captured the first time that (batch, KV)
  bucket is met (as engines replay one graph per batch size).

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

__all__ = ["TorchExecutor", "kv_bucket"]


def kv_bucket(tokens: int) -> int:
    """KV length a decode graph is captured for: >= ``tokens``, within 12.5% above 512."""
    t = max(1, tokens)
    # Above 512 tokens the step is 1/16 to 1/8 of the length.
    step = 64 if t <= 512 else 1 << max(6, (t - 1).bit_length() - 4)
    return -(-t // step) * step


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
    """

    def __init__(
        self,
        shape: str,
        device: str,
        kv_pool_gib: float,
        max_prefill_tokens: int,
        graphs: bool = True,
        seed: int = 0,
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
        if pool_tokens < max_prefill_tokens:
            raise ValueError(
                f"a KV pool of {kv_pool_gib} GiB holds {pool_tokens} tokens, fewer than one "
                f"prefill chunk ({max_prefill_tokens})"
            )
        self.pool_tokens = pool_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.max_positions = max(pool_tokens, max_prefill_tokens) + 1
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
            self._static[key] = (graph, ids, kv)
            self.captured += 1
        else:
            step = run
        self._decode[key] = step
        return step, True

    def decode_shape(self, batch_size: int, kv_tokens: int) -> tuple[int, int, bool]:
        """(batch bucket, KV length per sequence, clamped) a decode plan runs as."""
        b = decode_bucket(batch_size)
        length = kv_bucket(math.ceil(kv_tokens / max(1, batch_size)))
        longest = self.pool_tokens // b - 1
        if length > longest:
            return b, max(1, longest), True
        return b, length, False

    def run(self, kind: str, new_tokens: int, batch_size: int, kv_tokens: int) -> dict[str, Any]:
        """Run one iteration's work to completion; -> what ran and how long it took."""
        t0 = time.monotonic()
        if kind == "prefill":
            n = max(1, min(new_tokens, self.max_prefill_tokens))
            kv = kv_view(self.pool, self.shape, 1, n)
            with self.torch.inference_mode():
                self.model.prefill(self._ids(n), kv)
            self._sync()
            return {"kind": kind, "tokens": n, "device_s": time.monotonic() - t0}
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
