"""Refit the H100 knobs of the emulator's GPU model to every real measurement there is.

The one calibration entry point. It runs the fit of ``bench/gpu/compare_model.py``
(``compare_model.py --fit`` is the same thing) over, at once:

- the committed probe runs on lent H100s (bench/results/h100_llm_probe.json and
  h100_llm_probe_run2.json, or the probe files given as arguments, each compared at
  the clock it ran at);
- the earlier probe, bench/results/h100_llama8b_shape_probe.json (``--legacy PATH``;
  skipped with a note when the file is absent);
- ML.ENERGY's published vLLM serving runs (as bounds).

It prints the fitted knobs (paste them into ``_H100`` in
groundtruth/gpu_specs.py; the A100 inherits the engine knobs) and the per-point
comparison. Needs scipy, which is not a runtime or test dependency:
``.venv/bin/pip install scipy``. About a minute on one core.

Usage: .venv/bin/python bench/emulator_calibrate.py [probe.json ...] [--legacy PATH]
       [--out comparison.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))

import compare_model


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return compare_model.main(["--fit", *args])


if __name__ == "__main__":
    sys.exit(main())
