"""``res2net complexity | ablation | cam | receptive-field``: the flags; each analysis writes a report folder
(``--out DIR``) through :mod:`res2net.analysis` or :mod:`res2net.tasks.ablation`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from ..reporting import out_dir
from ..tasks.ablation import BUDGETS, DATA_CARDS, VARIANTS, plan, sweep, write_report
from .common import add_model_arg, command_line, model_name, positive_int


def _device(name: str) -> torch.device:
    from ..hardware import select_device

    return select_device(name, what="--device")


# ---- complexity ----------------------------------------------------------------------------------------------
def cmd_complexity(args: argparse.Namespace) -> int:
    """Params, MACs, latency and peak memory of each model; ``--json`` prints the list to stdout."""
    from ..analysis.complexity import (DEFAULT_PATTERNS, complexity_rows, json_keys, report_lines, resolve_models,
                                       write_complexity_report)

    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (batch 1 is always measured), got {args.batch_size}")
    names = resolve_models(args.patterns or DEFAULT_PATTERNS)
    device = _device(args.device)
    if args.out:
        out_dir(args.out)  # a folder that cannot be the report's is refused before the measuring, not after
    rows = complexity_rows(names, args.input_size, args.batch_size, args.warmup, args.repeats,
                           memory=not args.no_memory, device=device, progress=not args.json and len(names) >= 2)
    if args.out:
        write_complexity_report(args.out, rows, args.input_size, args.batch_size, command_line("complexity"),
                                str(device))
    if args.json:
        print(json.dumps([{k: r[k] for k in json_keys(args.batch_size)} for r in rows], indent=2))
    else:
        print("\n".join(report_lines(rows, args.input_size, args.batch_size, command_line("complexity"),
                                     str(device))[4:-2]))
    return 0


# ---- cam -----------------------------------------------------------------------------------------------------
def cmd_cam(args: argparse.Namespace) -> int:
    """Grad-CAM of one model (or two, side by side) on images or the scikit-image samples."""
    from ..analysis.cam import cam_report

    if args.compare_checkpoint and not args.compare:
        raise ValueError("--compare-checkpoint needs --compare NAME2")
    models = [(args.model, args.checkpoint)] + ([(args.compare, args.compare_checkpoint)] if args.compare else [])
    report = cam_report(models, args.out, args.images, layer=args.layer, target=args.target,
                        input_size=args.input_size, command=command_line("cam"))
    print(f"report: {report}")
    return 0


# ---- receptive field -----------------------------------------------------------------------------------------
def cmd_receptive_field(args: argparse.Namespace) -> int:
    """Theoretical receptive-field sets vs the bottleneck, and measured ERFs vs the baseline."""
    from ..analysis.receptive_field import receptive_field_report

    report = receptive_field_report(model_name(args), args.out, args.checkpoint, args.baseline,
                                    args.baseline_checkpoint, args.input_size, args.images,
                                    command=command_line("receptive-field"))
    print(f"report: {report}")
    return 0


# ---- registration --------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``complexity``, ``ablation``, ``cam`` and ``receptive-field`` to the ``res2net`` command."""
    c = subparsers.add_parser("complexity", help="params, MACs, latency and peak memory (paper Tables 1-3)",
                              description="Params, MACs (FlopCounterMode/2), latency at batch 1 and N (median "
                              "after warm-up) and peak memory of one image (inference, training step).")
    c.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="model names or shell patterns (default: the 50-layer Res2Net family and baselines)")
    c.add_argument("--input-size", type=positive_int, default=224, help="image side (default 224)")
    c.add_argument("--batch-size", type=positive_int, default=16, help="the larger latency batch (default 16)")
    c.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing (default 3)")
    c.add_argument("--repeats", type=positive_int, default=10, help="timed forwards; the median is kept (default 10)")
    c.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (reported as NaN)")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    c.add_argument("--json", action="store_true",
                   help="print the rows as JSON (one object per model: name, params, MACs, latency)")
    c.add_argument("--out", metavar="DIR", help="also write report.md, complexity.{json,csv,png} there")
    c.set_defaults(func=cmd_complexity)


    register_ablation(subparsers)

    g = subparsers.add_parser("cam", help="Grad-CAM maps, two models side by side (paper Fig. 5)",
                              description="Grad-CAM of the last stage (or --layer) overlaid on each image.")
    g.add_argument("images", nargs="*", metavar="IMAGE", help="image files (default: scikit-image sample photos)")
    g.add_argument("--model", required=True, help="model name")
    g.add_argument("--checkpoint", help="weights of --model (default: random weights)")
    g.add_argument("--compare", metavar="NAME2", help="second model shown beside the first")
    g.add_argument("--compare-checkpoint", metavar="PATH2", help="weights of --compare")
    g.add_argument("--target", type=int, help="class index explained (default: each model's prediction)")
    g.add_argument("--layer", help="module name (model.named_modules), default: the last stage")
    g.add_argument("--input-size", type=positive_int, help="image side (default: the model card's)")
    g.add_argument("--out", default="runs/cam", metavar="DIR", help="report folder (default runs/cam)")
    g.set_defaults(func=cmd_cam)

    r = subparsers.add_parser("receptive-field", help="theoretical and effective receptive fields",
                              description="Receptive-field sizes created by the hierarchical connections (vs the "
                              "bottleneck of the same depth) and measured effective receptive fields per stage "
                              "(vs the ResNet baseline).")
    add_model_arg(r, "model name (ResNet family)")
    r.add_argument("--checkpoint", help="weights of --model (default: random weights)")
    r.add_argument("--baseline", help="model measured beside --model (default: the card's baseline)")
    r.add_argument("--baseline-checkpoint", help="weights of the baseline")
    r.add_argument("--input-size", type=positive_int, help="image side (default: the model card's)")
    r.add_argument("--images", type=positive_int, default=4, help="number of sample photos averaged (default 4)")
    r.add_argument("--out", default="runs/receptive-field", metavar="DIR", help="report folder")
    r.set_defaults(func=cmd_receptive_field)


