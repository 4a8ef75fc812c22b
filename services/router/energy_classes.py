"""Energy per request class: J per request and per token, by prompt and output length (pure).

One definition of the classes for the simulator's results and ``voltana report``:
a request is ``short`` or ``long`` on each side, split at ``input_split`` prompt
tokens and ``output_split`` output tokens (defaults near the means of the Azure
conversation trace: 1,155 in, 211 out).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["CLASS_NAMES", "EnergyItem", "class_summary", "request_class"]

INPUT_SPLIT = 1024
OUTPUT_SPLIT = 256

CLASS_NAMES = ("short-in/short-out", "short-in/long-out", "long-in/short-out", "long-in/long-out")


@dataclass(frozen=True, slots=True)
class EnergyItem:
    """One request's sizes and attributed energy (J) by phase."""

    input_tokens: int
    output_tokens: int
    prefill_j: float
    decode_j: float
    idle_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.prefill_j + self.decode_j + self.idle_j


def request_class(
    input_tokens: int,
    output_tokens: int,
    input_split: int = INPUT_SPLIT,
    output_split: int = OUTPUT_SPLIT,
) -> str:
    """``short-in/long-out`` and so on: prompt <= ``input_split``, output <= ``output_split``."""
    i = "short-in" if input_tokens <= input_split else "long-in"
    o = "short-out" if output_tokens <= output_split else "long-out"
    return f"{i}/{o}"


def _row(items: list[EnergyItem]) -> dict[str, Any]:
    n = len(items)
    total = sum(x.total_j for x in items)
    out_tok = sum(x.output_tokens for x in items)
    all_tok = out_tok + sum(x.input_tokens for x in items)
    return {
        "requests": n,
        "energy_j": round(total, 3),
        "prefill_j": round(sum(x.prefill_j for x in items), 3),
        "decode_j": round(sum(x.decode_j for x in items), 3),
        "idle_j": round(sum(x.idle_j for x in items), 3),
        "j_per_request": round(total / n, 6) if n else None,
        "j_per_output_token": round(total / out_tok, 6) if out_tok else None,
        "j_per_token": round(total / all_tok, 6) if all_tok else None,
        "input_tokens": sum(x.input_tokens for x in items),
        "output_tokens": out_tok,
    }


def class_summary(
    items: Iterable[EnergyItem],
    input_split: int = INPUT_SPLIT,
    output_split: int = OUTPUT_SPLIT,
) -> dict[str, dict[str, Any]]:
    """Per class (and ``all``): requests, energy by phase, J per request / output token / token."""
    groups: dict[str, list[EnergyItem]] = {name: [] for name in CLASS_NAMES}
    every: list[EnergyItem] = []
    for it in items:
        groups[request_class(it.input_tokens, it.output_tokens, input_split, output_split)].append(
            it
        )
        every.append(it)
    out = {name: _row(g) for name, g in groups.items() if g}
    out["all"] = _row(every)
    return out
