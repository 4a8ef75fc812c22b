#!/usr/bin/env bash
# One GPU measurement run, read-only: settings snapshot, the LLM probe, the idle-clock
# decay, settings snapshot again (compared). Usage: bench/gpu/measure_gpu.sh OUTDIR PREFIX
# (e.g. bench/gpu/measure_gpu.sh /tmp/r h200). Needs torch, numpy, pynvml, msgspec, structlog.
set -u
out=${1:?OUTDIR}; pre=${2:?PREFIX}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -q > "$out/${pre}_nvidia_smi_before.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/${pre}_settings_before.json"
python3 "$here/llm_probe.py" --out "$out/${pre}_llm_probe.json" \
  --samples-out "$out/${pre}_llm_probe_samples.json" 2>&1 | tee "$out/${pre}_llm_probe.log"
python3 "$here/idle_decay.py" --out "$out/${pre}_idle_decay.json" 2>&1 | tee "$out/${pre}_idle_decay.log"
nvidia-smi -q > "$out/${pre}_nvidia_smi_after.txt" 2>&1
python3 "$here/settings_snapshot.py" --out "$out/${pre}_settings_after.json" \
  --compare "$out/${pre}_settings_before.json"