# ---- ablation ------------------------------------------------------------------------------------------------
def cmd_ablation(args: argparse.Namespace) -> int:
    """``res2net ablation``: run (or continue) the sweep, then write the report."""
    budget = BUDGETS[args.budget]
    from ..engine.config import refuse_contradictions

    _device(args.device or "auto")  # refused before the sweep's progress bar starts
    refuse_contradictions({"run.epochs": args.epochs, "data.train_subset": args.train_subset,
                           "data.test_subset": args.test_subset, "run.device": args.device}, args.overrides)
    for flag in ("epochs", "train_subset", "test_subset"):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
            budget = dataclasses.replace(budget, **{flag: value})
    if args.dataset == "cifar100" and not args.data_dir:
        raise ValueError("--data-dir is required for --dataset cifar100 (the python-version folder)")
    runs = plan(budget, args.seeds, args.variants)
    out = out_dir(args.out)
    start = time.perf_counter()
    records = sweep(runs, out, args.dataset, budget, args.overrides, args.data_dir, args.device, args.resume)
    write_report(out, records, args.dataset, args.budget, time.perf_counter() - start, command_line("ablation"))
    print(f"report: {out / 'report.md'}")
    return 0


def register_ablation(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ablation`` to the ``res2net`` command."""
    a = subparsers.add_parser("ablation", help="scale/cardinality/depth sweep (Fig. 4) and Table 3 at small size",
                              description="Train small variants of one common base on a real data set through "
                              "the training engine; resumable (--resume continues unfinished runs).")
    a.add_argument("--dataset", choices=tuple(DATA_CARDS), default="fashion-mnist")
    a.add_argument("--data-dir", help="data folder (fashion-mnist: default /usr/share/datasets/fashion-mnist)")
    a.add_argument("--budget", choices=tuple(BUDGETS), default="quick",
                   help="; ".join(f"{k}: {b.note}" for k, b in BUDGETS.items()))
    a.add_argument("--seeds", type=positive_int, help="seeds per variant (default: the budget's)")
    a.add_argument("--variants", nargs="+", metavar="NAME", help=f"subset of: {', '.join(VARIANTS)}")
    a.add_argument("--epochs", type=positive_int, help="epochs per run (default: the budget's)")
    a.add_argument("--train-subset", type=positive_int, metavar="N", help="training images (default: the budget's)")
    a.add_argument("--test-subset", type=positive_int, metavar="N", help="test images (default: the budget's)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="engine/recipe override for every run, e.g. --set optim.lr=0.1 (repeatable)")
    a.add_argument("--out", default="runs/ablation", metavar="DIR", help="report folder and results store")
    a.add_argument("--resume", action="store_true", help="continue the sweep in --out (skip finished runs)")
    a.set_defaults(func=cmd_ablation)
