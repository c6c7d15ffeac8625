"""Does fine-tuning a pretrained Res2Net beat training from scratch with few labels? (issue 14, real data)

Fashion-MNIST split by class: pretrain on classes 0-4 (all 30,000 training images), then learn classes 5-9
from 10 and from 100 labelled images per class, evaluated on all 5,000 test images of classes 5-9:

- fine-tuned: ``res2net train --config finetune --pretrained <the pretrain run>`` (backbone at a tenth of the
  head's lr, cosine, label smoothing; the classifier re-initialised for the new classes);
- from scratch: ``res2net train`` with the Fashion-MNIST recipe on the same images, same epochs and batch.

Both the small Res2Net (res2net17_slim) and its same-budget ResNet (resnet17_slim), 3 seeds each (the labelled
images and the initialisation change with the seed). Writes transfer.json, transfer.md and transfer.png.

    .venv/bin/python benchmarks/transfer_fmnist.py --out benchmarks/results/transfer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

from res2net.cli import main as res2net
from res2net.reporting import md_table, pyplot
from res2net.tasks.classification.seeds import mean_ci

MODELS = ("res2net17_slim", "resnet17_slim")
PRETRAIN_CLASSES = "[0,1,2,3,4]"
TARGET_CLASSES = "[5,6,7,8,9]"
COMMON = ["--dataset", "fashion-mnist", "--quiet", "--workers", "0"]


def run(argv: List[str]) -> None:
    code = res2net(argv)
    if code != 0:
        sys.exit(f"res2net {' '.join(argv)} failed with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 15], help="per --per-class entry")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16, 32], help="per --per-class entry")
    parser.add_argument("--ft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the finetune recipe (e.g. optim.backbone_lr_mult=1.0); its runs and report "
                             "get their own names, the pretraining and the from-scratch runs are shared")
    args = parser.parse_args()
    out = args.out
    runs = out / "runs"
    tag = "".join(f"+{kv}" for kv in args.ft_set)
    start = time.perf_counter()
    for model in MODELS:  # pretraining on the other five classes
        if not (runs / "pretrain" / model / "pretrained").is_dir():
            run(["train", "--model", model, *COMMON, "--set", f"data.classes={PRETRAIN_CLASSES}",
                 "--epochs", str(args.pretrain_epochs), "--out", str(runs / "pretrain")])
    results: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for n, epochs, batch in zip(args.per_class, args.epochs, args.batch_size):
        for model in MODELS:
            for arm in ("fine-tuned" + tag, "scratch"):
                accs = results.setdefault(f"{n}/class", {}).setdefault(model, {}).setdefault(arm, [])
                for seed in range(args.seeds):
                    folder = runs / f"n{n}" / arm / f"seed{seed}"
                    if not (folder / model / "pretrained").is_dir():
                        recipe = ["--config", "finetune", "--pretrained", str(runs / "pretrain" / model),
                                  *[w for kv in args.ft_set for w in ("--set", kv)]] \
                            if arm != "scratch" else ["--config", "fashion_mnist"]
                        run(["train", "--model", model, *COMMON, *recipe, "--set", f"data.classes={TARGET_CLASSES}",
                             "--set", f"data.train_per_class={n}", "--epochs", str(epochs), "--batch-size",
                             str(batch), "--seed", str(seed), "--set", f"run.eval_every={epochs}",
                             "--out", str(folder)])
                    accs.append(json.loads((folder / "metrics.json").read_text())["models"][model]["test_top1"])
    wall = time.perf_counter() - start
    write(out, results, args, wall, tag)
    return 0


def write(out: Path, results: Dict[str, Dict[str, Dict[str, List[float]]]], args: argparse.Namespace,
          wall: float, tag: str) -> None:
    rows = []
    for split, models in results.items():
        for model, arms in models.items():
            ft, sc = arms["fine-tuned" + tag], arms["scratch"]
            gap, _, ci = mean_ci([a - b for a, b in zip(ft, sc)])
            rows.append([split, model, f"{100 * statistics.fmean(ft):.2f} ± {100 * statistics.stdev(ft):.2f}",
                         f"{100 * statistics.fmean(sc):.2f} ± {100 * statistics.stdev(sc):.2f}",
                         f"{100 * gap:+.2f}", f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "-"])
    stem = "transfer" + tag.replace("=", "-")
    (out / f"{stem}.json").write_text(json.dumps({"results": results, "seeds": args.seeds, "wall_seconds": wall,
                                                   "per_class": args.per_class, "epochs": args.epochs}, indent=1))
    lines = ["# Fine-tuning vs from scratch on Fashion-MNIST classes 5-9 (pretrained on classes 0-4)", "",
             f"Command: `.venv/bin/python benchmarks/transfer_fmnist.py --out {out}"
             + "".join(f" --ft-set {kv}" for kv in args.ft_set) + f"`; {args.seeds} seeds; "
             f"wall {wall / 60:.1f} min.", "",
             *md_table(["labels", "model", "fine-tuned top-1 (%)", "scratch top-1 (%)", "gap (points)",
                        "gap 95% t interval"], rows), "", f"![transfer]({stem}.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (split, models) in zip(axes[0], results.items()):
        for i, (model, arms) in enumerate(models.items()):
            for j, (arm, accs) in enumerate(arms.items()):
                x = i * 3 + j
                ax.plot([x] * len(accs), [100 * a for a in accs], "o", color=f"C{j}",
                        label=arm if i == 0 else None)
        ax.set_xticks([0.5, 3.5], list(models))
        ax.set(title=f"{split} labelled images", ylabel="test top-1 (%), classes 5-9")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
