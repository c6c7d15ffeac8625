"""Where the eager fast path (``res2net.optimize``, fp32/bf16, channels_last) spends its time against OpenVINO on
the same weights: per convolution kind (1x1, 3x3 dense, 3x3 split / grouped, strided), layout conversions
(reorders, copies), the stage block's splits / concatenations and the element-wise rest.

Eager: torch.profiler (aten ops, self CPU time) plus a forward-hook timer per Conv2d module. OpenVINO: its own
per-layer performance counters (``PERF_COUNT``), grouped by layer type and kernel. Usage:

    .venv/bin/python benchmarks/profile_eager.py [--model res2net50_26w_4s] [--batch 16] [--dtype fp32] \
        [--rounds 5] [--out benchmarks/results/deploy]

writes ``profile_<model>_b<batch>_<dtype>.md`` (and .json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

import res2net


def conv_kind(conv: nn.Conv2d) -> str:
    """A convolution's class for the tables: kernel, grouped or dense, strided."""
    k = "x".join(map(str, conv.kernel_size))
    grouped = f" grouped ({conv.groups} groups)" if conv.groups > 1 else ""
    stride = " stride 2" if conv.stride != (1, 1) else ""
    return f"conv {k}{grouped}{stride}"


def eager_profile(model: nn.Module, x: torch.Tensor, rounds: int) -> Dict[str, Any]:
    """Per-conv-kind time (forward hooks, median over rounds) and the aten ops' self CPU time (torch.profiler)."""
    per_kind: Dict[str, List[float]] = defaultdict(list)
    starts: Dict[int, float] = {}
    acc: Dict[str, float] = defaultdict(float)
    totals: List[float] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    def pre(mod: nn.Module, _: Any) -> None:
        starts[id(mod)] = time.perf_counter()

    def post(mod: nn.Module, _: Any, __: Any) -> None:
        acc[conv_kind(mod)] += time.perf_counter() - starts[id(mod)]  # type: ignore[arg-type]

    handles = [h for c in convs for h in (c.register_forward_pre_hook(pre), c.register_forward_hook(post))]
    model(x)  # warm-up
    for _ in range(rounds):
        acc.clear()
        t0 = time.perf_counter()
        model(x)
        totals.append(time.perf_counter() - t0)
        for k, v in acc.items():
            per_kind[k].append(v)
    for h in handles:
        h.remove()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()),
                 key=lambda t: -t[1])
    return {"total_ms": 1e3 * statistics.median(totals),
            "conv_ms": {k: 1e3 * statistics.median(v) for k, v in per_kind.items()},
            "aten_self_ms": [(k, round(ms, 3), n) for k, ms, n in ops if ms > 0][:25]}


def onednn_kernel_vs_call(model: nn.Module, x: torch.Tensor) -> Dict[str, Any]:
    """One forward with oneDNN's verbose log on: the convolution kernels' own time (the log's ``exec`` lines)
    against the time of each PyTorch convolution call around them (the op timed call by call), so the per-call
    cost of the eager op (oneDNN primitive descriptor built on every call, tensor wrapping, allocation) shows
    apart from the kernels that OpenVINO runs too."""
    import os
    import tempfile

    packed_conv = torch.ops.mkldnn._convolution_pointwise
    calls: List[float] = []

    def timed(*args: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        y = packed_conv(*args)
        calls.append(time.perf_counter() - t0)
        return y

    model(x)
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        torch.ops.mkldnn._convolution_pointwise = timed  # type: ignore[assignment]
        try:
            t0 = time.perf_counter()
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                model(x)
            total = time.perf_counter() - t0
        finally:
            torch.ops.mkldnn._convolution_pointwise = packed_conv  # type: ignore[assignment]
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        kernels = [float(line.rsplit(",", 1)[1]) for line in log
                   if line.startswith("onednn_verbose") and ",exec," in line and ",convolution," in line]
    if len(kernels) != len(calls):
        raise RuntimeError(f"{len(calls)} convolution calls but {len(kernels)} oneDNN kernel lines")
    over = [1e3 * c - k for c, k in zip(calls, kernels)]
    return {"forward_ms": 1e3 * total, "calls": len(calls), "kernel_ms": sum(kernels),
            "call_ms": 1e3 * sum(calls), "per_call_overhead_us_median": 1e3 * statistics.median(over),
            "note": "one forward with the verbose log on (its own printing adds to each call)"}


def openvino_profile(model: nn.Module, x: torch.Tensor, dtype: str, rounds: int, workdir: Path) -> Dict[str, Any]:
    """OpenVINO's per-layer counters, summed by layer type and by (type, kernel implementation)."""
    import openvino as ov

    from res2net.inference.backends import export_onnx_for_runtime, model_input_shape

    onnx_path = export_onnx_for_runtime(model, workdir / "model.onnx", model_input_shape(model, x.shape[-1]))
    core = ov.Core()
    m = core.read_model(str(onnx_path))
    m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
    compiled = core.compile_model(m, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                             "PERFORMANCE_HINT": "LATENCY",
                                             "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32"})
    req = compiled.create_infer_request()
    req.infer(x.numpy())
    totals, by_type, by_impl = [], defaultdict(list), defaultdict(list)
    for _ in range(rounds):
        t0 = time.perf_counter()
        req.infer(x.numpy())
        totals.append(time.perf_counter() - t0)
        t_type: Dict[str, float] = defaultdict(float)
        t_impl: Dict[str, float] = defaultdict(float)
        for info in req.profiling_info:
            ms = info.real_time.total_seconds() * 1e3
            t_type[info.node_type] += ms
            t_impl[f"{info.node_type} [{info.exec_type}]"] += ms
        for k, v in t_type.items():
            by_type[k].append(v)
        for k, v in t_impl.items():
            by_impl[k].append(v)
    med = {k: statistics.median(v) for k, v in by_type.items()}
    impl = sorted(((k, statistics.median(v)) for k, v in by_impl.items()), key=lambda t: -t[1])
    return {"total_ms": 1e3 * statistics.median(totals), "by_type_ms": dict(sorted(med.items(), key=lambda t: -t[1])),
            "by_impl_ms": impl[:25]}


