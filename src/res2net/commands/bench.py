"""``res2net bench`` options and command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

from .common import positive_int
from ..files import claim_folder
from ..bench.cases import RUNTIMES, BenchConfig
from ..bench.report import format_markdown, run_bench, write_report


def _int_list(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> List[str]:
    """argparse type: a comma-separated list of at least one name."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options (shared by the CLI and benchmarks/run_bench.py)."""
    p.add_argument("--models", type=_str_list, default=["res2net50_26w_4s"], help="comma-separated zoo names")
    p.add_argument("--batch-sizes", type=_int_list, default=[16], help="comma-separated, e.g. 1,16")
    p.add_argument("--dtypes", type=_str_list, default=["fp32"], help="comma-separated from fp32,bf16,int8")
    p.add_argument("--runtimes", type=_str_list, default=[],
                   help=f"comma-separated from {','.join(RUNTIMES)}: res2net.optimize backends timed beside eager "
                        "(same weights, same threads; int8 rows run on onnxruntime/openvino)")
    p.add_argument("--no-roofline", action="store_true", help="skip the conv probes at the network's stage shapes")
    p.add_argument("--direct-peers", action="store_true",
                   help="add onnxruntime, OpenVINO (on our ONNX graph) and zentorch called directly, as their docs show")
    p.add_argument("--train", action="store_true", help="also time an SGD training step")
    p.add_argument("--train-only", action="store_true", help="time only the training step")
    p.add_argument("--grad-checkpointing", action="store_true", help="add our model with grad checkpointing (train)")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile rows: optimize(..., compile=True) and compiled timm (inference); our and "
                        "timm's training models compiled (training)")
    p.add_argument("--no-peers", action="store_true", help="skip timm and torchvision")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--train-warmup", type=int, default=5,
                   help="untimed training steps per training case first (a training step needs a few to settle)")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: each model card's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="default: each model card's")
    p.add_argument("--probe-size", type=int, default=4096, help="matmul probe size N (N x N @ N x N; a column)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--out", type=Path, default=None, help="directory for bench.json and bench.md")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from parsed options."""
    return BenchConfig(models=args.models, batch_sizes=args.batch_sizes, dtypes=args.dtypes,
                       train=args.train or args.train_only, infer=not args.train_only, peers=not args.no_peers,
                       compile=args.compile, grad_checkpointing=args.grad_checkpointing, repeats=args.repeats,
                       warmup=args.warmup, train_warmup=args.train_warmup, input_size=args.input_size,
                       probe_size=args.probe_size, memory=not args.no_memory, device=args.device,
                       num_classes=args.num_classes, runtimes=args.runtimes, roofline=not args.no_roofline,
                       direct_peers=args.direct_peers)


def _main(args: argparse.Namespace) -> int:
    from ..bench.report import _finite

    if args.train_only and args.runtimes:
        raise ValueError("--runtimes times inference backends; --train-only times the training step only: give one "
                         "of the two")
    if args.out is not None:
        claim_folder(args.out)  # before the timing: a folder of the user's files is refused
    report = run_bench(config_from_args(args), log=(lambda s: None) if args.json else print)
    if args.out is not None:
        write_report(report, args.out)
    print(json.dumps(_finite(report), indent=1, allow_nan=False) if args.json else format_markdown(report))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net bench``."""
    from ..bench import __doc__ as doc

    p = subparsers.add_parser("bench", help="time our models vs the runtimes, timm and torchvision (one process, "
                              "interleaved)", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_main)
