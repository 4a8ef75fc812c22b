"""Compare two simulator results.json files figure by figure (wall-clock fields ignored).

Used to show that a change leaves the simulator's results unchanged:

    .venv/bin/python bench/sim_results.py --out /tmp/after/sim_results
    .venv/bin/python bench/compare_results.py bench/results/sim_results.json /tmp/after/sim_results.json

Prints how many figures differ (and the first few); exits 1 when any does.
Policies present in only one file are listed, and their figures are not compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IGNORED = ("wall",)
"""Keys naming wall-clock measurements of the run itself, which differ from run to run."""


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Every place where ``after`` differs from ``before``, as readable lines."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            if any(word in key for word in IGNORED):
                continue
            if key not in before or key not in after:
                out.append(f"{path}/{key}: only in {'after' if key in after else 'before'}")
                continue
            out.extend(differences(before[key], after[key], f"{path}/{key}"))
        return out
    if isinstance(before, list) and isinstance(after, list):
        out = (
            [f"{path}: {len(before)} items before, {len(after)} after"]
            if len(before) != len(after)
            else []
        )
        for i, (x, y) in enumerate(zip(before, after, strict=False)):
            out.extend(differences(x, y, f"{path}[{i}]"))
        return out
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def count_figures(doc: Any) -> int:
    """How many leaf values a results document holds."""
    if isinstance(doc, dict):
        return sum(count_figures(v) for k, v in doc.items() if not any(w in k for w in IGNORED))
    if isinstance(doc, list):
        return sum(count_figures(v) for v in doc)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--show", type=int, default=20, help="differences to print (default 20)")
    args = ap.parse_args(argv)
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    diffs = differences(before, after)
    print(
        f"{len(diffs)} differing figures of {count_figures(before)} ({args.before} -> {args.after})"
    )
    for line in diffs[: args.show]:
        print("  " + line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
