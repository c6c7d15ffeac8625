#!/usr/bin/env bash
# Issue 15's figures for docs/BENCHMARKS.md: run on an IDLE machine (check `uptime`: load average < 1).
#   1. the deploy suites (one process each, interleaved rounds): res2net50_26w_4s and the Fashion-MNIST slim
#      models on eager / inductor (freezing) / onnxruntime / OpenVINO, fp32 / bf16 / int8, batch 1 and 16,
#      with the conv roofline at each network's stage shapes, plus the issue-15 target lines;
#   2. int8 vs fp32 top-1 on the full Fashion-MNIST test set with the default run's checkpoints;
#   3. the eager path's per-layer profile against OpenVINO's (fp32 and bf16, batch 1 and 16; the oneDNN
#      kernels' own time against the PyTorch calls around them), and the one-thread
#      A/B of forcing oneDNN for every convolution (benchmarks/onednn_one_thread.py).
# Usage: bash benchmarks/run_deploy_bench.sh [RUNS_DIR]   (RUNS_DIR: where `res2net train --out` wrote the
# default run, default /work/runs/default). About 15-25 minutes on 2 cores (inductor compiles take most).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-/work/runs/default}
OUT=benchmarks/results/deploy
PY=.venv/bin/python
mkdir -p "$OUT"
uptime | tee "$OUT/uptime.txt"
lscpu | grep 'Model name' | tee -a "$OUT/uptime.txt"
$PY benchmarks/run_bench.py --suites deploy,deploy-slim --repeats 5 --out "$OUT" 2>&1 | tee "$OUT/run_bench.log"
$PY benchmarks/int8_accuracy.py --runs "$RUNS" --out "$OUT" 2>&1 | tee "$OUT/int8_accuracy.log"
for batch in 1 16; do
  for dtype in fp32 bf16; do
    $PY benchmarks/profile_eager.py --batch "$batch" --dtype "$dtype" --rounds 5 --out "$OUT"
  done
done
OMP_NUM_THREADS=1 $PY benchmarks/onednn_one_thread.py 2>&1 | tee "$OUT/onednn_one_thread.log"
uptime | tee -a "$OUT/uptime.txt"
echo "done: $OUT/{deploy,deploy-slim}.md, targets.md, int8_accuracy.md, profile_*.md"
