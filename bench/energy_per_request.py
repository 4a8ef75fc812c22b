"""Energy per request and per token by request class, policy by policy, from simulator results.

Reads one or more ``results.json`` (``voltana sim --out DIR``), labelled
``LABEL=PATH``, and prints one markdown table: per load label and request
class, J per request and J per output token for each policy, then each
policy's attributed and unattributed energy. Any policy in the results gets a
column (``--policies`` picks and orders them).

    voltana sim --cluster 2p2d \\
        --rate-scale 3 --window 0,600 --slo-ttft-s 0.3 --slo-itl-s 0.015 \\
        --policies static-max,voltana --no-oracle --out out/conv_3x
    .venv/bin/python bench/energy_per_request.py 3x=out/conv_3x/results.json \\
        --policies static-max,voltana
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from voltana.services.router.energy_classes import CLASS_NAMES
from voltana.tools.report import results_report


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def table(sources: dict[str, dict[str, Any]], policies: list[str]) -> str:
    heads = ["load", "class", "requests"]
    for p in policies:
        heads += [f"{p} J/req", f"{p} J/out tok", f"{p} J/tok"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for label, rep in sources.items():
        for cls in (*CLASS_NAMES, "all"):
            rows = [rep[p]["energy_by_class"].get(cls) for p in policies]
            if not any(rows):
                continue
            n = next(r["requests"] for r in rows if r)
            cells = [label, f"**{cls}**" if cls == "all" else cls, str(n)]
            for r in rows:
                r = r or {}
                cells += [
                    _f(r.get("j_per_request"), "{:.1f}"),
                    _f(r.get("j_per_output_token"), "{:.3f}"),
                    _f(r.get("j_per_token"), "{:.4f}"),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| load | policy | GPU energy kJ | attributed kJ | unattributed (idle) kJ |")
    lines.append("|---|---|---|---|---|")
    for label, rep in sources.items():
        for p in policies:
            r = rep[p]
            lines.append(
                f"| {label} | {p} | {r['energy_j'] / 1e3:.1f} | "
                f"{r['attributed_energy_j'] / 1e3:.1f} | {r['unattributed_energy_j'] / 1e3:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="LABEL=PATH to a results.json")
    ap.add_argument("--policies", default=None, help="comma-separated (default: all in order)")
    args = ap.parse_args(argv)
    sources: dict[str, dict[str, Any]] = {}
    for item in args.results:
        label, _, path = item.partition("=")
        if not path:
            label, path = Path(item).parent.name, item
        try:
            rep = results_report(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            print(f"cannot read {path}: {exc}", file=sys.stderr)
            return 1
        if not rep:
            print(f"{path}: no energy per request class (older results?)", file=sys.stderr)
            return 1
        sources[label] = rep
    policies = args.policies.split(",") if args.policies else list(next(iter(sources.values())))
    missing = [p for p in policies if any(p not in rep for rep in sources.values())]
    if missing:
        print(f"policies not in every results file: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(table(sources, policies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
