#!/usr/bin/env bash
# Export every zoo model (random weights) to ONNX (dynamo exporter, dynamic batch) and TorchScript with
# `res2net export`, which verifies each file against eager (onnxruntime / torch.jit.load) on a random input,
# the scikit-image astronaut and (ONNX) a batch of 3. One line per export: model, format, seconds, the
# command's last line. Usage: bash benchmarks/export_sweep.sh [OUT_LOG]   (about 25 minutes on 2 cores)
set -u
cd "$(dirname "$0")/.."
log="${1:-benchmarks/results/export_sweep.log}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
: > "$log"
for model in $(.venv/bin/res2net models 2>/dev/null | awk 'NR > 1 {print $1}'); do
  for fmt in onnx torchscript; do
    extra=()
    [ "$fmt" = onnx ] && extra=(--dynamic-batch)
    start=$(date +%s)
    last=$(.venv/bin/res2net export "$model" --format "$fmt" "${extra[@]}" --out "$tmp/$model.$fmt" 2>&1 | tail -1)
    echo "$model $fmt $(( $(date +%s) - start ))s :: $last" | tee -a "$log"
    rm -f "$tmp/$model.$fmt"
  done
done
echo "failed: $(grep -vc ' :: wrote ' "$log") of $(wc -l < "$log")"
