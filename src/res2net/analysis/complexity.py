"""Complexity of the zoo (paper Tables 1-3 columns): params, MACs, latency at batch 1 and N, peak memory.

Conventions:

- MACs: torch's ``FlopCounterMode`` total / 2 (one multiply-accumulate = 2 FLOPs), counted on the meta device.
- Latency: ``warmup`` untimed forwards, then the median of ``repeats`` timed forwards (eval mode, no_grad,
  fp32, the current thread count). CUDA runs are synchronised around each timed call.
- Peak memory of one image (``input_size``): :func:`res2net.profiling.peak_memory_mb`, the benchmarks' definition
  too: the torch tensors alive during the step (CUDA: the allocator's peak; CPU: torch's ``MemTracker``), i.e.
  weights, activations, temporaries and, in a training step (forward + cross-entropy backward, no optimizer
  state), gradients, as the paper's "Memory" column (GPU memory of a training step) counts them. The
  interpreter, torch's own libraries and allocator slack are not counted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..files import write_text
from ..models import build_model, get_spec, list_models, model_complexity
from ..profiling import measure_latency, peak_memory_mb

# Paper Table 3 FLOPs column (GMACs at 224x224); other rows have no published figure in the paper.
PAPER_GMACS = {"res2net50_48w_2s": 4.2, "res2net50_26w_4s": 4.2, "res2net50_14w_8s": 4.2,
               "res2net50_26w_6s": 6.3, "res2net50_26w_8s": 8.3, "res2net50_18w_4s": 2.9}
DEFAULT_PATTERNS = ("res2net50_*", "res2next50", "resnet50", "resnext50_32x4d")


def resolve_models(patterns: Sequence[str]) -> List[str]:
    """Model names matching any of the shell patterns (or exact names/aliases), without duplicates."""
    names: List[str] = []
    for pattern in patterns:
        found = list_models(pattern)
        if not found:
            found = [get_spec(pattern).name]  # raises with close matches
        names += [n for n in found if n not in names]
    return names


def _step(model: nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        model.train()
        nn.functional.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long, device=x.device)).backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)


def measure_memory(name: str, input_size: int = 224, device: Optional[torch.device] = None) -> Dict[str, float]:
    """Peak memory (MiB) of one ``input_size`` image in inference and in a training step (see module doc)."""
    device = device or torch.device("cpu")
    model = build_model(name).to(device)
    x = torch.randn(1, 3, input_size, input_size, device=device)
    return {key: peak_memory_mb(lambda train=train: _step(model, x, train), device, [model])
            for key, train in (("peak_mem_infer_mb", False), ("peak_mem_train_mb", True))}


def complexity_row(name: str, input_size: int = 224, batch_size: int = 16, warmup: int = 2, repeats: int = 5,
                   memory: bool = True, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """One row of the complexity table: the ``--json`` keys, then the paper's figures (``paper_*``)."""
    device = device or torch.device("cpu")
    spec = get_spec(name)
    params, macs = model_complexity(spec.name, input_size)
    model = build_model(spec.name).to(device)
    row: Dict[str, Any] = {"model": spec.name, "params": params, "macs": macs}
    for b in (1, batch_size):
        row[f"latency_ms_b{b}"] = measure_latency(model, b, input_size, warmup=warmup, repeats=repeats,
                                                  device=device)
    del model
    if memory:
        row.update(measure_memory(spec.name, input_size, device))
    else:
        row.update(peak_mem_infer_mb=float("nan"), peak_mem_train_mb=float("nan"))
    row.update(paper_params_m=spec.paper_params_m, paper_gmacs=PAPER_GMACS.get(spec.name),
               paper_top1_err=spec.paper_top1_err, paper_top5_err=spec.paper_top5_err,
               paper_source=spec.paper_source or None)
    return row


def json_keys(batch_size: int) -> List[str]:
    """The keys that ``res2net complexity --json`` prints for each model."""
    return ["model", "params", "macs", "latency_ms_b1", f"latency_ms_b{batch_size}", "peak_mem_infer_mb",
            "peak_mem_train_mb"]


