"""The probes' Llama-shaped random-weight model: ``voltana.services.emulator.torch_llama``.

One copy, shared with the GPU-backed worker (``voltana emulator --backend torch``). That
module imports torch alone, so the probes still run on a GPU host that has torch but not
the project's other dependencies: the checkout is loaded as the ``voltana`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voltana_path import ensure_voltana

ensure_voltana()

from voltana.services.emulator.torch_llama import (  # noqa: E402
    SHAPES,
    LlamaShape,
    RandomLlama,
    attention_flops,
    describe,
    kv_pool,
    kv_view,
    self_check,
)

__all__ = [
    "SHAPES",
    "LlamaShape",
    "RandomLlama",
    "attention_flops",
    "describe",
    "kv_pool",
    "kv_view",
    "self_check",
]
