"""SGLang's histogram bucket bounds, for tests that write or read SGLang-shaped /metrics.

The defaults of ``TokenizerMetricsCollector`` in SGLang 0.4.7's
``sglang/srt/metrics/collector.py``, copied from SGLang on purpose instead of
imported from the emulator's own copy (``services/emulator/metrics.py``): the
telemetry tests check the parser against SGLang's real bucket layout, so a
change to the emulator must not silently change what they check.
"""

from __future__ import annotations

__all__ = ["ITL_BOUNDS", "TTFT_BOUNDS"]

TTFT_BOUNDS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
ITL_BOUNDS = (
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
)