def report_lines(rows: Sequence[Dict[str, Any]], input_size: int, batch_size: int, command: str,
                 device: str = "cpu") -> List[str]:
    """report.md of the complexity command."""
    from ..reporting import md_table

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    header = ["model", "params (M)", "paper (M)", "GMACs", "paper GMACs", "ms b1", f"ms b{batch_size}",
              "mem infer (MB)", "mem train (MB)", "paper top-1 err", "source"]
    table = [[r["model"], f"{r['params'] / 1e6:.2f}", fmt(r["paper_params_m"], ".2f"), f"{r['macs'] / 1e9:.2f}",
              fmt(r["paper_gmacs"], ".1f"), f"{r['latency_ms_b1']:.1f}", f"{r[f'latency_ms_b{batch_size}']:.1f}",
              f"{r['peak_mem_infer_mb']:.0f}", f"{r['peak_mem_train_mb']:.0f}", fmt(r["paper_top1_err"], ".2f"),
              r["paper_source"] or "-"] for r in rows]
    return [f"# Complexity at {input_size}x{input_size}", "", f"Command: `{command}`", "",
            f"Device: {device}, torch threads: {torch.get_num_threads()}. "
            "MACs = FlopCounterMode / 2. Latency: median after warm-up, fp32, eval mode. Memory: see "
            "docs/ANALYSES.md (res2net.profiling.peak_memory_mb: torch tensors alive during the step).", ""] + \
        md_table(header, table) + ["", "![complexity](complexity.png)", ""]


def plot(rows: Sequence[Dict[str, Any]], path: Any, batch_size: int) -> None:
    """Latency (batch N) and GMACs against params, one labelled point per model."""
    from ..reporting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "macs", "GMACs"), (axes[1], f"latency_ms_b{batch_size}",
                                                         f"latency at batch {batch_size} (ms)")):
        for r in rows:
            y = r[key] / 1e9 if key == "macs" else r[key]
            ax.scatter(r["params"] / 1e6, y)
            ax.annotate(r["model"], (r["params"] / 1e6, y), fontsize=7)
        ax.set(xlabel="params (M)", ylabel=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def complexity_rows(names: Sequence[str], input_size: int = 224, batch_size: int = 16, warmup: int = 2,
                    repeats: int = 5, memory: bool = True, device: Optional[torch.device] = None,
                    progress: bool = False) -> List[Dict[str, Any]]:
    """The complexity table: :func:`complexity_row` of each model, in order.

    Args:
        names: the models.
        input_size: image side.
        batch_size: the larger latency batch (batch 1 is always measured).
        warmup: untimed forwards before timing.
        repeats: timed forwards (the median is kept).
        memory: measure peak memory (else NaN).
        device: where to measure (None: the CPU).
        progress: show a progress bar on stderr.

    Returns:
        One row per model.
    """
    from tqdm.auto import tqdm

    return [complexity_row(n, input_size, batch_size, warmup, repeats, memory=memory, device=device)
            for n in tqdm(names, desc="complexity", disable=not progress, file=sys.stderr)]


def write_complexity_report(out: str | Path, rows: Sequence[Dict[str, Any]], input_size: int, batch_size: int,
                            command: str, device: str = "cpu") -> Path:
    """``complexity.json``, ``complexity.csv``, ``complexity.png`` and ``report.md`` of ``rows`` in ``out``.

    Args:
        out: the report folder (created).
        rows: :func:`complexity_rows`.
        input_size: their image side.
        batch_size: their larger latency batch.
        command: the command line recorded in the report.
        device: the device they were measured on.

    Returns:
        The path of ``report.md``.
    """
    from ..jsonio import write_json
    from ..reporting import out_dir, write_csv

    folder = out_dir(out)
    write_json(folder / "complexity.json", list(rows))
    write_csv(folder / "complexity.csv", list(rows))
    plot(rows, folder / "complexity.png", batch_size)
    write_text(folder / "report.md", "\n".join(report_lines(rows, input_size, batch_size, command, device)))
    return folder / "report.md"
