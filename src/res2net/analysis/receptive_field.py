"""Receptive fields: the theoretical set of sizes that the hierarchical split connections create, and measured
effective receptive fields (Luo et al. 2016) per stage.

Theory. Every path from the input to a unit passes a sequence of convolutions/pools; a layer with kernel k and
dilation d at cumulative stride ("jump") j adds (k - 1) * d * j pixels. A plain bottleneck offers two paths per
block (the 3x3 conv, +2dj, or the shortcut, +0); a Res2Net block with scale s offers paths through 0..s-1 of its
3x3 convs (split i of the official code passes 1..i+1 of them; the untouched split and the shortcut none), so
the set of sizes grows with depth much faster: the paper's "combinatorial explosion" of scales. We keep, per
block output, a multiset {size: number of paths}. Squeeze-excitation (global gating) is not counted.

Measurement. For a stage output of shape (C, h, w), the effective receptive field is |d sum_c y[c, h/2, w/2] /
d x| summed over the input channels and averaged over images (eval mode), normalised to sum 1.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..data.photos import sample_images
from ..files import save_torch, write_text
from ..jsonio import write_json
from ..layers import Res2NetBlock
from ..models import ResNet, build_model, get_spec
from ..reporting import md_table, out_dir, write_csv
from .common import trained_model

Paths = Counter  # receptive-field size (pixels) -> number of paths


def _shift(paths: Paths, by: int) -> Paths:
    return Counter({size + by: n for size, n in paths.items()})


def _layer_growth(module: nn.Module) -> Tuple[int, int]:
    """(kernel extent - 1, stride) of a conv or pool; (0, 1) for anything else (BN, ReLU, identity)."""
    def first(v: Any) -> int:
        return int(v[0] if isinstance(v, (tuple, list)) else v)

    if isinstance(module, nn.Conv2d):
        return (first(module.kernel_size) - 1) * first(module.dilation), first(module.stride)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        dil = first(getattr(module, "dilation", 1))
        return (first(module.kernel_size) - 1) * dil, first(module.stride)
    return 0, 1


def _through(modules: Sequence[nn.Module], paths: Paths, jump: int) -> Tuple[Paths, int]:
    """Paths and jump after a chain of layers applied one after another."""
    for m in modules:
        leaves = [x for x in m.modules() if not list(x.children())] if list(m.children()) else [m]
        for leaf in leaves:
            grow, stride = _layer_growth(leaf)
            paths, jump = _shift(paths, grow * jump), jump * stride
    return paths, jump


def block_paths(block: Res2NetBlock, paths: Paths, jump: int) -> Tuple[Paths, int]:
    """Receptive-field multiset at the output of ``block`` given the one at its input."""
    grow, stride = _layer_growth(block.convs[0])
    conv = grow * jump
    if block.scale == 1:
        out = _shift(paths, conv)
    else:
        out = Counter()
        sp: Paths = Counter()
        for i in range(block.scale - 1):
            sp = _shift(paths if (i == 0 or block.stage_block) else sp + paths, conv)
            out += sp
        out += _through([block.pool], paths, jump)[0] if block.pool is not None else paths
    out += _through([block.downsample], paths, jump)[0] if block.downsample is not None else paths
    return out, jump * stride


def theoretical_rf(model: nn.Module) -> List[Dict[str, Any]]:
    """Per block of a ResNet-family model: stage, block, jump, distinct sizes, paths, min/mean/max size and the
    multiset itself (``sizes``: {size: paths}). The first record is the stem output (C1, before any max-pool)."""
    if not isinstance(model, ResNet):
        raise ValueError(f"theoretical receptive fields need a ResNet-family trunk, got {type(model).__name__}")
    paths, jump = _through([model.conv1], Counter({1: 1}), 1)
    records = [_record("stem", 0, paths, jump)]  # C1: the stem output, before the max-pool
    paths, jump = _through([model.maxpool], paths, jump)
    for s_idx, stage in enumerate(model.stage_modules(), start=1):
        for b_idx, block in enumerate(stage):
            paths, jump = block_paths(block, paths, jump)
            records.append(_record(f"stage{s_idx}", b_idx, paths, jump))
    return records


def _record(stage: str, block: int, paths: Paths, jump: int) -> Dict[str, Any]:
    total = sum(paths.values())
    return {"stage": stage, "block": block, "jump": jump, "distinct_sizes": len(paths), "paths": total,
            "min_rf": min(paths), "max_rf": max(paths),
            "mean_rf": sum(size * n for size, n in paths.items()) / total, "sizes": dict(sorted(paths.items()))}


def bottleneck_of(name: str) -> nn.Module:
    """The plain bottleneck network (scale 1, same depth, stem and strides) of a named ResNet-family model."""
    spec = get_spec(name)
    if spec.family != "resnet":
        raise ValueError(f"receptive-field theory covers ResNet-family models; {name!r} is a {spec.family} model")
    arch = dataclasses.replace(spec.arch, scale=1, base_width=64, cardinality=1)
    with torch.device("meta"):
        return arch.build(num_classes=0)


def effective_rf(model: nn.Module, images: Tensor) -> List[Tensor]:
    """Effective receptive field maps (H, W), one per output of ``model.forward_stages``, each summing to 1."""
    model.eval()
    x = images.clone().requires_grad_(True)
    feats = model.forward_stages(x)
    maps = []
    for i, f in enumerate(feats):
        centre = f[:, :, f.shape[2] // 2, f.shape[3] // 2].sum()
        (grad,) = torch.autograd.grad(centre, x, retain_graph=i < len(feats) - 1)
        erf = grad.abs().sum(1).mean(0)
        maps.append(erf / erf.sum().clamp_min(1e-30))
    return maps


def erf_extent(erf: Tensor, mass: float = 0.9) -> int:
    """Side (pixels) of the smallest centred square holding ``mass`` of the map (at most the map size)."""
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    for r in range(max(h, w)):
        if erf[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1].sum() >= mass * erf.sum():
            return 2 * r + 1
    return max(h, w)


def erf_inputs(images: Sequence[Tensor], size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]
               ) -> Tensor:
    """Resized, normalised batch of images (each (3, H, W) in [0, 1]) for ERF measurement."""
    from ..data.photos import resize_center

    x = torch.stack([resize_center(img, size, in_chans) for img in images])
    m = torch.tensor(mean if len(mean) == in_chans else [sum(mean) / len(mean)] * in_chans).view(1, -1, 1, 1)
    s = torch.tensor(std if len(std) == in_chans else [sum(std) / len(std)] * in_chans).view(1, -1, 1, 1)
    return (x - m) / s


def theory_plot(records: Dict[str, List[Dict[str, Any]]], path: Any) -> None:
    """Distinct receptive-field sizes and paths per block, and the final size distribution, per model."""
    from ..reporting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, recs in records.items():
        depth = list(range(len(recs)))
        axes[0].plot(depth, [r["distinct_sizes"] for r in recs], "-o", ms=3, label=label)
        axes[1].semilogy(depth, [r["paths"] for r in recs], "-o", ms=3, label=label)
        sizes = recs[-1]["sizes"]
        total = sum(sizes.values())
        axes[2].plot(list(sizes), [n / total for n in sizes.values()], "-", label=label)
    axes[0].set(xlabel="block (0 = stem)", ylabel="distinct receptive-field sizes", title="scales per block")
    axes[1].set(xlabel="block (0 = stem)", ylabel="paths (log)", title="paths input -> block output")
    axes[2].set(xlabel="receptive-field size (px)", ylabel="fraction of paths", title="last block")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def erf_plot(maps: Dict[str, List[Tensor]], path: Any) -> None:
    """Grid of ERF maps: one row per model, one column per stage output (sqrt scale for visibility)."""
    from ..reporting import pyplot, save_image_grid

    plt = pyplot()
    rows = list(maps.items())
    cols = max(len(m) for _, m in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 3.2 * len(rows)), squeeze=False)
    for i, (label, stage_maps) in enumerate(rows):
        for j, erf in enumerate(stage_maps):
            axes[i][j].imshow(erf.sqrt().numpy(), cmap="inferno")
            axes[i][j].set_title(f"{label}\nC{j + 1}", fontsize=8)
    save_image_grid(fig, axes, path)


def receptive_field_report(name: str, out: str | Path, checkpoint: Optional[str] = None,
                           baseline: Optional[str] = None, baseline_checkpoint: Optional[str] = None,
                           input_size: Optional[int] = None, images: int = 4,
                           command: str = "res2net receptive-field") -> Path:
    """The receptive-field report of ``name``: theoretical size sets against the bottleneck of the same depth
    (``rf_theory.{png,csv,json}``) and measured ERFs per stage against the baseline (``erf.{png,csv}``,
    ``erf_maps.pt``), summed up in ``report.md``.

    Args:
        name: a ResNet-family model.
        out: the report folder (created).
        checkpoint: weights of ``name`` (None: random weights).
        baseline: the model measured beside it (None: the card's baseline).
        baseline_checkpoint: weights of the baseline.
        input_size: image side (None: each model card's).
        images: sample photos averaged.
        command: the command line recorded in the report.

    Returns:
        The path of ``report.md``.
    """
    spec = get_spec(name)
    if baseline_checkpoint and not (baseline or spec.baseline):
        raise ValueError(f"--baseline-checkpoint needs --baseline NAME ({name} names no baseline)")
    folder = out_dir(out)
    with torch.device("meta"):
        net = build_model(name, num_classes=0)
    theory = {name: theoretical_rf(net), "bottleneck (s=1), same depth": theoretical_rf(bottleneck_of(name))}
    theory_plot(theory, folder / "rf_theory.png")
    rows = [{"model": label, **{k: v for k, v in r.items() if k != "sizes"}}
            for label, recs in theory.items() for r in recs]
    write_csv(folder / "rf_theory.csv", rows)
    write_json(folder / "rf_theory.json", {label: recs for label, recs in theory.items()})

    baseline = baseline or spec.baseline
    photos = [img for _, img in sample_images()][:images]
    models = [(name, checkpoint)] + ([(baseline, baseline_checkpoint)] if baseline else [])
    measured, erf_rows = _measure(models, photos, input_size)
    save_torch(measured, folder / "erf_maps.pt")
    erf_plot(measured, folder / "erf.png")
    write_csv(folder / "erf.csv", erf_rows)
    write_text(folder / "report.md", "\n".join(_report_lines(theory, erf_rows, len(photos), command)))
    return folder / "report.md"


def _measure(models: Sequence[Tuple[str, Optional[str]]], photos: Sequence[Tensor], input_size: Optional[int]
             ) -> Tuple[Dict[str, List[Tensor]], List[Dict[str, Any]]]:
    """ERF maps per stage of each (name, checkpoint) and one row per stage output (ERF50/90, theoretical max)."""
    measured: Dict[str, List[Tensor]] = {}
    erf_rows: List[Dict[str, Any]] = []
    for model_name, ckpt in models:
        model, prep = trained_model(model_name, ckpt)
        size = input_size or prep.input_size
        maps = effective_rf(model, erf_inputs(photos, size, model.in_chans, prep.mean, prep.std))
        measured[model_name] = maps
        theory_max = [r["max_rf"] for r in theoretical_rf(model)]
        ends = [0] + list(torch.tensor([len(s) for s in model.stage_modules()]).cumsum(0).tolist())
        for i, erf in enumerate(maps):
            erf_rows.append({"model": model_name, "weights": str(ckpt) if ckpt else "random", "output": f"C{i + 1}",
                             "input_size": size, "erf90_px": erf_extent(erf, 0.9),
                             "erf50_px": erf_extent(erf, 0.5), "theoretical_rf_px": theory_max[ends[i]]})
    return measured, erf_rows


def _report_lines(theory: Dict[str, List[Dict[str, Any]]], erf_rows: Sequence[Dict[str, Any]], photos: int,
                  command: str) -> List[str]:
    """report.md of the receptive-field report."""
    last = {label: recs[-1] for label, recs in theory.items()}
    lines = ["# Receptive fields", "", f"Command: `{command}`", "",
             "## Theory: receptive-field sizes created per block", "",
             "Sizes in input pixels; `paths` counts distinct input-to-output paths (see docs/ANALYSES.md).", ""]
    lines += md_table(["model", "blocks", "distinct sizes (last block)", "paths", "min", "mean", "max"],
                      [[label, len(theory[label]) - 1, r["distinct_sizes"], f"{r['paths']:.3g}", r["min_rf"],
                        f"{r['mean_rf']:.1f}", r["max_rf"]] for label, r in last.items()])
    lines += ["", "![theory](rf_theory.png)", "", "## Measured effective receptive fields", "",
              f"|d y_centre / d x| averaged over {photos} scikit-image photos; `erf90` = side of the centred "
              "square holding 90% of the gradient mass.", ""]
    lines += md_table(["model", "weights", "output", "input", "erf50 (px)", "erf90 (px)", "theoretical max (px)"],
                      [[r["model"], r["weights"], r["output"], r["input_size"], r["erf50_px"], r["erf90_px"],
                        r["theoretical_rf_px"]] for r in erf_rows])
    return lines + ["", "![erf](erf.png)", ""]
