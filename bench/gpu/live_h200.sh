#!/usr/bin/env bash
# The live system on one lent GPU, read-only: settings snapshot, bench/gpu/live_gpu.py over a
# slice of the conversation trace, the idle-clock decay after work and after the last GPU
# process exits, settings snapshot again (compared). Usage: bench/gpu/live_h200.sh TRACE OUTDIR
set -u
trace=${1:?TRACE}; out=${2:?OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -q > "$out/nvidia_smi_before.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/settings_before.json"
timeout 330 python3 "$here/live_gpu.py" --trace "$trace" --window 0 120 --rate-scale 3 \
  --gpu h200 --slo-ttft-s 1.0 --slo-itl-s 0.05 --out-dir "$out/live" 2>&1 | tee "$out/live.log"
python3 "$here/idle_decay.py" --decay-s 30 --gap-phase-s 2 --out "$out/idle_decay.json" \
  2>&1 | tee "$out/idle_decay.log"
python3 "$here/idle_decay.py" --sample-only 30 --out "$out/idle_after_exit.json" \
  2>&1 | tee "$out/idle_after_exit.log"
nvidia-smi -q > "$out/nvidia_smi_after.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/settings_after.json" \
  --compare "$out/settings_before.json"