def markdown(name: str, batch: int, dtype: str, eager: Dict[str, Any], ovp: Optional[Dict[str, Any]]) -> str:
    split = eager["kernel_vs_call"]
    ov_conv = f"; OpenVINO's Convolution layers (PERF_COUNT, with their fused ops): " \
              f"{ovp['by_type_ms'].get('Convolution', 0.0):.2f} ms" if ovp else ""
    lines = [f"# Eager fast path vs OpenVINO: {name}, batch {batch}, {dtype}, {torch.get_num_threads()} threads", "",
             f"Eager (res2net.optimize) total {eager['total_ms']:.1f} ms"
             + (f"; OpenVINO total {ovp['total_ms']:.1f} ms" if ovp else ""), "",
             "## Eager: convolution kernels vs convolution calls (oneDNN verbose log, one forward)", "",
             f"{split['calls']} calls: oneDNN kernels {split['kernel_ms']:.2f} ms, the PyTorch calls around them "
             f"{split['call_ms']:.2f} ms (median {split['per_call_overhead_us_median']:.0f} us per call outside "
             f"the kernel; {split['note']}){ov_conv}.", "",
             "## Eager: convolutions by kind (forward hooks)", "", "| kind | ms | share |", "|---|---|---|"]
    conv_total = sum(eager["conv_ms"].values())
    for k, v in sorted(eager["conv_ms"].items(), key=lambda t: -t[1]):
        lines.append(f"| {k} | {v:.2f} | {100 * v / eager['total_ms']:.0f}% |")
    lines += [f"| everything but convolutions | {eager['total_ms'] - conv_total:.2f} | "
              f"{100 * (1 - conv_total / eager['total_ms']):.0f}% |", "",
              "## Eager: aten ops, self CPU time (torch.profiler, one call)", "", "| op | ms | calls |",
              "|---|---|---|"]
    lines += [f"| {k} | {ms:.2f} | {n} |" for k, ms, n in eager["aten_self_ms"]]
    if ovp:
        lines += ["", "## OpenVINO: layers by type (PERF_COUNT)", "", "| type | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in ovp["by_type_ms"].items() if v > 0]
        lines += ["", "## OpenVINO: by type and kernel", "", "| layer [kernel] | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in ovp["by_impl_ms"] if v > 0]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net50_26w_4s")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deploy")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = res2net.create_model(args.model).eval()
    size = args.input_size or res2net.get_spec(args.model).input_size
    x = torch.randn(args.batch, 3, size, size)
    fast = res2net.optimize(model, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    with torch.no_grad():
        x_fast = x.to(fast.dtype).contiguous(memory_format=torch.channels_last)
        eager = eager_profile(fast.model, x_fast, args.rounds)
        eager["kernel_vs_call"] = onednn_kernel_vs_call(fast.model, x_fast)
    ovp = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ovp = openvino_profile(model, x, args.dtype, args.rounds, Path(tmp))
    except ImportError as exc:
        print(f"note: OpenVINO not installed ({exc}): eager only")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{args.model}_b{args.batch}_{args.dtype}"
    text = markdown(args.model, args.batch, args.dtype, eager, ovp)
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps({"eager": eager, "openvino": ovp}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
