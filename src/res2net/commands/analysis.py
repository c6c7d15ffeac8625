"""``res2net complexity | ablation | cam | receptive-field``: each writes a report folder (``--out DIR``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..analysis.common import trained_model
from ..data.samples import sample_images
from ..jsonio import write_json
from ..reporting import md_table, out_dir, write_csv
from ..tasks.ablation import BUDGETS, DATA_CARDS, VARIANTS, plan, sweep, write_report
from .common import command_line, positive_int


def _device(name: str) -> torch.device:
    from ..hardware import select_device

    return select_device(name, what="--device")


# ---- complexity ----------------------------------------------------------------------------------------------
def cmd_complexity(args: argparse.Namespace) -> int:
    """Params, MACs, latency and peak memory of each model; ``--json`` prints the list to stdout."""
    from tqdm.auto import tqdm

    from ..analysis.complexity import DEFAULT_PATTERNS, complexity_row, json_keys, plot, report_lines, resolve_models

    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (batch 1 is always measured), got {args.batch_size}")
    names = resolve_models(args.patterns or DEFAULT_PATTERNS)
    device = _device(args.device)
    rows = [complexity_row(n, args.input_size, args.batch_size, args.warmup, args.repeats,
                           memory=not args.no_memory, device=device)
            for n in tqdm(names, desc="complexity", disable=args.json or len(names) < 2, file=sys.stderr)]
    keys = json_keys(args.batch_size)
    if args.out:
        out = out_dir(args.out)
        write_json(out / "complexity.json", rows)
        write_csv(out / "complexity.csv", rows)
        plot(rows, out / "complexity.png", args.batch_size)
        (out / "report.md").write_text("\n".join(report_lines(rows, args.input_size, args.batch_size,
                                                              command_line("complexity"), str(device))))
    if args.json:
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
    else:
        print("\n".join(report_lines(rows, args.input_size, args.batch_size, command_line("complexity"),
                                     str(device))[4:-2]))
    return 0


# ---- cam -----------------------------------------------------------------------------------------------------
def cmd_cam(args: argparse.Namespace) -> int:
    """Grad-CAM of one model (or two, side by side) on images or the scikit-image samples."""
    from ..analysis.cam import overlay_figure, run_cam
    from ..data.samples import load_image, resize_center

    if args.compare_checkpoint and not args.compare:
        raise ValueError("--compare-checkpoint needs --compare NAME2")
    raw = [(Path(p).stem, load_image(p)) for p in args.images] if args.images else sample_images()
    out = out_dir(args.out)
    results = []
    shown = None
    for name, ckpt in [(args.model, args.checkpoint)] + ([(args.compare, args.compare_checkpoint)]
                                                        if args.compare else []):
        model, prep = trained_model(name, ckpt)
        size = args.input_size or prep.input_size
        images = [(n, resize_center(img, size, model.in_chans)) for n, img in raw]
        res = run_cam(model, name, images, prep.mean, prep.std, args.layer, args.target)
        shown = shown or images
        side = shown[0][1].shape[-1]
        if res["maps"].shape[-1] != side:  # the second model's card has another input size: match the figure
            res["maps"] = torch.nn.functional.interpolate(res["maps"][:, None], size=(side, side), mode="bilinear",
                                                          align_corners=False)[:, 0]
        results.append(res)
    assert shown is not None
    overlay_figure(shown, results, out / "cam.png")
    summary = [{"model": r["model"], "image": n, "target": t, "label": lab}
               for r in results for (n, _), t, lab in zip(shown, r["targets"], r["labels"])]
    write_json(out / "cam.json", {"layer": args.layer or "last stage", "results": summary})
    torch.save({r["model"]: r["maps"] for r in results}, out / "maps.pt")
    lines = ["# Grad-CAM", "", f"Command: `{command_line('cam')}`", "",
             f"Layer: {args.layer or 'last stage'}; weights: "
             + ", ".join(f"{n} {'(' + str(c) + ')' if c else '(random: no checkpoint)'}"
                         for n, c in [(args.model, args.checkpoint), (args.compare, args.compare_checkpoint)] if n),
             ""] + md_table(["model", "image", "target"], [[s["model"], s["image"], s["label"]] for s in summary])
    (out / "report.md").write_text("\n".join(lines + ["", "![cam](cam.png)", ""]))
    print(f"report: {out / 'report.md'}")
    return 0


# ---- receptive field -----------------------------------------------------------------------------------------
def cmd_receptive_field(args: argparse.Namespace) -> int:
    """Theoretical receptive-field sets vs the bottleneck, and measured ERFs vs the baseline."""
    from ..models import build_model, get_spec
    from ..analysis.receptive_field import (bottleneck_of, effective_rf, erf_extent, erf_inputs, erf_plot, theoretical_rf,
                                  theory_plot)

    spec = get_spec(args.name)
    if args.baseline_checkpoint and not (args.baseline or spec.baseline):
        raise ValueError(f"--baseline-checkpoint needs --baseline NAME ({args.name} names no baseline)")
    out = out_dir(args.out)
    with torch.device("meta"):
        net = build_model(args.name, num_classes=0)
    theory = {args.name: theoretical_rf(net), "bottleneck (s=1), same depth": theoretical_rf(bottleneck_of(args.name))}
    theory_plot(theory, out / "rf_theory.png")
    rows = [{"model": label, **{k: v for k, v in r.items() if k != "sizes"}}
            for label, recs in theory.items() for r in recs]
    write_csv(out / "rf_theory.csv", rows)
    write_json(out / "rf_theory.json", {label: recs for label, recs in theory.items()})

    baseline = args.baseline or spec.baseline
    measured: Dict[str, List[torch.Tensor]] = {}
    erf_rows: List[Dict[str, Any]] = []
    photos = [img for _, img in sample_images()][: args.images]
    for name, ckpt in [(args.name, args.checkpoint)] + ([(baseline, args.baseline_checkpoint)] if baseline else []):
        model, prep = trained_model(name, ckpt)
        size = args.input_size or prep.input_size
        x = erf_inputs(photos, size, model.in_chans, prep.mean, prep.std)
        maps = effective_rf(model, x)
        measured[name] = maps
        theory_max = [r["max_rf"] for r in theoretical_rf(model)]
        ends = [0] + list(torch.tensor([len(s) for s in model.stage_modules()]).cumsum(0).tolist())
        for i, erf in enumerate(maps):
            erf_rows.append({"model": name, "weights": str(ckpt) if ckpt else "random", "output": f"C{i + 1}",
                             "input_size": size, "erf90_px": erf_extent(erf, 0.9),
                             "erf50_px": erf_extent(erf, 0.5), "theoretical_rf_px": theory_max[ends[i]]})
    torch.save(measured, out / "erf_maps.pt")
    erf_plot(measured, out / "erf.png")
    write_csv(out / "erf.csv", erf_rows)

    last = {label: recs[-1] for label, recs in theory.items()}
    lines = ["# Receptive fields", "", f"Command: `{command_line('receptive-field')}`", "",
             "## Theory: receptive-field sizes created per block", "",
             "Sizes in input pixels; `paths` counts distinct input-to-output paths (see docs/ANALYSES.md).", ""]
    lines += md_table(["model", "blocks", "distinct sizes (last block)", "paths", "min", "mean", "max"],
                      [[label, len(theory[label]) - 1, r["distinct_sizes"], f"{r['paths']:.3g}", r["min_rf"],
                        f"{r['mean_rf']:.1f}", r["max_rf"]] for label, r in last.items()])
    lines += ["", "![theory](rf_theory.png)", "", "## Measured effective receptive fields", "",
              f"|d y_centre / d x| averaged over {len(photos)} scikit-image photos; `erf90` = side of the centred "
              "square holding 90% of the gradient mass.", ""]
    lines += md_table(["model", "weights", "output", "input", "erf50 (px)", "erf90 (px)", "theoretical max (px)"],
                      [[r["model"], r["weights"], r["output"], r["input_size"], r["erf50_px"], r["erf90_px"],
                        r["theoretical_rf_px"]] for r in erf_rows])
    lines += ["", "![erf](erf.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print(f"report: {out / 'report.md'}")
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
    c.add_argument("--json", action="store_true", help="print the rows as JSON (the --json schema of issue 4)")
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
    r.add_argument("name", help="model name (ResNet family)")
    r.add_argument("--checkpoint", help="weights of NAME (default: random weights)")
    r.add_argument("--baseline", help="model measured beside NAME (default: the card's baseline)")
    r.add_argument("--baseline-checkpoint", help="weights of the baseline")
    r.add_argument("--input-size", type=positive_int, help="image side (default: the model card's)")
    r.add_argument("--images", type=positive_int, default=4, help="number of sample photos averaged (default 4)")
    r.add_argument("--out", default="runs/receptive-field", metavar="DIR", help="report folder")
    r.set_defaults(func=cmd_receptive_field)


# ---- ablation ------------------------------------------------------------------------------------------------
def cmd_ablation(args: argparse.Namespace) -> int:
    """``res2net ablation``: run (or continue) the sweep, then write the report."""
    budget = BUDGETS[args.budget]
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
