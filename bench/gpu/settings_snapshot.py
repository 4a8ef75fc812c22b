"""Snapshot a GPU's settings through NVML (read-only), and check that a later snapshot matches.

    python bench/gpu/settings_snapshot.py --out before.json
    ... the measurement ...
    python bench/gpu/settings_snapshot.py --out after.json --compare before.json

``--compare`` exits 1 and lists the differences if any setting (power limits,
application clocks, the P0 clock range a lock would narrow, persistence and compute
mode) differs; readings that move on their own (clock now, temperature) are kept in
the file but not compared. Nothing here changes a setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_info import nvml_info

SETTINGS = [
    "name",
    "driver",
    "power_limit_w",
    "power_limit_default_w",
    "power_limit_min_w",
    "power_limit_max_w",
    "app_sm_clock_mhz",
    "default_app_sm_clock_mhz",
    "pstate0_sm_clock_range_mhz",
    "max_sm_clock_mhz",
    "supported_mem_clocks_mhz",
    "persistence_mode",
    "compute_mode",
]


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The settings that differ between two snapshots, one line each."""
    return [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in SETTINGS
        if before.get(k) != after.get(k)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0, help="NVML index (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="snapshot JSON to write")
    ap.add_argument("--compare", type=Path, default=None, help="earlier snapshot to check against")
    args = ap.parse_args(argv)
    snap = {"taken_utc": dt.datetime.now(dt.UTC).isoformat(), **nvml_info(args.gpu)}
    if args.compare is not None:
        diff = differences(json.loads(args.compare.read_text()), snap)
        snap["compared_with"] = str(args.compare.name)
        snap["unchanged"] = not diff
        snap["differences"] = diff
    args.out.write_text(json.dumps(snap, indent=1))
    if "nvml_error" in snap:
        print(f"NVML not usable: {snap['nvml_error']}", file=sys.stderr)
        return 2
    if args.compare is not None:
        print("settings unchanged" if not diff else "SETTINGS CHANGED:\n" + "\n".join(diff))
        return 0 if not diff else 1
    print(f"snapshot of {snap.get('name')} (driver {snap.get('driver')}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
