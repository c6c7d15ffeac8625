"""``res2net train`` and ``res2net eval``: image classification on the shared engine."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..engine import Context, DistInfo, build_loader, fit, load_config, select_amp, select_device
from ..engine.distributed import init_distributed
from ..jsonio import write_json
from ..engine.runfolder import RunLock
from ..errors import CheckpointError, ConfigError, DataError
from ..models import get_spec
from ..tasks.classification import (DATASETS, DEFAULT_RECIPE, ClassificationConfig, ClassificationData,
                                    ClassificationTask, earlier_models, load_data, model_summary,
                                    write_report)
from ..tasks.classification.seeds import seed_statistics, seeds_plot
from ..weights import PRETRAINED_DIR, describe_checkpoint, fetch_first, load_model, parse_pretrained, save_pretrained
from .common import add_engine_args, command_line, engine_values, positive_int

TASK_FLAGS = {"model": "model.names", "dataset": "data.dataset", "data_dir": "data.data_dir",
              "train_subset": "data.train_subset", "pretrained": "model.pretrained",
              "freeze_stages": "model.freeze_stages", "linear_probe": "model.linear_probe"}


def train_config(args: argparse.Namespace) -> ClassificationConfig:
    """The config of a ``res2net train`` call: recipe < flags < ``--set``."""
    values = engine_values(args)
    values.update({key: getattr(args, dest, None) for dest, key in TASK_FLAGS.items()})
    if values["model.names"] is not None:
        values["model.names"] = [values["model.names"]]
    cfg = load_config(ClassificationConfig, args.config, args.overrides, values)
    for name in cfg.model.names:
        get_spec(name)  # unknown names fail before any data is read
    if not isinstance(parse_pretrained(cfg.model.pretrained), bool) and len(cfg.model.names) > 1:
        raise ConfigError(f"model.pretrained={cfg.model.pretrained!r} holds one model's weights; train one model "
                          f"(--model NAME), not {', '.join(cfg.model.names)}")
    return cfg


def train_one(name: str, cfg: ClassificationConfig, out: Path, resume: bool, quiet: bool
              ) -> Tuple[Dict[str, Any], Optional[Tensor], ClassificationData]:
    """Fit one model (fine-tuning from ``model.pretrained`` when set) into ``out``; write its best weights as a
    :func:`~res2net.weights.save_pretrained` folder (``out/pretrained``); return its report entry."""
    weights = None
    if cfg.model.pretrained:
        weights = fetch_first(name, cfg.model.pretrained)
    data = load_data(cfg.data, name, cfg.run.seed, card=weights.preprocessing if weights else None)
    task = ClassificationTask(name, cfg, data, weights)
    if not quiet:
        start = f", fine-tuning from {weights.source}" if weights else ""
        print(f"== {name}: {len(data.train)} train / {len(data.test)} test images, {cfg.run.epochs} epochs{start}, "
              f"out {out}", file=sys.stderr)
    result = fit(task, cfg, out, resume=resume)
    summary = model_summary(name, result, data, len(task.skipped))
    if task.dist.is_main and (out / "best.pt").is_file():
        best = load_model(out / "best.pt", name)  # the model's name, classes and preprocessing come with it
        save_pretrained(best, out / PRETRAINED_DIR, classes=data.classes, data=cfg.data.dataset,
                        command=command_line("train"), metrics={k: summary[k] for k in ("test_top1", "test_top5")})
    return summary, task.confusion, data


def cmd_train(args: argparse.Namespace) -> int:
    """``res2net train``: train every model of the config (``--seeds N``: each with N seeds, one after the
    other), then write the report (rank 0)."""
    cfg = train_config(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    dist = init_distributed(cfg.run.device)
    lock = RunLock(out)  # one run at a time per --out
    try:
        if dist.is_main:
            lock.acquire()
            earlier_models(out, cfg.data.dataset)  # a report of another data set is refused before training
        return train_all(args, cfg, out, dist)
    finally:
        lock.release()


def train_all(args: argparse.Namespace, cfg: ClassificationConfig, out: Path, dist: DistInfo) -> int:
    """Train every model of ``cfg`` into ``out`` (each with ``--seeds`` seeds), then write the report."""
    start = time.perf_counter()
    summaries: Dict[str, Dict[str, Any]] = {}
    confusions: Dict[str, Optional[Tensor]] = {}
    data: Optional[ClassificationData] = None
    seeds = [cfg.run.seed + k for k in range(args.seeds)]
    top1: Dict[str, List[float]] = {name: [] for name in cfg.model.names}
    for k, seed in enumerate(seeds):
        run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
        for name in cfg.model.names:
            folder = out / name if args.seeds == 1 else out / name / f"seed{seed}"
            summary, confusion, data = train_one(name, run_cfg, folder, args.resume,
                                                 quiet=not dist.is_main or cfg.run.quiet)
            top1[name].append(summary["test_top1"])
            if k == 0:
                summaries[name], confusions[name] = summary, confusion
    wall = time.perf_counter() - start
    if dist.is_main and data is not None:
        stats = None
        if args.seeds > 1:
            pairs = [(n, get_spec(n).baseline) for n in cfg.model.names if get_spec(n).baseline in top1]
            stats = seed_statistics(top1, [(a, b) for a, b in pairs if b is not None])
            seeds_plot(stats, out / "seeds.png")
        write_report(out, summaries, confusions, data.classes, cfg, wall, command_line("train"), seeds=stats)
        for name, s in summaries.items():
            if stats:
                m = stats["models"][name]
                print(f"{name}: top-1 {100 * m['mean']:.2f}% +- {100 * m['std']:.2f} over {args.seeds} seeds")
            else:
                print(f"{name}: top-1 {100 * s['test_top1']:.2f}%  top-5 {100 * s['test_top5']:.2f}%  "
                      f"{s['train_seconds']:.0f} s  {s['images_per_second']:.0f} img/s")
        for pair in (stats or {}).get("pairs", []):
            lo, hi = pair["ci95"]
            print(f"{pair['model']} - {pair['baseline']}: {100 * pair['mean_diff']:+.2f} points, 95% CI "
                  f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({'excludes' if pair['excludes_zero'] else 'includes'} 0)")
        print(f"report: {out / 'report.md'}")
        unscored = [n for n, s in summaries.items() if not math.isfinite(s["test_top1"])]
        if unscored:
            raise DataError(f"no evaluation image could be read for {', '.join(unscored)}: their test metrics are "
                            f"null in {out / 'metrics.json'} (see the skipped-image warnings)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``res2net eval``: top-1/top-5 error of a checkpoint on a data set; prints and writes JSON."""
    info = describe_checkpoint(args.checkpoint)
    name = args.model or info.model_name
    if not name:
        raise CheckpointError(f"{args.checkpoint} does not say which model it holds; give --model NAME")
    data_values = dict((info.config or {}).get("data", {}))
    for key in ("train_subset", "test_subset"):
        data_values.pop(key, None)
    values = {f"data.{k}": v for k, v in data_values.items()}
    flags = {"data.dataset": args.dataset, "data.data_dir": args.data_dir, "data.test_subset": args.test_subset,
             "optim.batch_size": args.batch_size, "run.device": args.device, "run.workers": args.workers}
    values.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(ClassificationConfig, None, args.overrides, values)
    data = load_data(cfg.data, name, cfg.run.seed)
    task = ClassificationTask(name, cfg, data)
    model = load_model(info, name)
    if (model.num_classes, model.in_chans) != (len(data.classes), data.in_chans):
        raise CheckpointError(f"{args.checkpoint} holds {name} for {model.num_classes} classes and {model.in_chans} "
                              f"input channel(s); {cfg.data.dataset} has {len(data.classes)} and {data.in_chans}")
    device = select_device(cfg.run.device)
    ctx = Context(device=device, amp_dtype=select_amp(cfg.run.amp, device), channels_last=cfg.run.channels_last,
                  dist=init_distributed(cfg.run.device), out_dir=Path(args.checkpoint).parent)
    model.to(device).eval()
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    loader, _ = build_loader(data.test, cfg.optim.batch_size, train=False, workers=cfg.run.workers,
                             collate_fn=task.collate_fn, device=device)
    with torch.no_grad(), ctx.autocast():
        metrics = task.evaluate(model, loader, ctx)
    if not metrics:
        raise CheckpointError(f"no readable evaluation images in {cfg.data.data_dir}")
    result = {"model": name, "checkpoint": str(args.checkpoint), "dataset": cfg.data.dataset,
              "images": len(data.test), "top1_error": 1 - metrics["top1"], "top5_error": 1 - metrics["top5"],
              "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
              "skipped_images": len(task.skipped)}
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
    write_json(out, result)
    print(f"{name} on {cfg.data.dataset} ({len(data.test)} images): top-1 error "
          f"{100 * result['top1_error']:.2f}%  top-5 error {100 * result['top5_error']:.2f}%  -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``res2net`` command."""
    p = subparsers.add_parser("train", help="train classifiers (default: Res2Net vs ResNet on Fashion-MNIST)",
                              description="Train image classifiers with a recipe (YAML) on the shared engine. "
                              "With no arguments: the embedded Fashion-MNIST default (docs/TRAINING.md).")
    p.add_argument("--model", help="model name (res2net models); default: the recipe's model.names")
    p.add_argument("--dataset", choices=DATASETS, help="data set (data.dataset)")
    p.add_argument("--data-dir", help="data folder (data.data_dir)")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="train on a random N images (data.train_subset)")
    p.add_argument("--pretrained", metavar="SRC",
                   help="fine-tune from weights: official, a .pth/.bin/.safetensors path or URL, hf-hub:ORG/REPO, or "
                        "a run folder (model.pretrained); use --config finetune for the fine-tuning recipe")
    p.add_argument("--freeze-stages", type=int, metavar="N",
                   help="freeze the stem and stages 1..N, their BatchNorm statistics too (model.freeze_stages)")
    p.add_argument("--linear-probe", action="store_true", default=None,
                   help="train the classifier only (model.linear_probe)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="train each model with N seeds (run.seed, +1, ...); report means, spreads and the paired "
                        "difference to the same-budget baseline with a 95%% interval")
    add_engine_args(p, DEFAULT_RECIPE)
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 error of a checkpoint",
                              description="Evaluate a checkpoint (ours or a bare state_dict) on a data set.")
    e.add_argument("--model", help="model name the checkpoint belongs to (default: the one our checkpoints name)")
    e.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    e.add_argument("--dataset", choices=DATASETS, help="data set (default: the checkpoint's, else imagefolder)")
    e.add_argument("--data-dir", help="data folder")
    e.add_argument("--test-subset", type=positive_int, metavar="N", help="evaluate a random N images")
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--workers", type=int, help="DataLoader worker processes")
    e.add_argument("--out", help="JSON file to write (default: <checkpoint>.eval.json)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (data.*, run.*), e.g. --set run.amp=off")
    e.set_defaults(func=cmd_eval)
