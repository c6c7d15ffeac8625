"""Running the cases interleaved, deriving rates, roofline shares and ratios, and writing the report."""

from __future__ import annotations

import json
import importlib.metadata
import math
import platform
import statistics
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import ConfigError
from ..files import write_text
from ..hardware import select_device
from .cases import DTYPES, RUNTIMES, BenchConfig, Case, Result, matmul_probe_cases, model_cases, roofline_cases


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_config(cfg: BenchConfig) -> torch.device:
    """ConfigError naming the first bad option; the device to run on."""
    for arg, value, low in (("repeats", cfg.repeats, 1), ("warmup", cfg.warmup, 0),
                            ("train_warmup", cfg.train_warmup, 0), ("probe_size", cfg.probe_size, 64)):
        if value < low:
            raise ConfigError(f"{arg} must be >= {low}, got {value}")
    bad = [d for d in cfg.dtypes if d not in DTYPES]
    if bad:
        raise ConfigError(f"dtypes: unknown {bad}; choose from {sorted(DTYPES)}")
    bad = [r for r in cfg.runtimes if r not in RUNTIMES]
    if bad:
        raise ConfigError(f"runtimes: unknown {bad}; choose from {list(RUNTIMES)}")
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes):
        raise ConfigError(f"batch_sizes must be positive integers, got {list(cfg.batch_sizes)}")
    if not cfg.infer and not cfg.train:
        raise ConfigError("nothing to measure: both inference and training are off")
    return select_device(cfg.device, what="--device")


def _time_rounds(cases: List[Case], cfg: BenchConfig, device: torch.device, log: Callable[[str], None]) -> None:
    """Warm-up, then ``cfg.repeats`` rounds in which every case runs once (interleaved)."""
    for r in range(max(cfg.warmup, cfg.train_warmup)):
        for case in cases:
            if r < (cfg.train_warmup if case.result.mode == "train" else cfg.warmup):
                case.step()
    for r in range(cfg.repeats):
        for case in cases:
            _sync(device)
            t0 = time.perf_counter()
            case.step()
            _sync(device)
            case.result.times_s.append(time.perf_counter() - t0)
        log(f"round {r + 1}/{cfg.repeats} done")


def _measure_memory(cases: List[Case], device: torch.device) -> None:
    from ..profiling import peak_memory_mb

    for case in cases:
        # CPU: torch's MemTracker counts torch tensors: runtime rows (onnxruntime/OpenVINO memory) have none
        if case.result.mode in ("infer", "train") and case.result.layout != "-":
            case.result.peak_mem_mb = float(peak_memory_mb(case.step, device, case.track))


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure every case interleaved over ``cfg.repeats`` rounds; returns the JSON-able report."""
    device = check_config(cfg)
    if device.type == "cuda":  # every row alike: cuDNN times its algorithms per shape during the warm-up
        torch.backends.cudnn.benchmark = True
    notes: List[str] = []
    outer_log = log

    def log(line: str) -> None:  # skipped runtimes and other notes also go into the report
        if line.startswith("note: ") and line[6:] not in notes:
            notes.append(line[6:])
        outer_log(line)

    torch.manual_seed(0)
    stages: Dict[str, Any] = {}
    cases = matmul_probe_cases(cfg, device)
    if cfg.roofline and cfg.infer:
        probe_cases, stages = roofline_cases(cfg, device, log)
        cases += probe_cases
    cases += model_cases(cfg, device, log)
    log(f"{len(cases)} cases, {cfg.warmup} warm-up ({max(cfg.warmup, cfg.train_warmup)} for training steps) + "
        f"{cfg.repeats} interleaved rounds on {device}, {torch.get_num_threads()} threads")
    _time_rounds(cases, cfg, device, log)
    if cfg.memory:
        _measure_memory(cases, device)
    results = [c.result for c in cases]
    derive(results, stages)
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "machine": machine_info(device), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stages": stages, "notes": notes, "results": [asdict(r) for r in results]}


def _rates(results: List[Result]) -> None:
    for r in results:
        med = statistics.median(r.times_s)
        if r.mode in ("probe", "roofline"):
            r.gflops = r.gflop_per_image / med
            continue
        r.ms_per_image = 1e3 * med / r.batch
        r.images_per_s = r.batch / med
        r.gflops = r.gflop_per_image * (3.0 if r.mode == "train" else 1.0) * r.images_per_s


def _roofline_share(r: Result, results: List[Result], stages: Dict[str, Any]) -> float:
    """Attainable time at the stage probes' rates (same dtype and batch) over the measured time."""
    from .roofline import StageProbe, attainable_seconds

    table = stages.get(f"{r.model}@{r.input_size}")
    if not table:
        return math.nan
    probes = [StageProbe(tuple(st["hw"]), st["channels"], st["flops_share"], math.nan) for st in table]
    rates = []
    for p in probes:
        row = next((q for q in results if q.mode == "roofline" and q.dtype == r.dtype and q.batch == r.batch
                    and q.model == f"conv3x3 {p.channels}ch {p.hw[0]}x{p.hw[1]}"), None)
        rates.append(row.gflops if row is not None else math.nan)
    flops = r.gflop_per_image * 1e9 * (3.0 if r.mode == "train" else 1.0)
    attainable = attainable_seconds(probes, rates, flops, r.batch)
    return attainable / statistics.median(r.times_s)


