"""``res2net export``: a zoo model or a checkpoint to ONNX, OpenVINO IR or TorchScript (int8 with calibration),
verified before it is moved into place (:mod:`res2net.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from ..export import (DEFAULT_OPSET, EXPORTERS, FORMATS, INT8_FORMATS, MIN_OPSET, MIN_OPSET_DYNAMO, export_model,
                      model_for_export)
from ..files import check_destination
from .common import add_model_arg, model_name, positive_int


def _main(args: argparse.Namespace) -> int:
    if args.format == "torchscript":
        given = [flag for flag, value in (("--exporter", args.exporter), ("--opset", args.opset)) if value is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(f"{' and '.join(given)} {verb} to --format onnx or openvino only, not --format "
                             f"{args.format}")
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration applies with --int8 only")
    if args.int8 and args.format not in INT8_FORMATS:
        raise ValueError(f"--int8 applies to --format {' or '.join(INT8_FORMATS)}, not --format {args.format}")
    if args.int8 and args.calibration is None:
        raise ValueError("--int8 needs --calibration DIR|fashion-mnist (real images of the task)")
    name = model_name(args)
    inputs = [args.checkpoint] if args.checkpoint else []
    outputs = [args.out, args.out.with_suffix(".bin")] if args.format == "openvino" else [args.out]
    for out in outputs:
        check_destination(out, inputs, overwrite=args.overwrite)
    model, trained_size, mean, std = model_for_export(name, args.checkpoint, args.num_classes)
    size = args.input_size or trained_size
    in_chans = int(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels)
    calibration = None
    if args.int8:
        from ..data.calibration import calibration_batches

        calibration = calibration_batches(args.calibration, size, mean, std, in_chans, args.calibration_images)
    diffs = export_model(model, args.out, args.format, input_size=size, dynamic_batch=args.dynamic_batch,
                         opset=DEFAULT_OPSET if args.opset is None else args.opset, in_chans=in_chans, mean=mean,
                         std=std, exporter=args.exporter or "dynamo", int8=args.int8, calibration=calibration)
    checks = ", ".join(f"{k}: {v:.2%}" if "agreement" in k else f"{k}: max abs diff {v:.2e}" for k, v in diffs.items())
    kind = f"{args.format} int8" if args.int8 else args.format
    extra = f" + {Path(args.out).with_suffix('.bin')}" if args.format == "openvino" else ""
    print(f"wrote {args.out}{extra} ({kind}, {name}, {size}x{size}); verified {checks}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net export``."""
    p = subparsers.add_parser("export", help="export a model to ONNX, OpenVINO IR or TorchScript (verified)",
                              description=__doc__)
    add_model_arg(p)
    p.add_argument("--checkpoint", default=None, help="weights file (default: random init)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path, help="output file (OpenVINO: NAME.xml, NAME.bin beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the checkpoint)")
    p.add_argument("--dynamic-batch", action="store_true", help="batch dimension left symbolic")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; >= {MIN_OPSET_DYNAMO} with the dynamo exporter, "
                        f">= {MIN_OPSET} with torchscript)")
    p.add_argument("--exporter", choices=EXPORTERS, default=None,
                   help="torch's ONNX exporter: dynamo (torch.export, default) or the deprecated torchscript one")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the model card's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="default: the model card's")
    p.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization (onnxruntime's QDQ; --format openvino: its IR)")
    p.add_argument("--calibration", default=None, metavar="DIR|fashion-mnist",
                   help="real images for --int8: a folder of image files, or the Fashion-MNIST training set")
    p.add_argument("--calibration-images", type=positive_int, default=256,
                   help="how many calibration images (default 256)")
    p.set_defaults(func=_main)
