"""Run the benchmark suites of issue 6 and write JSON + markdown per suite under benchmarks/results/.

Every suite is one `res2net bench` invocation in a process of its own (interleaved rounds; a fresh process so
that one suite's allocations and oneDNN primitives do not slow the next: measured, the CIFAR suite's fp32
ratio read 1.6 after the Res2Net-50 suites in one process and 1.07 alone); the targets summary only takes
ratios from within one suite. Usage:

    .venv/bin/python benchmarks/run_bench.py [--suites main,scales,cifar,train] [--repeats 3] [--out DIR]

On a machine with a CUDA GPU, ``--suites gpu-infer,gpu-train`` runs the same comparisons there (batch 256,
bf16, channels_last, eager and torch.compile; the issue's GPU training target).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from res2net.bench import format_markdown, run_bench, write_report
from res2net.bench.cases import DIRECT_PEERS
from res2net.commands.bench import add_arguments, config_from_args
from res2net.allocator import keep_freed_memory

SUITES: Dict[str, List[str]] = {
    # inference: ours (as created / optimized) vs timm (shipped / channels_last) vs torchvision, fp32 + bf16
    "main": ["--models", "res2net50_26w_4s", "--batch-sizes", "16", "--dtypes", "fp32,bf16"],
    # 14w x 8s vs 26w x 4s (same run)
    "scales": ["--models", "res2net50_26w_4s,res2net50_14w_8s", "--batch-sizes", "16", "--no-peers"],
    # training step vs timm and torchvision, with grad checkpointing (memory cut)
    "train": ["--models", "res2net50_26w_4s", "--batch-sizes", "16", "--train-only", "--grad-checkpointing",
              "--dtypes", "fp32,bf16"],
    # small widths: CIFAR-sized Res2Net vs the same-budget ResNet, training step at batch 128, 32x32
    "cifar": ["--models", "res2net20_cifar,resnet20_cifar", "--batch-sizes", "128", "--train-only",
              "--no-peers", "--dtypes", "fp32,bf16"],
    # GPU only (not in the default list): inference at batch 16 and 256, and the GPU training target,
    # batch 256, bf16 autocast, channels_last, eager and torch.compile, ours vs timm
    "gpu-infer": ["--device", "cuda", "--models", "res2net50_26w_4s", "--batch-sizes", "16,256",
                  "--dtypes", "fp32,bf16", "--compile"],
    # issue 15: the CPU inference paths users deploy with, same weights, same threads: eager, torch.compile
    # (inductor, freezing), onnxruntime, OpenVINO; fp32 / bf16 / int8; batch 1 latency and batch 16 throughput;
    # the conv roofline at the network's stage shapes
    "deploy": ["--models", "res2net50_26w_4s", "--batch-sizes", "1,16", "--dtypes", "fp32,bf16,int8",
               "--runtimes", "inductor,onnxruntime,openvino", "--no-memory"],
    # the default run's small Fashion-MNIST models (speed of the int8 whose accuracy int8_accuracy.py measures)
    "deploy-slim": ["--models", "res2net17_slim,resnet17_slim", "--input-size", "28", "--batch-sizes", "1,16",
                    "--dtypes", "fp32,bf16,int8", "--runtimes", "onnxruntime,openvino", "--no-peers", "--no-memory"],
    # issue 20: per CPU class (run it natively and under the AVX2 emulation): our best path against the runtimes
    # called directly (onnxruntime, OpenVINO on our ONNX graph; zentorch), fp32 / bf16 / int8, batch 1 and 16
    "classes": ["--models", "res2net50_26w_4s", "--batch-sizes", "1,16", "--dtypes", "fp32,bf16,int8",
                "--runtimes", "onnxruntime,openvino", "--direct-peers", "--no-peers", "--no-memory", "--no-roofline"],
    # the same without bf16, for classes without native bf16 (emulated bf16 rows take most of an hour there)
    "classes-no-bf16": ["--models", "res2net50_26w_4s", "--batch-sizes", "1,16", "--dtypes", "fp32,int8",
                        "--runtimes", "onnxruntime,openvino", "--direct-peers", "--no-peers", "--no-memory",
                        "--no-roofline"],
    "gpu-train": ["--device", "cuda", "--models", "res2net50_26w_4s", "--batch-sizes", "256", "--train-only",
                  "--dtypes", "bf16", "--compile", "--grad-checkpointing"],
}
DEFAULT_SUITES = "main,scales,train,cifar"  # the CPU suites

# suites whose steps are short (about a second) and whose ratio is noisy run at least this many rounds
MIN_REPEATS: Dict[str, int] = {"cifar": 8, "deploy": 15, "deploy-slim": 20, "classes": 11, "classes-no-bf16": 11}


def _find(results: List[Dict[str, Any]], **kw: Any) -> Optional[Dict[str, Any]]:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def targets(reports: Dict[str, Dict[str, Any]]) -> List[str]:
    """The issue's targets, each as 'value (target) met/NOT met', from the suites that ran."""
    lines: List[str] = []

    def check(text: str, value: Optional[float], ok: Optional[bool]) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        lines.append(f"- {text}: {value:.2f} -> {'met' if ok else 'NOT met'}")

    if "main" in reports:
        res = reports["main"]["results"]
        opt = _find(res, impl="ours-optimized", dtype="fp32", mode="infer")
        if opt:
            v = opt["ratios"].get("timm_shipped_fp32")
            check("fp32 optimized / timm-as-shipped throughput (>= 1.5)", v, v is not None and v >= 1.5)
            check("fp32 optimized share of the fp32 matmul probe (>= 0.60)", opt["probe_share"],
                  opt["probe_share"] >= 0.6)
            v = opt["ratios"].get("torchvision_resnet50")
            if v:
                check("fp32 Res2Net-50 time / torchvision resnet50 time, both channels_last (<= 1.0)", 1 / v, 1 / v <= 1.0)
        opt16 = _find(res, impl="ours-optimized", dtype="bf16", mode="infer")
        if opt16:
            v = opt16["ratios"].get("timm_shipped_fp32")
            if v is None and opt:
                timm = _find(res, impl="timm", layout="nchw", dtype="fp32", mode="infer")
                v = opt16["images_per_s"] / timm["images_per_s"] if timm else None
            check("bf16 optimized / timm-as-shipped fp32 throughput (>= 4)", v, v is not None and v >= 4)
            check("bf16 optimized share of the bf16 matmul probe (report)", opt16["probe_share"], True)
            v = opt16["ratios"].get("torchvision_resnet50")
            if v:
                check("bf16 Res2Net-50 time / torchvision resnet50 bf16 autocast time (<= 1.0)", 1 / v, 1 / v <= 1.0)
    def time_ratio(text: str, limit: float, res: List[Dict[str, Any]], num: Dict[str, Any],
                   den: Dict[str, Any]) -> None:
        a, b = _find(res, **num), _find(res, **den)
        if a and b:
            v = a["ms_per_image"] / b["ms_per_image"]
            check(f"{text} (<= {limit})", v, v <= limit)

    if "scales" in reports:
        res = reports["scales"]["results"]
        for impl, how in (("ours-optimized", "optimized"), ("ours", "as created")):
            time_ratio(f"14w8s / 26w4s time, {how}", 1.15, res,
                       dict(model="res2net50_14w_8s", impl=impl, dtype="fp32"),
                       dict(model="res2net50_26w_4s", impl=impl, dtype="fp32"))
    if "train" in reports:
        res = reports["train"]["results"]
        for dtype in ("fp32", "bf16"):
            ours = _find(res, impl="ours", mode="train", dtype=dtype)
            ck = _find(res, impl="ours-ckpt", mode="train", dtype=dtype)
            if ours:
                v = ours["ratios"].get("timm_channels_last")
                check(f"{dtype} training images/s / timm's channels_last {dtype} (>= 1.25)", v,
                      v is not None and v >= 1.25)
                v = ours["ratios"].get("timm_shipped_fp32")
                check(f"{dtype} training images/s / timm as shipped (NCHW fp32) (>= 1.25)", v,
                      v is not None and v >= 1.25)
                v = ours["ratios"].get("timm_channels_last_memory")
                check(f"{dtype} training peak memory / timm's (<= 1.0)", v, v is not None and v <= 1.0)
            if ours and ck:
                v = 1 - ck["peak_mem_mb"] / ours["peak_mem_mb"]
                check(f"{dtype} grad checkpointing peak-memory cut (>= 0.40)", v, v >= 0.4)
    if "gpu-train" in reports:
        res = reports["gpu-train"]["results"]
        for impl, peer_key, text in (("ours", "timm_channels_last", "eager"), ("ours-compiled", "timm_compiled",
                                                                                "torch.compile")):
            ours = _find(res, impl=impl, mode="train", dtype="bf16")
            v = ours["ratios"].get(peer_key) if ours else None
            check(f"GPU training images/s, batch 256, bf16 channels_last, {text}: ours / timm's (>= 1.0)", v,
                  v is not None and v >= 1.0)
    for suite in ("deploy", "deploy-slim"):
        if suite in reports:
            lines += deploy_targets(reports[suite]["results"])
    for suite in ("classes", "classes-no-bf16"):
        if suite in reports:
            lines += class_targets(reports[suite]["results"], reports[suite].get("machine", {}))
    if "cifar" in reports:
        for dtype in ("fp32", "bf16"):
            time_ratio(f"res2net20_cifar / resnet20_cifar training step time, batch 128, {dtype}", 1.3,
                       reports["cifar"]["results"], dict(model="res2net20_cifar", impl="ours", mode="train",
                                                         dtype=dtype),
                       dict(model="resnet20_cifar", impl="ours", mode="train", dtype=dtype))
    return lines