def derive(results: List[Result], stages: Optional[Dict[str, Any]] = None) -> None:
    """Medians, rates, shares of the roofline and of the matmul probe, and ratios to the peers (training counts
    3x the forward FLOPs)."""
    _rates(results)
    probes = {r.dtype: r for r in results if r.mode == "probe"}
    rows = [r for r in results if r.mode in ("infer", "train")]
    for r in rows:
        probe = probes.get(r.dtype)
        if probe is not None:
            r.probe_share = r.gflops / probe.gflops
        r.roofline_share = _roofline_share(r, results, stages or {})

        def peer(impl: str, layout: Optional[str], dtype: str, model: Optional[str] = None) -> Optional[Result]:
            return next((p for p in rows if p.impl == impl and (layout is None or p.layout == layout)
                         and p.dtype == dtype and p.mode == r.mode and p.batch == r.batch
                         and p.input_size == r.input_size and (model is None or p.model == model)), None)

        ours_bf16 = [p for p in rows if p.model == r.model and p.mode == r.mode and p.batch == r.batch
                     and p.dtype == "bf16" and p.impl in ("ours-optimized",) + RUNTIMES]
        best_bf16 = max(ours_bf16, key=lambda p: p.images_per_s, default=None)
        for key, p in (("timm_shipped_fp32", peer("timm", "nchw", "fp32", r.model)),
                       ("timm_channels_last", peer("timm", "channels_last", r.dtype, r.model)),
                       ("timm_compiled", peer("timm-compiled", "channels_last", r.dtype, r.model)),
                       ("torchvision_resnet50", peer("torchvision", "channels_last", r.dtype)),
                       ("openvino_fp32", peer("openvino", None, "fp32", r.model)),
                       ("best_bf16", best_bf16)):
            if p is not None and p is not r:
                r.ratios[key] = r.images_per_s / p.images_per_s
                if r.mode == "train" and not math.isnan(p.peak_mem_mb):
                    r.ratios[key + "_memory"] = r.peak_mem_mb / p.peak_mem_mb


def machine_info(device: torch.device) -> Dict[str, Any]:
    """CPU/GPU model, CPU class (:mod:`res2net.hardware`, emulation caps named), threads and library versions."""
    from ..hardware import bf16_native, detect

    hw = detect()
    info: Dict[str, Any] = {"cpu": hw.cpu.name, "cpu_class": hw.cpu.isa + (" (emulated)" if hw.cpu.emulated else ""),
                            "cpu_native_class": hw.cpu.native_isa, "caps": dict(hw.cpu.caps),
                            "bf16_native": bf16_native("cpu", hw), "int8_dot": hw.cpu.int8_dot,
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info.update({k: v for k, v in hw.runtimes.items() if v})
    info["torchvision"] = importlib.metadata.version("torchvision")
    return info


def _fmt(v: Any, fmt: str = "{:.2f}") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _pct(v: Optional[float]) -> str:
    return "" if v is None or math.isnan(v) else f"{100 * v:.0f}%"


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: the probes (roofline convs and matmul), then one row per case."""
    m = report["machine"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("onnxruntime", "openvino") if k in m)
    lines = [f"Machine: {m.get('gpu', m['cpu'])}, {m['threads']} threads, torch {m['torch']}"
             f"{', ' + versions if versions else ''}; {report['date']}", ""]
    probes = [r for r in report["results"] if r["mode"] in ("probe", "roofline")]
    if probes:
        lines += ["| probe | impl | dtype | batch | GFLOP/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['impl']} | {r['dtype']} | {r['batch'] if r['mode'] == 'roofline' else ''} | "
                  f"{r['gflops']:.0f} |" for r in probes]
        lines.append("")
    lines += ["| model | impl | layout | dtype | mode | batch | ms/img | img/s | GFLOP/s | share of roofline "
              "| share of matmul | x timm shipped | x timm CL | x timm compiled | x tv rn50 CL | x OpenVINO fp32 "
              "| x best bf16 | peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r["mode"] in ("probe", "roofline"):
            continue
        rt = r["ratios"]
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['layout']} | {r['dtype']} | {r['mode']} | {r['batch']} | "
            f"{_fmt(r['ms_per_image'], '{:.2f}')} | {_fmt(r['images_per_s'])} | {_fmt(r['gflops'], '{:.0f}')} | "
            f"{_pct(r.get('roofline_share', math.nan))} | {_pct(r['probe_share'])} | "
            + " | ".join(_fmt(rt.get(k, math.nan)) for k in ("timm_shipped_fp32", "timm_channels_last",
                                                             "timm_compiled", "torchvision_resnet50",
                                                             "openvino_fp32", "best_bf16"))
            + f" | {_fmt(r['peak_mem_mb'], '{:.0f}')} |")
    notes = sorted({r["note"] for r in report["results"] if r.get("note")}) + list(report.get("notes", []))
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_report(report: Dict[str, Any], out: Path, stem: str = "bench") -> None:
    """``stem.json`` (NaN written as null) and ``stem.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    write_text(out / f"{stem}.md", format_markdown(report))
