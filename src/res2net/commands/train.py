"""``res2net train`` and ``res2net eval``: image classification on the shared engine."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..engine import Context, build_loader, fit, load_config, select_amp, select_device
from ..engine.distributed import init_distributed
from ..errors import CheckpointError, ConfigError
from ..models import get_spec
from ..tasks.classification import (DATASETS, DEFAULT_RECIPE, ClassificationConfig, ClassificationData,
                                    ClassificationTask, load_data, model_summary, write_report)
from ..weights import describe_checkpoint, model_from_checkpoint
from .common import add_engine_args, command_line, engine_values, positive_int

TASK_FLAGS = {"model": "model.names", "dataset": "data.dataset", "data_dir": "data.data_dir",
              "train_subset": "data.train_subset"}


def train_config(args: argparse.Namespace) -> ClassificationConfig:
    """The config of a ``res2net train`` call: recipe < flags < ``--set``."""
    values = engine_values(args)
    values.update({key: getattr(args, dest) for dest, key in TASK_FLAGS.items()})
    if values["model.names"] is not None:
        values["model.names"] = [values["model.names"]]
    cfg = load_config(ClassificationConfig, args.config, args.overrides, values)
    for name in cfg.model.names:
        get_spec(name)  # unknown names fail before any data is read
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """``res2net train``: train every model of the config, then write the report (rank 0)."""
    cfg = train_config(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    dist = init_distributed(cfg.run.device)
    start = time.perf_counter()
    summaries: Dict[str, Dict[str, Any]] = {}
    confusions: Dict[str, Optional[Tensor]] = {}
    data: Optional[ClassificationData] = None
    for name in cfg.model.names:
        data = load_data(cfg.data, name, cfg.run.seed)
        task = ClassificationTask(name, cfg, data)
        if dist.is_main and not cfg.run.quiet:
            print(f"== {name}: {len(data.train)} train / {len(data.test)} test images, {cfg.run.epochs} epochs, "
                  f"out {out / name}", file=sys.stderr)
        result = fit(task, cfg, out / name, resume=args.resume)
        summaries[name] = model_summary(name, result, data, len(task.skipped))
        confusions[name] = task.confusion
    wall = time.perf_counter() - start
    if dist.is_main and data is not None:
        write_report(out, summaries, confusions, data.classes, cfg, wall, command_line("train"))
        for name, s in summaries.items():
            print(f"{name}: top-1 {100 * s['test_top1']:.2f}%  top-5 {100 * s['test_top5']:.2f}%  "
                  f"{s['train_seconds']:.0f} s  {s['images_per_second']:.0f} img/s")
        print(f"report: {out / 'report.md'}")
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
    model = model_from_checkpoint(info, name).model
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
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
    e.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--workers", type=int, help="DataLoader worker processes")
    e.add_argument("--out", help="JSON file to write (default: <checkpoint>.eval.json)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (data.*, run.*), e.g. --set run.amp=off")
    e.set_defaults(func=cmd_eval)
