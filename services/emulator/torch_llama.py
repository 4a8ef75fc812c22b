"""A Llama-shaped decoder in plain PyTorch with random weights: the GPU-backed worker's model and the probes'.

Built from the configuration alone (nothing is downloaded): the weights are
random bf16, so what is measured is the GPU's work for that shape, not a
language model's output. Prefill runs one sequence of T new tokens with causal
attention and writes its KV into the cache, then computes the logits of the
last token only (as serving engines do). A decode step runs B sequences that
each hold K tokens of KV cache: one new token each, grouped-query attention
that reads every KV head once (the query heads of a group are the query rows
of one attention call, as decode kernels do), logits for all B and an argmax.

Imports torch and nothing else of the project's (no msgspec), so ``bench/gpu/``'s probes
run it on a GPU host with torch alone; ``torch_exec`` runs it inside the worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaShape:
    """The configuration fields that set a Llama decoder's work."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    @property
    def params(self) -> int:
        """Weight count (untied embedding and LM head, as in Llama-3.1-8B)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * self.intermediate + 2 * h
        return self.layers * per_layer + 2 * self.vocab * h + h

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def linear_flops_per_token(self) -> float:
        """2 x the weights a token multiplies (embedding lookup excluded)."""
        return 2.0 * (self.params - self.vocab * self.hidden)


# Written out here rather than read from voltana.groundtruth.gpu_specs.MODELS, which
# cites the same config.json: this module must run on a GPU host with torch alone (no
# msgspec). tests/unit/test_gpu_in_the_loop.py holds the shape every committed probe run
# recorded to the emulator's; tests/unit/test_torch_worker.py holds SHAPES to MODELS.
SHAPES: dict[str, LlamaShape] = {
    # meta-llama/Llama-3.1-8B config.json: hidden 4096, 32 layers, 32 heads,
    # 8 KV heads, intermediate 14336, vocab 128256, rope_theta 500000, rms 1e-5.
    "llama-3.1-8b": LlamaShape(
        name="llama-3.1-8b",
        hidden=4096,
        layers=32,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate=14336,
        vocab=128256,
    ),
    # A few-MB model with the same structure, for checking the script on a CPU.
    "tiny": LlamaShape(
        name="tiny",
        hidden=256,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=64,
        intermediate=512,
        vocab=1000,
    ),
}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RandomLlama:
    """Random-weight Llama decoder; the KV cache is a caller-owned flat pool.

    Args:
        shape: the model's configuration.
        device: torch device to build on.
        max_positions: RoPE table length (the largest position ever used + 1).
        seed: seed of the weights (std 0.02, like the usual initialiser).
    """

    def __init__(
        self, shape: LlamaShape, device: torch.device, max_positions: int, seed: int = 0
    ) -> None:
        self.shape = shape
        self.device = device
        self.dtype = torch.bfloat16
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        s, h = shape, shape.hidden
        kv = s.kv_heads * s.head_dim

        def w(*dims: int) -> torch.Tensor:
            t = torch.empty(*dims, device=device, dtype=self.dtype)
            t.normal_(0.0, 0.02, generator=gen)
            return t

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, device=device, dtype=self.dtype)

        self.embed = w(s.vocab, h)
        self.layers: list[dict[str, torch.Tensor]] = [
            {
                "ln1": ones(h),
                "wqkv": w(h + 2 * kv, h),
                "wo": w(h, h),
                "ln2": ones(h),
                "wgu": w(2 * s.intermediate, h),
                "wd": w(h, s.intermediate),
            }
            for _ in range(s.layers)
        ]
        self.norm = ones(h)
        self.lm_head = w(s.vocab, h)
        inv = 1.0 / (
            s.rope_theta
            ** (torch.arange(0, s.head_dim, 2, device=device, dtype=torch.float32) / s.head_dim)
        )
        pos = torch.arange(max_positions, device=device, dtype=torch.float32)
        ang = torch.outer(pos, inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.cos = ang.cos().to(self.dtype)
        self.sin = ang.sin().to(self.dtype)
        self.gqa_native = False  # set by probe_gqa(): SDPA's enable_gqa usable on this device
        self.decode_attn = "sdpa"  # or "matmul": QK^T and PV as batched matmuls

    # -- pieces --------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.shape.rms_eps)

    def _mlp(self, x: torch.Tensor, lw: dict[str, torch.Tensor]) -> torch.Tensor:
        gu = F.linear(self._norm(x, lw["ln2"]), lw["wgu"])
        g, u = gu.chunk(2, dim=-1)
        return x + F.linear(F.silu(g) * u, lw["wd"])

    def _qkv(
        self, x: torch.Tensor, lw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.shape
        kv = s.kv_heads * s.head_dim
        q, k, v = F.linear(self._norm(x, lw["ln1"]), lw["wqkv"]).split([s.hidden, kv, kv], -1)
        n = x.shape[0]
        return (
            q.view(n, s.heads, s.head_dim),
            k.view(n, s.kv_heads, s.head_dim),
            v.view(n, s.kv_heads, s.head_dim),
        )

    def probe_gqa(self) -> bool:
        """Whether SDPA's native grouped-query path runs here (else K/V are repeated)."""
        s = self.shape
        q = torch.randn(1, s.heads, 8, s.head_dim, device=self.device, dtype=self.dtype)
        k = torch.randn(1, s.kv_heads, 8, s.head_dim, device=self.device, dtype=self.dtype)
        try:
            F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            self.gqa_native = True
        except (RuntimeError, TypeError):
            self.gqa_native = False
        return self.gqa_native

    # -- forward passes ------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, kv: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """One sequence of T tokens from position 0; returns the next token id (or logits).

        Args:
            ids: [T] int64 token ids.
            kv: [layers, 2, 1, kv_heads, T, head_dim] cache view, written here.
        """
        s = self.shape
        t = ids.shape[0]
        group = s.heads // s.kv_heads
        cos = self.cos[:t].unsqueeze(1)
        sin = self.sin[:t].unsqueeze(1)
        x = F.embedding(ids, self.embed)
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(x, lw)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = kv[i, 0, 0], kv[i, 1, 0]  # [kv_heads, T, D]
            kc.copy_(k.transpose(0, 1))
            vc.copy_(v.transpose(0, 1))
            qh = q.transpose(0, 1).unsqueeze(0)
            if self.gqa_native:
                o = F.scaled_dot_product_attention(
                    qh, kc.unsqueeze(0), vc.unsqueeze(0), is_causal=True, enable_gqa=True
                )
            else:
                kr = kc.repeat_interleave(group, dim=0).unsqueeze(0)
                vr = vc.repeat_interleave(group, dim=0).unsqueeze(0)
                o = F.scaled_dot_product_attention(qh, kr, vr, is_causal=True)
            x = x + F.linear(o[0].transpose(0, 1).reshape(t, s.hidden), lw["wo"])
            x = self._mlp(x, lw)
        out = F.linear(self._norm(x[-1:], self.norm), self.lm_head)
        return out if logits else out.argmax(dim=-1)

    def decode(
        self, ids: torch.Tensor, kv: torch.Tensor, pos: int, logits: bool = False
    ) -> torch.Tensor:
        """One step for B sequences holding ``pos`` tokens each; returns B next ids (or logits).

        Args:
            ids: [B] int64 token ids (the last token of each sequence).
            kv: [layers, 2, B, kv_heads, pos + 1, head_dim] cache view; slot ``pos`` is
                written here, all ``pos + 1`` slots are read.
            pos: the position of the new token (= KV length before the step).
        """
        s = self.shape
        b = ids.shape[0]
        group = s.heads // s.kv_heads
        cos, sin = self.cos[pos], self.sin[pos]
        x = F.embedding(ids, self.embed)
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(x, lw)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = kv[i, 0], kv[i, 1]  # [B, kv_heads, pos+1, D]
            kc[:, :, pos].copy_(k)
            vc[:, :, pos].copy_(v)
            qg = q.view(b, s.kv_heads, group, s.head_dim)
            if self.decode_attn == "matmul":
                # The matmuls spread over the KV length, so few sequences still fill the
                # GPU (SDPA's kernel here runs one block per sequence and KV head).
                sc = torch.matmul(qg, kc.transpose(-1, -2)) * (s.head_dim**-0.5)
                o = torch.matmul(torch.softmax(sc.float(), dim=-1).to(qg.dtype), vc)
            else:
                o = F.scaled_dot_product_attention(qg, kc, vc)
            x = x + F.linear(o.reshape(b, s.hidden), lw["wo"])
            x = self._mlp(x, lw)
        out = F.linear(self._norm(x, self.norm), self.lm_head)
        return out if logits else out.argmax(dim=-1)


def self_check(model: RandomLlama, tokens: int = 64) -> dict[str, Any]:
    """Decode after prefill must equal a prefill one token longer (cache, RoPE, GQA).

    Prefills ``tokens`` tokens, decodes token ``tokens`` from that cache, and
    compares its logits with the last logits of a prefill of all ``tokens + 1``
    tokens: ``rel_err`` = ||a - b|| / ||b|| (bf16 arithmetic: about 1e-2 or less).
    """
    s = model.shape

    def cache(length: int) -> torch.Tensor:
        dims = (s.layers, 2, 1, s.kv_heads, length, s.head_dim)
        return torch.empty(dims, device=model.device, dtype=model.dtype)

    ids = torch.randint(0, s.vocab, (tokens + 1,), device=model.device)
    kv_pre = cache(tokens)
    model.prefill(ids[:tokens], kv_pre)
    kv_dec = cache(tokens + 1)
    kv_dec[:, :, :, :, :tokens].copy_(kv_pre)
    a = model.decode(ids[tokens:], kv_dec, tokens, logits=True).float()
    kv_full = cache(tokens + 1)
    b = model.prefill(ids, kv_full, logits=True).float()
    kv_rel = (kv_dec.float() - kv_full.float()).norm() / kv_full.float().norm()
    return {
        "tokens": tokens,
        "logits_rel_err": float((a - b).norm() / b.norm()),
        "kv_rel_err": float(kv_rel),
        "same_next_token": bool(a.argmax() == b.argmax()),
        "finite": bool(torch.isfinite(a).all() and torch.isfinite(b).all()),
    }


def kv_pool(
    shape: LlamaShape, max_tokens: int, device: torch.device, seed: int = 1
) -> torch.Tensor:
    """A flat bf16 KV pool of ``max_tokens`` tokens, filled with random values (not zeros)."""
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim
    pool = torch.empty(max_tokens * per_token, device=device, dtype=torch.bfloat16)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    pool.normal_(0.0, 1.0, generator=gen)
    return pool


def kv_view(pool: torch.Tensor, shape: LlamaShape, batch: int, length: int) -> torch.Tensor:
    """[layers, 2, batch, kv_heads, length, head_dim] view on the front of the pool."""
    s = shape
    n = s.layers * 2 * batch * s.kv_heads * length * s.head_dim
    if n > pool.numel():
        raise ValueError(f"KV pool too small for batch {batch} x length {length}")
    return pool[:n].view(s.layers, 2, batch, s.kv_heads, length, s.head_dim)


def attention_flops(shape: LlamaShape, new_tokens: int, context: int, causal: bool) -> float:
    """QK^T and PV multiply-adds x 2 over all layers (causal: half the square)."""
    s = shape
    if causal:
        pairs = new_tokens * context + new_tokens * (new_tokens + 1) / 2
    else:
        pairs = new_tokens * (context + 1)
    return 4.0 * s.layers * s.heads * s.head_dim * pairs


def describe(shape: LlamaShape) -> dict[str, Any]:
    """The shape as plain data for the results file."""
    return {
        "name": shape.name,
        "hidden": shape.hidden,
        "layers": shape.layers,
        "heads": shape.heads,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "intermediate": shape.intermediate,
        "vocab": shape.vocab,
        "params": shape.params,
        "weight_bytes": 2 * shape.params,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "gqa_group": shape.heads // shape.kv_heads,
        "head_scale": 1.0 / math.sqrt(shape.head_dim),
    }
