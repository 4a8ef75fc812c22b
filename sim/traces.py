"""The trace shipped with the package, so the simulator runs from a fresh install.

The Azure LLM inference trace 2023, conversation service (one hour, 19,366
requests), gzip-compressed; licence and attribution in ``sim/data/README.md``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AZURE_CONV_2023", "DEFAULT_TRACE", "packaged_trace"]

_DATA = Path(__file__).resolve().parent / "data"

AZURE_CONV_2023 = "azure_llm_2023_conv"
"""Name of the packaged Azure 2023 conversation trace."""

DEFAULT_TRACE = AZURE_CONV_2023
"""The trace ``voltana sim`` runs when neither ``--trace`` nor ``--synthetic`` is given."""


def packaged_trace(name: str = DEFAULT_TRACE) -> Path:
    """Path of a packaged trace (``.csv.gz``; :func:`voltana.sim.workload.load_trace` reads it)."""
    return _DATA / f"{name}.csv.gz"
