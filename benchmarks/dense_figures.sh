#!/usr/bin/env bash
# The dense-task figures of docs/DENSE.md ("Figures on generated data"): each task trained for <= 5 minutes
# on generated scenes, Res2Net and ResNet backbones of the same size, then the same models untrained.
# Run it alone on the machine (timings): bash benchmarks/dense_figures.sh [OUT] (default runs/dense-figures).
# Takes about 30 minutes on 2 CPU cores. The scene folders are generated once, outside the training time.
# Every run is evaluated on 500 validation scenes (the validation stream does not depend on the training
# count, so the training data are those of a 50-scene folder; 50 scenes gave AP50 0.27-0.35 for one model).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dense-figures}
R2N=.venv/bin/res2net
mkdir -p "$OUT"

for model in res2net26_lite resnet26_lite; do
  # saliency (DSS): 128 px, 200 scenes, 1000 steps x 8, bf16 autocast
  $R2N saliency train --model $model --data synthetic --image-size 128 --steps 1000 --amp bf16 --quiet \
      --set data.synthetic_val=500 --set data.root="$OUT/data128" --set optim.lr=0.002 --out "$OUT/sal_$model"
  # segmentation (DeepLab v3+, output stride 16, 128-wide head): 96 px, 1000 scenes, 1400 steps x 8, bf16
  $R2N segment train --model $model --data synthetic --image-size 96 --steps 1400 --amp bf16 --quiet \
      --set data.synthetic_train=1000 --set data.synthetic_val=500 --set data.root="$OUT/data96_1k" \
      --set optim.lr=0.002 \
      --set model.head_channels=128 --out "$OUT/seg_$model"
  # detection (Faster R-CNN + FPN, trimmed heads, 3 anchor sizes per level): 128 px, 1000 scenes, 560 x 4, fp32
  $R2N detect train --model $model --data synthetic --image-size 128 --steps 560 --batch-size 4 --quiet \
      --set data.synthetic_train=1000 --set data.synthetic_val=500 --set data.root="$OUT/data128_1k" \
      --set optim.lr=0.001 \
      --set optim.clip_grad_norm=10 --set model.anchor_base=8 --set model.anchor_scales=3 \
      --set model.box_head_dim=256 --set model.fpn_channels=128 --set model.box_batch_size_per_image=128 \
      --set model.rpn_pre_nms_top_n_train=600 --set model.rpn_post_nms_top_n_train=300 \
      --set model.rpn_pre_nms_top_n_test=300 --set model.rpn_post_nms_top_n_test=300 --out "$OUT/det_$model"
  for task in saliency segment detect; do  # the same configuration freshly initialised
    short=${task:0:3}
    $R2N $task eval --checkpoint "$OUT/${short}_$model/last.pt" --random-weights
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in sorted(p for p in out.iterdir() if (p / "metrics.json").is_file()):
    trained = json.loads((run / "metrics.json").read_text())
    untrained = json.loads((run / "random-weights" / "metrics.json").read_text())
    seconds = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    train_s = sum(r["epoch_seconds"] for r in seconds if r["type"] == "epoch")
    pick = lambda m: {k: round(v, 3) for k, v in (m.get("bbox", m)).items() if isinstance(v, float)}
    print(f"{run.name}: train {train_s:.0f} s, trained {pick(trained)}, untrained {pick(untrained)}")
PY
