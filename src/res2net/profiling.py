"""Measurements of a model run shared by the analyses, the ablation sweep and the benchmarks: latency and peak
memory (:func:`peak_memory_mb`, the one definition used by ``res2net bench`` and ``res2net complexity``). No
timing is ever asserted in a test."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn


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


def peak_memory_mb(fn: Callable[[], Any], device: Union[str, torch.device] = "cpu", track: Sequence[Any] = ()) -> float:
    """Peak memory (MiB) of the torch tensors alive while ``fn`` runs, counting the ``track``ed modules and
    optimizers (weights, gradients, optimizer state) as well as activations and temporaries: the one peak-memory
    definition of the benchmarks and the complexity analysis.

    CUDA: the allocator's peak above what was allocated before, plus the tracked objects' bytes.
    CPU: torch's ``MemTracker`` (it hooks parameters, so frozen parameters are made trainable for the measurement
    and restored; no autograd graph is built under ``torch.no_grad``). Memory held outside torch (onnxruntime,
    OpenVINO) is not counted."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base + sum(_module_bytes(t) for t in track)) / 2**20
    from torch.distributed._tools.mem_tracker import MemTracker

    frozen = [p for obj in track if isinstance(obj, nn.Module) for p in obj.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        tracker = MemTracker()
        tracker.track_external(*track)
        with tracker:
            fn()
        snap = tracker.get_tracker_snapshot("peak")
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return max((v.get("Total", 0) for v in snap.values()), default=0) / 2**20


def _module_bytes(obj: Any) -> int:
    if isinstance(obj, nn.Module):
        return sum(t.numel() * t.element_size() for t in list(obj.parameters()) + list(obj.buffers()))
    return 0