OURS = ("ours-optimized", "inductor", "onnxruntime", "openvino")  # every backend of res2net.optimize


def paired_speed_ratio(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """Row a's images/s over row b's (same batch), as the median of the per-round ratios: both ran once in every
    interleaved round, so a round that was slow for every row (the machine's state drifts by about 10% between
    rounds here) cancels instead of moving one median."""
    return statistics.median(tb / ta for ta, tb in zip(a["times_s"], b["times_s"]))


def deploy_targets(res: List[Dict[str, Any]]) -> List[str]:
    """Issue 15's targets per model and batch (paired per-round ratios): our best path vs the peers, eager and
    compiled PyTorch vs OpenVINO, int8 vs bf16."""
    lines: List[str] = []
    infer = [r for r in res if r["mode"] == "infer"]
    for model in sorted({r["model"] for r in infer if r["impl"] in OURS}):
        for batch in sorted({r["batch"] for r in infer}):
            rows = [r for r in infer if r["model"] in (model, "resnet50") and r["batch"] == batch]

            def best(impls: tuple, dtype: str) -> Optional[Dict[str, Any]]:
                cand = [r for r in rows if r["impl"] in impls and r["dtype"] == dtype]  # resnet50: torchvision
                return max(cand, key=lambda r: r["images_per_s"], default=None)

            for dtype in ("fp32", "bf16"):
                ours, peer = best(OURS, dtype), best(("timm", "torchvision"), dtype)
                if ours and peer:
                    v = paired_speed_ratio(ours, peer)
                    lines.append(f"- {model} b{batch} {dtype}: our best path ({ours['impl']}) / fastest peer "
                                 f"({peer['impl']}) images/s (>= 1.0): {v:.2f} -> {'met' if v >= 1 else 'NOT met'}")
            ov = best(("openvino",), "fp32")
            for impl, label in (("ours-optimized", "eager"), ("inductor", "PyTorch compiled (inductor, frozen)")):
                torch_path = best((impl,), "fp32")
                if torch_path and ov:
                    v = paired_speed_ratio(torch_path, ov)
                    lines.append(f"- {model} b{batch}: {label} fp32 / OpenVINO fp32 images/s (>= 0.9): {v:.2f} -> "
                                 f"{'met' if v >= 0.9 else 'NOT met'}")
            q, b16 = best(OURS, "int8"), best(OURS, "bf16")
            if q and b16:
                v = paired_speed_ratio(q, b16)
                lines.append(f"- {model} b{batch}: best int8 ({q['impl']}) / best bf16 ({b16['impl']}) images/s "
                             f"(>= 1.5): {v:.2f} -> {'met' if v >= 1.5 else 'NOT met'}")
            for r in rows:
                if r["model"] == model and r["impl"] in OURS and r.get("roofline_share") is not None:
                    lines.append(f"- {model} b{batch} {r['impl']} {r['dtype']}: share of the conv roofline "
                                 f"{100 * r['roofline_share']:.0f}% (report)")
    return lines


def class_targets(res: List[Dict[str, Any]], machine: Dict[str, Any]) -> List[str]:
    """Issue 20's floors on this CPU class (paired per-round ratios): our best path / the fastest runtime called
    directly (>= 1.0) in fp32, and in bf16 where it is native; best int8 / best fp32 (>= 1.5)."""
    lines = [f"- CPU class: {machine.get('cpu_class', '?')}"]
    infer = [r for r in res if r["mode"] == "infer"]
    for batch in sorted({r["batch"] for r in infer}):
        def best(impls: tuple, dtype: str) -> Optional[Dict[str, Any]]:
            cand = [r for r in infer if r["impl"] in impls and r["dtype"] == dtype and r["batch"] == batch]
            return max(cand, key=lambda r: r["images_per_s"], default=None)

        for dtype in ("fp32", "bf16", "int8"):
            ours, peer = best(OURS, dtype), best(DIRECT_PEERS, dtype)
            if ours and peer:
                v = paired_speed_ratio(ours, peer)
                floor = dtype == "fp32" or (dtype == "bf16" and machine.get("bf16_native"))
                lines.append(f"- b{batch} {dtype}: our best path ({ours['impl']}, {ours['ms_per_image']:.1f} ms/img) / "
                             f"fastest direct peer ({peer['impl']}, {peer['ms_per_image']:.1f} ms/img): {v:.2f}"
                             + (f" (>= 1.0) -> {'met' if v >= 1 else 'NOT met'}" if floor else " (report)"))
        q, f = best(OURS, "int8"), best(OURS + DIRECT_PEERS, "fp32")
        if q and f:
            v = paired_speed_ratio(q, f)
            lines.append(f"- b{batch}: best int8 ({q['impl']}) / best fp32 ({f['impl']}) images/s (>= 1.5): {v:.2f} "
                         f"-> {'met' if v >= 1.5 else 'NOT met'}")
    return lines


def run_suite(suite: str, repeats: int, out: Path) -> Dict[str, Any]:
    """One suite in this process (with the allocator setting, as the res2net command runs); writes
    ``<out>/<suite>.json|md`` and returns the report."""
    keep_freed_memory()
    bench_parser = argparse.ArgumentParser()
    add_arguments(bench_parser)
    rounds = str(max(repeats, MIN_REPEATS.get(suite, 1)))
    bench_args = bench_parser.parse_args(SUITES[suite] + ["--repeats", rounds])
    print(f"== {suite}: res2net bench {' '.join(SUITES[suite])} --repeats {rounds}", flush=True)
    report = run_bench(config_from_args(bench_args), log=lambda s: print(s, flush=True))
    report["command"] = "res2net bench " + " ".join(SUITES[suite]) + f" --repeats {rounds}"
    write_report(report, out, stem=suite)
    print(format_markdown(report), flush=True)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default=DEFAULT_SUITES, help=f"comma-separated from {list(SUITES)}")
    p.add_argument("--repeats", default="3")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    if not suites:
        p.error("--suites: name at least one suite")
    for suite in suites:
        if suite not in SUITES:
            p.error(f"--suites: unknown suite {suite!r}; choose from {list(SUITES)}")
    reports: Dict[str, Dict[str, Any]] = {}
    if len(suites) > 1:  # one fresh process per suite, each writing <out>/<suite>.json
        for suite in suites:
            subprocess.run([sys.executable, __file__, "--suites", suite, "--repeats", args.repeats, "--out",
                            str(args.out)], check=True)
            reports[suite] = json.loads((args.out / f"{suite}.json").read_text())
    else:
        reports[suites[0]] = run_suite(suites[0], int(args.repeats), args.out)
    summary = targets(reports)
    (args.out / "targets.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
