"""``res2net convert``: a checkpoint from one framework's key layout to another's, verified before an atomic
write (:mod:`res2net.weights.convert`)."""

from __future__ import annotations

import argparse

from ..weights import layouts
from ..weights.convert import FORMATS, convert_checkpoint


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``res2net convert``."""
    p = subparsers.add_parser(
        "convert", help="convert Res2Net weights between official/timm/torchvision/mmdet/mmpretrain/detectron2",
        description="Detect the layout (and model) of SRC, convert it to --to, verify (strict load into the "
                    "target's reference model, bit-identical round trip) and only then write DST atomically.")
    p.add_argument("src", metavar="SRC", help=".pth/.pt/.bin, .safetensors or detectron2 .pkl")
    p.add_argument("dst", metavar="DST", help="file to write (replaced only once verified)")
    p.add_argument("--to", required=True, choices=layouts.LAYOUTS, help="target key layout")
    p.add_argument("--model", metavar="NAME", help="zoo model name (default: inferred from keys and shapes)")
    p.add_argument("--format", dest="fmt", choices=FORMATS,
                   help="output format (default from DST's suffix: .safetensors, .pkl, else pth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST (never SRC itself)")
    p.add_argument("--from", dest="source_layout", choices=layouts.LAYOUTS,
                   help="source layout (default: detected; needs --model)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    report = convert_checkpoint(args.src, args.dst, args.to, model=args.model, fmt=args.fmt,
                                source_layout=args.source_layout, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0
