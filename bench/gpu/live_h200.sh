#!/usr/bin/env bash
# The live system on one lent GPU, read-only, and its model twin, in one call: settings
# snapshot; bench/gpu/live_gpu.py over a slice of the conversation trace with the GPU-backed
# worker behind the router, and at the same time the same slice through a worker paced by
# the GPU model (no GPU work: --backend model, emulated telemetry); settings snapshot again
# (compared); then live_compare.py: both runs and the simulator on the same slice, figure by
# figure (compare.md). Usage: bench/gpu/live_h200.sh TRACE OUTDIR [live_gpu.py flags...]
set -u
trace=${1:?TRACE}; out=${2:?OUTDIR}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -q > "$out/nvidia_smi_before.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/settings_before.json"
common=(--trace "$trace" --window 0 120 --rate-scale 3 --gpu h200 --slo-ttft-s 1.0
  --slo-itl-s 0.05 "$@")
timeout 420 python3 "$here/live_gpu.py" "${common[@]}" --backend model --gpu-source emulated \
  --out-dir "$out/twin" > "$out/twin.log" 2>&1 &
twin=$!
timeout 540 python3 "$here/live_gpu.py" "${common[@]}" --out-dir "$out/live" 2>&1 \
  | tee "$out/live.log"
wait "$twin"
nvidia-smi -q > "$out/nvidia_smi_after.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/settings_after.json" \
  --compare "$out/settings_before.json"
python3 "$here/live_compare.py" "$out" --gpu-spec "$here/../results/h200_refit_spec.json"
