"""The points ``llm_probe.py`` measures, without torch, so the model can be tabled for them anywhere.

``compare_model.py --gpu NAME`` with no run prints the model's prediction at exactly
these points (the prediction committed before a new GPU is measured).
"""

from __future__ import annotations

PREFILL_TOKENS = [128, 256, 512, 1024, 2048, 4096, 8192, 12288, 16384]
PREFILL_EAGER_TOKENS = [128, 1024, 4096]
DECODE_POINTS = [(b, 512) for b in (1, 2, 4, 8, 16, 32, 64, 96, 128, 129, 256, 384, 512)] + [
    (1, 128),
    (1, 2048),
    (1, 8192),
    (1, 16384),
    (16, 2048),
    (16, 8192),
    (64, 128),
    (64, 2048),
    (64, 4096),
    (128, 128),
    (128, 2048),
    (256, 1024),
]
