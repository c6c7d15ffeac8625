"""Complexity of the zoo (paper Tables 1-3 columns): params, MACs, latency at batch 1 and N, peak memory.

Conventions:

- MACs: torch's ``FlopCounterMode`` total / 2 (one multiply-accumulate = 2 FLOPs), counted on the meta device.
- Latency: ``warmup`` untimed forwards, then the median of ``repeats`` timed forwards (eval mode, no_grad,
  fp32, the current thread count). CUDA runs are synchronised around each timed call.
- Peak memory of one image (``input_size``): on CUDA, ``torch.cuda.max_memory_allocated`` minus the memory held
  before the model was built. On CPU torch's allocator keeps no statistics, so each model is measured in a
  fresh Python process: the kernel's peak-RSS mark (``VmHWM`` of /proc/self/status, reset through
  /proc/self/clear_refs before each measurement) minus the resident size before the model is built (the
  interpreter + torch). ``ru_maxrss`` is not used: Linux carries it over from the parent across exec.
  The figure therefore counts weights, activations, gradients (training step: forward + cross-entropy backward, no optimizer state) and allocator slack,
  as the paper's "Memory" column (GPU memory of a training step) does.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import Res2NetError
from ..models import create_model, get_spec, list_models, model_complexity

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


def measure_latency(model: nn.Module, batch_size: int, input_size: int, in_chans: int = 3, warmup: int = 2,
                    repeats: int = 5, device: Optional[torch.device] = None) -> float:
    """Median wall time (ms) of one forward of a ``batch_size`` batch after ``warmup`` untimed forwards."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size and repeats must be >= 1 and warmup >= 0; got {batch_size}, {repeats}, "
                         f"{warmup}")
    device = device or next(model.parameters()).device
    x = torch.randn(batch_size, in_chans, input_size, input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times)


def _step(model: nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        model.train()
        nn.functional.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long, device=x.device)).backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)


def _vm_kb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise Res2NetError(f"/proc/self/status has no {field}: peak memory needs Linux on CPU")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _memory_probe(name: str, input_size: int) -> Dict[str, float]:
    """Run in a fresh process: peak RSS (MB) above the RSS before the model is built, for inference and for a
    training step. VmHWM (the kernel's peak-RSS mark) is reset before each; where it cannot be reset, the
    training figure is the peak of both (a training step needs more than inference anyway)."""
    base = _vm_kb("VmRSS")
    _reset_peak_rss()
    model = create_model(name)
    x = torch.randn(1, 3, input_size, input_size)
    _step(model, x, train=False)
    infer = (_vm_kb("VmHWM") - base) / 1024
    _reset_peak_rss()
    _step(model, x, train=True)
    return {"peak_mem_infer_mb": infer, "peak_mem_train_mb": (_vm_kb("VmHWM") - base) / 1024}


def measure_memory(name: str, input_size: int = 224, device: Optional[torch.device] = None) -> Dict[str, float]:
    """Peak memory (MB) of one ``input_size`` image in inference and in a training step (see module doc)."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        result = {}
        for key, train in (("peak_mem_infer_mb", False), ("peak_mem_train_mb", True)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model = create_model(name).to(device)
            _step(model, torch.randn(1, 3, input_size, input_size, device=device), train)
            result[key] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            del model
        return result
    code = (f"import json; from res2net.analysis.complexity import _memory_probe; "
            f"print(json.dumps(_memory_probe({name!r}, {int(input_size)})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise Res2NetError(f"memory probe of {name} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def complexity_row(name: str, input_size: int = 224, batch_size: int = 16, warmup: int = 2, repeats: int = 5,
                   memory: bool = True, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """One row of the complexity table: the ``--json`` keys, then the paper's figures (``paper_*``)."""
    device = device or torch.device("cpu")
    spec = get_spec(name)
    params, macs = model_complexity(spec.name, input_size)
    model = create_model(spec.name).to(device)
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
    from .common import md_table

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
            "docs/ANALYSES.md (CPU: peak RSS of a fresh process above its RSS before the model is built).", ""] + \
        md_table(header, table) + ["", "![complexity](complexity.png)", ""]


def plot(rows: Sequence[Dict[str, Any]], path: Any, batch_size: int) -> None:
    """Latency (batch N) and GMACs against params, one labelled point per model."""
    from .common import pyplot

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
    fig.savefig(path, dpi=110)
    plt.close(fig)
