"""GPU spec files: both forms load to the GpuSpec they describe; bad files are clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest
from voltana.common.errors import ConfigError
from voltana.groundtruth.gpu_specs import GPUS
from voltana.groundtruth.spec_file import load_gpu_spec, spec_changes
from voltana.sim.config import ClusterSpec, SimConfig, config_params


def _file(tmp_path: Path, doc: object, name: str = "gpu.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_changes_to_a_built_in_gpu(tmp_path: Path) -> None:
    spec = load_gpu_spec(_file(tmp_path, {"base": "h200", "decode_fixed_s": 0.002, "name": "x"}))
    assert spec == msgspec.structs.replace(GPUS["h200"], decode_fixed_s=0.002, name="x")
    assert spec_changes("h200", spec) == {"base": "h200", "name": "x", "decode_fixed_s": 0.002}


def test_a_whole_spec_round_trips_with_an_unbounded_idle_hold(tmp_path: Path) -> None:
    whole = msgspec.structs.asdict(GPUS["a100"])
    whole["default_idle_hold_s"] = "inf"  # JSON has no infinity
    spec = load_gpu_spec(_file(tmp_path, whole))
    assert spec == GPUS["a100"] and math.isinf(spec.default_idle_hold_s)
    assert spec_changes("a100", spec) == {"base": "a100"}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"base": "h900"}, "unknown base 'h900'; choose from"),
        ({"base": "h200", "decode_fixed_ms": 1.0}, "unknown fields decode_fixed_ms"),
        ({"base": "h200", "sm_count": "many"}, "sm_count"),
        ({"base": "h200", "hbm_power_w": -5}, "hbm_power_w must be positive"),
        ({"base": "h200", "sm_power_w": "inf"}, "sm_power_w must be finite"),
        ({"base": "h200", "min_clock_mhz": 2000}, "min_clock_mhz must be below"),
        ({"base": "h200", "volt_floor": 1.5}, "volt_floor"),
        ({"name": "no base, not whole"}, "sm_count"),
    ],
)
def test_bad_files_name_what_is_wrong(tmp_path: Path, doc: object, needle: str) -> None:
    with pytest.raises(ConfigError, match="GPU spec file") as err:
        load_gpu_spec(_file(tmp_path, doc))
    assert needle in str(err.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_gpu_spec(tmp_path / "absent.json")


def test_the_simulator_uses_the_override_everywhere(tmp_path: Path) -> None:
    """KV capacity, the GPU of every instance and results.json's params follow the file."""
    spec = load_gpu_spec(_file(tmp_path, {"base": "h100", "mem_total_gib": 40.0}))
    base = SimConfig(cluster=ClusterSpec.parse("1u", gpu="h100"))
    small = msgspec.structs.replace(base, gpu_override=spec)
    assert small.gpu_spec().mem_total_gib == 40.0
    assert small.kv_capacity_tokens() < base.kv_capacity_tokens()
    assert config_params(small)["gpu_override"] == {"base": "h100", "mem_total_gib": 40.0}
    assert config_params(base)["gpu_override"] is None
