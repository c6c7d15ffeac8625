"""``res2net bench``: our models (as created and after :func:`res2net.optimize`) against timm's same model with
the same weights and torchvision's resnet50, in ONE process, interleaved round by round, with a large-matmul
probe of the machine's attainable FLOP rate measured in the same rounds.

Only ratios within one run mean anything on shared machines; absolute times drift with the load.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .engine.args import positive_int
from .errors import ConfigError

__all__ = ["BenchConfig", "Result", "run_bench", "format_markdown", "register"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEER = "resnet50"  # torchvision's


@dataclass
class BenchConfig:
    """What to measure. ``models``: zoo names; ``input_size`` None = each model card's size."""

    models: Sequence[str] = ("res2net50_26w_4s",)
    batch_sizes: Sequence[int] = (16,)
    dtypes: Sequence[str] = ("fp32",)
    train: bool = False
    infer: bool = True
    peers: bool = True
    compile: bool = False
    grad_checkpointing: bool = False
    repeats: int = 3
    warmup: int = 1
    train_warmup: int = 5  # training steps reach their steady time only after a few (oneDNN, momentum, allocator)
    input_size: Optional[int] = None
    probe_size: int = 4096
    memory: bool = True
    device: str = "cpu"
    num_classes: Optional[int] = None


@dataclass
class Result:
    """One measured case: medians over the rounds, with derived rates and ratios."""

    model: str
    impl: str  # ours | ours-optimized | ours-ckpt | timm | torchvision, "-compiled" when torch.compile wraps it
    layout: str  # nchw | channels_last
    dtype: str
    mode: str  # infer | train
    batch: int
    input_size: int
    gflop_per_image: float
    times_s: List[float] = field(default_factory=list)
    ms_per_image: float = math.nan
    images_per_s: float = math.nan
    gflops: float = math.nan
    probe_share: float = math.nan
    peak_mem_mb: float = math.nan
    ratios: Dict[str, float] = field(default_factory=dict)


@dataclass
class _Case:
    result: Result
    step: Callable[[], None]
    mem_step: Callable[[], float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops_per_image(model: nn.Module, size: int, device: torch.device) -> float:
    """Forward FLOPs (2 per MAC) of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was)
    return float(counter.get_total_flops())


def _peak_memory(fn: Callable[[], None], device: torch.device, track: Sequence[Any]) -> float:
    """Peak bytes allocated while ``fn`` runs (CUDA allocator stats; on CPU torch's MemTracker, which counts
    parameters, gradients, optimizer state, activations and temporaries), in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base + sum(_tensor_bytes(t) for t in track)) / 2**20
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*track)
    with tracker:
        fn()
    snap = tracker.get_tracker_snapshot("peak")
    return max((v.get("Total", 0) for v in snap.values()), default=0) / 2**20


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, nn.Module):
        return sum(t.numel() * t.element_size() for t in list(obj.parameters()) + list(obj.buffers()))
    return 0


def _infer_step(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype]) -> Callable[[], None]:
    device = x.device

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast or torch.float32,
                                             enabled=autocast is not None):
            model(x)

    return step


