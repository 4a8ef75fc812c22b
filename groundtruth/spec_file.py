"""A GPU's constants from a JSON file: your own calibration in the simulator and planner.

Two forms. A change to a built-in GPU, what ``bench/gpu/compare_model.py --fit
--spec-out`` writes::

    {"base": "h200", "name": "NVIDIA H200 (refit)", "decode_fixed_s": 0.001288, ...}

or a whole ``GpuSpec`` (every field; an unbounded idle hold as ``"inf"``). Every value is
checked here, so a typo or a negative constant is an error that names the field, not a
simulation of a GPU that cannot exist.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
from voltana.common.errors import ConfigError
from voltana.groundtruth.gpu_specs import GPUS, GpuSpec

__all__ = ["load_gpu_spec", "spec_changes"]

_FIELDS = {f.name for f in msgspec.structs.fields(GpuSpec)}
_MAY_BE_INFINITE = {"default_idle_hold_s"}


def load_gpu_spec(path: str | Path) -> GpuSpec:
    """Read and check a GPU spec file (either form; see the module docstring).

    Raises:
        ConfigError: the file is missing or not JSON, names an unknown base GPU or field,
            or holds a value of the wrong type or out of range.
    """
    try:
        doc = msgspec.json.decode(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"GPU spec file {path}: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"GPU spec file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"GPU spec file {path}: expected a JSON object")
    fields = dict(doc)
    base = fields.pop("base", None)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConfigError(f"GPU spec file {path}: unknown fields {', '.join(unknown)}")
    if base is not None:
        if base not in GPUS:
            raise ConfigError(
                f"GPU spec file {path}: unknown base {base!r}; choose from {', '.join(GPUS)}"
            )
        fields = {**msgspec.structs.asdict(GPUS[base]), **fields}
    try:
        spec = msgspec.convert(fields, GpuSpec, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"GPU spec file {path}: {exc}") from None
    _check(spec, path)
    return spec


def _check(spec: GpuSpec, path: str | Path) -> None:
    for name, value in msgspec.structs.asdict(spec).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isnan(value) or value <= 0:
            raise ConfigError(f"GPU spec file {path}: {name} must be positive, got {value}")
        if math.isinf(value) and name not in _MAY_BE_INFINITE:
            raise ConfigError(f"GPU spec file {path}: {name} must be finite")
    if spec.min_clock_mhz >= spec.max_clock_mhz:
        raise ConfigError(f"GPU spec file {path}: min_clock_mhz must be below max_clock_mhz")
    if spec.volt_floor > 1.0:
        raise ConfigError(f"GPU spec file {path}: volt_floor is a fraction of V(f_max), <= 1")


def spec_changes(base: str, spec: GpuSpec) -> dict[str, Any]:
    """``spec`` as a file of the first form: the base's name and the fields that differ."""
    ref = msgspec.structs.asdict(GPUS[base])
    changed = {k: v for k, v in msgspec.structs.asdict(spec).items() if ref[k] != v}
    return {"base": base, **changed}
