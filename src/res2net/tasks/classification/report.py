"""The report of a ``res2net train`` run: metrics.json, report.md, curves.png and confusion.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ...engine import FitResult, to_dict
from ...files import write_text
from ...jsonio import write_json
from ...errors import ConfigError
from ...models import build_model, count_macs, count_params, get_spec
from .config import ClassificationConfig
from .data import ClassificationData


def model_summary(name: str, result: FitResult, data: ClassificationData, skipped: int) -> Dict[str, Any]:
    """The metrics.json entry of one trained model."""
    with torch.device("meta"):
        meta_model = build_model(name, num_classes=len(data.classes), in_chans=data.in_chans)
    epoch_times = [h["epoch_seconds"] for h in result.history]
    return {
        "test_top1": result.metrics.get("top1", float("nan")), "test_top5": result.metrics.get("top5", float("nan")),
        "params": count_params(meta_model), "macs": count_macs(meta_model, data.input_size, data.in_chans),
        "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
        "skipped_images": skipped, "epochs": result.epochs,
        "epoch_seconds": epoch_times, "history": result.history,
    }


def earlier_models(out: Path, dataset: str, exclude: Dict[str, Any] = {}) -> Dict[str, Dict[str, Any]]:
    """The entries of ``out/metrics.json`` written by earlier runs into the same folder for models not in
    ``exclude``: a second model trained into an existing ``--out`` joins the report instead of replacing it.
    A report of another data set is refused (:class:`ConfigError`), so that one table never mixes data sets."""
    path = out / "metrics.json"
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
        models = earlier["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # an unreadable or foreign file is replaced
    if earlier.get("dataset") != dataset:
        raise ConfigError(f"{path} reports models trained on {earlier.get('dataset')!r}, this run uses {dataset!r}; "
                          "choose another --out")
    kept = {}
    for name, entry in models.items():
        if name in exclude or not isinstance(entry, dict):
            continue
        for key in ("test_top1", "test_top5"):
            entry[key] = float("nan") if entry.get(key) is None else entry[key]
        kept[name] = entry
    return kept


def write_report(out: Path, summaries: Dict[str, Dict[str, Any]], confusions: Dict[str, Optional[Tensor]],
                 classes: List[str], cfg: ClassificationConfig, wall_seconds: float, command: str,
                 seeds: Optional[Dict[str, Any]] = None) -> None:
    """metrics.json, report.md, curves.png (loss and accuracy per epoch) and confusion.png."""
    from ...reporting import pyplot, save_figure

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    summaries = {**earlier_models(out, cfg.data.dataset, exclude=summaries), **summaries}
    metrics = {"models": summaries, "dataset": cfg.data.dataset, "wall_seconds": wall_seconds, "seeds": seeds,
               "command": command, "config": to_dict(cfg)}
    write_json(out / "metrics.json", metrics)  # strict: a metric that could not be computed is null + flagged

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in summaries.items():
        epochs = [h["epoch"] for h in s["history"]]
        ax_loss.plot(epochs, [h["train_loss"] for h in s["history"]], "-o", label=f"{name} train")
        ev = [(h["epoch"], h["loss"], h["top1"]) for h in s["history"] if "top1" in h]
        ax_loss.plot([e[0] for e in ev], [e[1] for e in ev], "--s", label=f"{name} test")
        ax_acc.plot([e[0] for e in ev], [100 * e[2] for e in ev], "-o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")

    shown = {n: c for n, c in confusions.items() if c is not None}
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 5), squeeze=False)
        for ax, (name, conf) in zip(axes[0], shown.items()):
            norm = conf.float() / conf.sum(1, keepdim=True).clamp(min=1)
            ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set(title=name, xlabel="predicted", ylabel="true")
            if len(classes) <= 20:
                ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
                ax.set_yticks(range(len(classes)), classes, fontsize=7)
                for i in range(len(classes)):
                    for j in range(len(classes)):
                        if conf[i, j]:
                            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6,
                                    color="white" if norm[i, j] > 0.5 else "black")
        fig.tight_layout()
        save_figure(fig, out / "confusion.png")

    lines = [f"# Classification report ({cfg.data.dataset})", "", f"Command: `{command}`", "",
             f"Wall time: {wall_seconds:.0f} s", "",
             "| model | params | MACs | top-1 err (%) | top-5 err (%) | epochs | train s | s/epoch | img/s | skipped |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        per_epoch = sum(s["epoch_seconds"]) / max(1, len(s["epoch_seconds"]))
        lines.append(f"| {name} | {s['params']:,} | {s['macs'] / 1e6:.1f}M | {100 * (1 - s['test_top1']):.2f} | "
                     f"{100 * (1 - s['test_top5']):.2f} | {s['epochs']} | {s['train_seconds']:.0f} | "
                     f"{per_epoch:.1f} | {s['images_per_second']:.0f} | {s['skipped_images']} |")
    for name, s in summaries.items():
        base = get_spec(name).baseline
        if base in summaries:
            b = summaries[base]
            ratio = (sum(s["epoch_seconds"]) / len(s["epoch_seconds"])) / \
                (sum(b["epoch_seconds"]) / len(b["epoch_seconds"]))
            lines += ["", f"{name} vs its same-budget baseline {base}: top-1 "
                      f"{100 * s['test_top1']:.2f}% vs {100 * b['test_top1']:.2f}%, params {s['params']:,} vs "
                      f"{b['params']:,}, time per epoch x{ratio:.2f}."]
    if seeds:
        lines += seed_lines(seeds)
    lines += ["", "![curves](curves.png)", "", "![confusion](confusion.png)", ""]
    write_text(out / "report.md", "\n".join(lines))


def seed_lines(stats: Dict[str, Any]) -> List[str]:
    """The report.md section of a ``--seeds N`` run: each model's mean and spread, each pair's difference."""
    n = len(next(iter(stats["models"].values()))["seeds"])
    lines = ["", f"## Over {n} seeds", "", "| model | mean top-1 (%) | std | per seed |", "|---|---:|---:|---|"]
    for name, m in stats["models"].items():
        lines.append(f"| {name} | {100 * m['mean']:.2f} | {100 * m['std']:.2f} | "
                     + ", ".join(f"{100 * v:.2f}" for v in m["seeds"]) + " |")
    for pair in stats["pairs"]:
        lo, hi = pair["ci95"]
        lines += ["", f"{pair['model']} - {pair['baseline']}: mean paired difference {100 * pair['mean_diff']:+.2f} "
                  f"points, 95% Student-t interval [{100 * lo:+.2f}, {100 * hi:+.2f}]: it "
                  f"{'excludes' if pair['excludes_zero'] else 'includes'} zero."]
    return lines + ["", "![seeds](seeds.png)"]