def _train_step(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, 10, (x.shape[0],), device=x.device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def _timm_model(name: str, ours: nn.Module, num_classes: int) -> Optional[nn.Module]:
    """timm's model of the same name with our weights (None when timm lacks it or the keys differ)."""
    from .models import get_spec

    timm_name = get_spec(name).timm_name
    if not timm_name:
        return None
    import timm

    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    state = ours.state_dict()
    if get_spec(name).arch.get("scale", 4) == 1:  # our scale-1 convs.0/bns.0 are timm's conv2/bn2
        state = {k.replace("convs.0.", "conv2.").replace("bns.0.", "bn2."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError:
        return None
    return model


def _build_cases(cfg: BenchConfig, device: torch.device) -> List[_Case]:
    import torchvision

    from .models import create_model, get_spec
    from .optimize import bf16_supported, optimize

    cases: List[_Case] = []
    peer_done: set = set()
    for name in cfg.models:
        spec = get_spec(name)
        size = cfg.input_size or spec.input_size
        n_cls = cfg.num_classes if cfg.num_classes is not None else spec.num_classes
        ours = create_model(name, num_classes=n_cls).to(device).eval()
        timm_m = _timm_model(name, ours, n_cls) if cfg.peers else None
        if timm_m is not None:
            timm_m = timm_m.to(device).eval()
        tv = None
        if cfg.peers and size >= 32 and (PEER, size) not in peer_done:
            tv = torchvision.models.resnet50(num_classes=n_cls).to(device).eval()
            peer_done.add((PEER, size))
        flops = {"ours": _flops_per_image(ours, size, device)}
        if tv is not None:
            flops["tv"] = _flops_per_image(tv, size, device)
        for dtype_name in cfg.dtypes:
            dtype = DTYPES[dtype_name]
            amp = None if dtype == torch.float32 else dtype
            if dtype == torch.bfloat16 and not bf16_supported(device):
                print(f"note: {device} has no native bf16: bf16 rows will be slow")
            for batch in cfg.batch_sizes:
                x = torch.randn(batch, 3, size, size, device=device)
                xcl = x.contiguous(memory_format=torch.channels_last)

                def add(impl: str, layout: str, mode: str, model: nn.Module, inp: torch.Tensor,
                        autocast: Optional[torch.dtype], gflop: float, mdl: str = name) -> None:
                    res = Result(mdl, impl, layout, dtype_name, mode, batch, size, gflop / 1e9)
                    if mode == "infer":
                        step = _infer_step(model, inp, autocast)
                        track: List[Any] = [model]
                    else:
                        step = _train_step(model, inp, autocast)
                        track = [model, step.optimizer]  # type: ignore[attr-defined]
                    cases.append(_Case(res, step, lambda: _peak_memory(step, device, track)))

                if cfg.infer:
                    if dtype == torch.float32:
                        add("ours", "nchw", "infer", ours, x, None, flops["ours"])
                    add("ours-optimized", "channels_last", "infer", optimize(ours, dtype=dtype), xcl, None,
                        flops["ours"])
                    if cfg.compile:
                        add("ours-optimized-compiled", "channels_last", "infer",
                            optimize(ours, dtype=dtype, compile=True), xcl, None, flops["ours"])
                    if timm_m is not None:
                        if dtype == torch.float32:
                            add("timm", "nchw", "infer", timm_m, x, None, flops["ours"])
                        tcl = copy.deepcopy(timm_m).to(memory_format=torch.channels_last)
                        add("timm", "channels_last", "infer", tcl, xcl, amp, flops["ours"])
                        if cfg.compile:
                            add("timm-compiled", "channels_last", "infer", torch.compile(tcl), xcl, amp,
                                flops["ours"])
                    if tv is not None:
                        tvcl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
                        add("torchvision", "channels_last", "infer", tvcl, xcl, amp, flops["tv"], PEER)
                if cfg.train:
                    ours_t = create_model(name, num_classes=n_cls).to(device, memory_format=torch.channels_last)
                    ours_t.load_state_dict(ours.state_dict())
                    add("ours", "channels_last", "train", ours_t.train(), xcl, amp, flops["ours"])
                    if cfg.compile:  # a separate copy: the compiled step keeps its own optimizer state
                        add("ours-compiled", "channels_last", "train", torch.compile(copy.deepcopy(ours_t)),
                            xcl, amp, flops["ours"])
                    if cfg.grad_checkpointing:
                        ck = create_model(name, num_classes=n_cls, grad_checkpointing=True)
                        ck = ck.to(device, memory_format=torch.channels_last)
                        add("ours-ckpt", "channels_last", "train", ck.train(), xcl, amp, flops["ours"])
                    if timm_m is not None:
                        if dtype == torch.float32:  # timm as shipped: NCHW fp32
                            shipped = _timm_model(name, ours, n_cls)
                            assert shipped is not None
                            add("timm", "nchw", "train", shipped.to(device).train(), x, None, flops["ours"])
                        tt = _timm_model(name, ours, n_cls)
                        assert tt is not None
                        tt = tt.to(device, memory_format=torch.channels_last).train()
                        add("timm", "channels_last", "train", tt, xcl, amp, flops["ours"])
                        if cfg.compile:
                            add("timm-compiled", "channels_last", "train", torch.compile(copy.deepcopy(tt)), xcl,
                                amp, flops["ours"])
                    if tv is not None:
                        tvt = torchvision.models.resnet50(num_classes=n_cls)
                        tvt = tvt.to(device, memory_format=torch.channels_last).train()
                        add("torchvision", "channels_last", "train", tvt, xcl, amp, flops["tv"], PEER)
    return cases


def _probe_cases(cfg: BenchConfig, device: torch.device) -> List[_Case]:
    """Large square matmuls (fp32, and bf16 when asked): the attainable FLOP rate of this run."""
    n = cfg.probe_size
    cases = []
    for dtype_name in cfg.dtypes:
        a = torch.randn(n, n, device=device, dtype=DTYPES[dtype_name])
        b = torch.randn(n, n, device=device, dtype=DTYPES[dtype_name])
        res = Result(f"matmul{n}", "probe", "-", dtype_name, "probe", 1, n, 2.0 * n ** 3 / 1e9)
        cases.append(_Case(res, (lambda a=a, b=b: torch.mm(a, b)), lambda: math.nan))  # type: ignore
    return cases


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure every case interleaved over ``cfg.repeats`` rounds; returns the JSON-able report."""
    for arg, value, low in (("repeats", cfg.repeats, 1), ("warmup", cfg.warmup, 0),
                            ("train_warmup", cfg.train_warmup, 0), ("probe_size", cfg.probe_size, 64)):
        if value < low:
            raise ConfigError(f"{arg} must be >= {low}, got {value}")
    bad = [d for d in cfg.dtypes if d not in DTYPES]
    if bad:
        raise ConfigError(f"dtypes: unknown {bad}; choose from {sorted(DTYPES)}")
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes):
        raise ConfigError(f"batch_sizes must be positive integers, got {list(cfg.batch_sizes)}")
    if not cfg.infer and not cfg.train:
        raise ConfigError("nothing to measure: both inference and training are off")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch.cuda.is_available() is False")
    if device.type == "cuda":  # every row alike: cuDNN times its algorithms per shape during the warm-up
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cases = _probe_cases(cfg, device) + _build_cases(cfg, device)
    log(f"{len(cases)} cases, {cfg.warmup} warm-up ({max(cfg.warmup, cfg.train_warmup)} for training steps) + "
        f"{cfg.repeats} interleaved rounds on {device}")
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
    if cfg.memory:
        for case in cases:
            # CPU: torch's MemTracker needs trainable parameters, so inference memory is CUDA-only
            if case.result.mode == "train" or (case.result.mode == "infer" and device.type == "cuda"):
                case.result.peak_mem_mb = float(case.mem_step())
    results = [c.result for c in cases]
    _derive(results)
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "machine": machine_info(device), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "results": [asdict(r) for r in results]}


def _derive(results: List[Result]) -> None:
    """Medians, rates, probe shares and ratios to the peers (training counts 3x the forward FLOPs)."""
    probes = {r.dtype: r for r in results if r.mode == "probe"}
    for r in results:
        med = statistics.median(r.times_s)
        if r.mode == "probe":
            r.gflops = r.gflop_per_image / med
            continue
        r.ms_per_image = 1e3 * med / r.batch
        r.images_per_s = r.batch / med
        r.gflops = r.gflop_per_image * (3.0 if r.mode == "train" else 1.0) * r.images_per_s
    for r in results:
        if r.mode == "probe":
            continue
        probe = probes.get(r.dtype)
        if probe is not None:
            r.probe_share = r.gflops / probe.gflops

        def peer(impl: str, layout: str, dtype: str, model: Optional[str] = None) -> Optional[Result]:
            for p in results:
                if (p.impl == impl and p.layout == layout and p.dtype == dtype and p.mode == r.mode
                        and p.batch == r.batch and p.input_size == r.input_size and (model is None or p.model == model)):
                    return p
            return None

        for key, p in (("timm_shipped_fp32", peer("timm", "nchw", "fp32", r.model)),
                       ("timm_channels_last", peer("timm", "channels_last", r.dtype, r.model)),
                       ("timm_compiled", peer("timm-compiled", "channels_last", r.dtype, r.model)),
                       ("torchvision_resnet50", peer("torchvision", "channels_last", r.dtype))):
            if p is not None and p is not r:
                r.ratios[key] = r.images_per_s / p.images_per_s
                if r.mode == "train" and not math.isnan(p.peak_mem_mb):
                    r.ratios[key + "_memory"] = r.peak_mem_mb / p.peak_mem_mb


def machine_info(device: torch.device) -> Dict[str, Any]:
    """CPU/GPU model, thread count and library versions, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: Dict[str, Any] = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import timm
        import torchvision

        info.update(timm=timm.__version__, torchvision=torchvision.__version__)
    except ImportError:
        pass
    return info


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as a markdown table (one row per case) with the machine and the date."""
    m = report["machine"]
    lines = [f"Machine: {m.get('gpu', m['cpu'])}, {m['threads']} threads, torch {m['torch']}; "
             f"{report['date']}", "",
             "| model | impl | layout | dtype | mode | batch | ms/img | img/s | GFLOP/s | share of probe "
             "| x timm shipped | x timm CL | x timm compiled | x tv rn50 CL | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: float, fmt: str = "{:.2f}") -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    for r in report["results"]:
        rt = r["ratios"]
        if r["mode"] == "probe":
            lines.append(f"| {r['model']} | probe | | {r['dtype']} | | | | | {r['gflops']:.0f} | 100% | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['layout']} | {r['dtype']} | {r['mode']} | {r['batch']} | "
            f"{f(r['ms_per_image'], '{:.1f}')} | {f(r['images_per_s'])} | {f(r['gflops'], '{:.0f}')} | "
            f"{f(r['probe_share'] * 100 if not math.isnan(r['probe_share']) else math.nan, '{:.0f}%')} | "
            f"{f(rt.get('timm_shipped_fp32', math.nan))} | {f(rt.get('timm_channels_last', math.nan))} | "
            f"{f(rt.get('timm_compiled', math.nan))} | {f(rt.get('torchvision_resnet50', math.nan))} | "
            f"{f(r['peak_mem_mb'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options (shared by the CLI and benchmarks/run_bench.py)."""
    p.add_argument("--models", type=_str_list, default=["res2net50_26w_4s"], help="comma-separated zoo names")
    p.add_argument("--batch-sizes", type=_int_list, default=[16], help="comma-separated, e.g. 1,16")
    p.add_argument("--dtypes", type=_str_list, default=["fp32"], help="comma-separated from fp32,bf16")
    p.add_argument("--train", action="store_true", help="also time an SGD training step")
    p.add_argument("--train-only", action="store_true", help="time only the training step")
    p.add_argument("--grad-checkpointing", action="store_true", help="add our model with grad checkpointing (train)")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile rows: optimize(..., compile=True) and compiled timm (inference); our and "
                        "timm's training models compiled (training)")
    p.add_argument("--no-peers", action="store_true", help="skip timm and torchvision")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--train-warmup", type=int, default=5,
                   help="untimed training steps per training case first (a training step needs a few to settle)")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: each model card's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="default: each model card's")
    p.add_argument("--probe-size", type=int, default=4096, help="matmul probe size N (N x N @ N x N)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--out", type=Path, default=None, help="directory for bench.json and bench.md")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from parsed options."""
    return BenchConfig(models=args.models, batch_sizes=args.batch_sizes, dtypes=args.dtypes,
                       train=args.train or args.train_only, infer=not args.train_only, peers=not args.no_peers,
                       compile=args.compile, grad_checkpointing=args.grad_checkpointing, repeats=args.repeats,
                       warmup=args.warmup, train_warmup=args.train_warmup, input_size=args.input_size,
                       probe_size=args.probe_size,
                       memory=not args.no_memory, device=args.device, num_classes=args.num_classes)


def write_report(report: Dict[str, Any], out: Path, stem: str = "bench") -> None:
    """``stem.json`` and ``stem.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(format_markdown(report))


def _main(args: argparse.Namespace) -> int:
    quiet = args.json
    report = run_bench(config_from_args(args), log=(lambda s: None) if quiet else print)
    if args.out is not None:
        write_report(report, args.out)
    print(json.dumps(report, indent=1) if args.json else format_markdown(report))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net bench``."""
    p = subparsers.add_parser("bench", help="time our models vs timm and torchvision (one process, interleaved)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_main)
