"""``res2net predict``: top-k classes of image files, folders (recursive) or globs, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import DataError
from ..files import atomic_write, check_destination
from ..predict import Predictor, find_images
from ..jsonio import write_json
from .common import positive_int


def _write_csv(path: Path, records: List[Dict[str, Any]], topk: int) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file"] + [f"{key}{i + 1}" for i in range(topk) for key in ("class", "index", "prob")])
    for r in records:
        writer.writerow([r["file"]] + [v for t in r["topk"] for v in (t["class"], t["index"], f"{t['prob']:.6f}")])
    with atomic_write(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.checkpoint and args.pretrained:
        raise ValueError("give --checkpoint PATH or --pretrained SRC, not both")
    source = args.checkpoint or args.pretrained
    if not source:
        raise ValueError("give the weights: --checkpoint PATH (a res2net train checkpoint or run folder) or "
                         "--pretrained SRC (official, hf-hub:ORG/REPO, a URL, a file or folder)")
    walk_skipped: List[Tuple[str, str]] = []
    files = find_images(args.inputs, walk_skipped)
    if args.json is not None and args.json == args.csv:
        raise ValueError(f"--json and --csv name the same file {str(args.json)!r}")
    for flag, out in (("--json", args.json), ("--csv", args.csv)):
        if out is not None:
            check_destination(out, [*files, source], overwrite=args.overwrite, what=flag)
    predictor = Predictor(source, args.model, topk=args.topk, batch_size=args.batch_size, tta=args.tta,
                          backend=args.backend, dtype=args.dtype, device=args.device)
    records = predictor.predict(files, progress=len(files) > 1 and sys.stderr.isatty())
    predictor.skipped[:0] = walk_skipped
    if not records:  # one line: the file (or the first of them) and why
        name, reason = predictor.skipped[0]
        others = f" (and {len(predictor.skipped) - 1} more file(s) skipped)" if len(predictor.skipped) > 1 else ""
        raise DataError(f"no image could be read: {name}: {reason}{others}")
    for name, reason in predictor.skipped:
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    if args.json:
        write_json(args.json, records)
    if args.csv:
        _write_csv(args.csv, records, predictor.topk)
    width = min(60, max(len(r["file"]) for r in records))
    for r in records:
        best = "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["topk"])
        print(f"{r['file'][-width:]:{width}s}  {best}")
    print(f"{len(records)} image(s) classified by {predictor.name}; {len(predictor.skipped)} skipped"
          + (f"; wrote {', '.join(str(p) for p in (args.json, args.csv) if p)}" if args.json or args.csv else ""),
          file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net predict``."""
    p = subparsers.add_parser("predict", help="classify images (top-k classes with probabilities)",
                              description=__doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--model", help="zoo model name (default: the one the weights name)")
    p.add_argument("--checkpoint", help="a res2net train checkpoint (.pt) or run folder")
    p.add_argument("--pretrained", help="official, hf-hub:ORG/REPO[@REV], a URL, a .pth/.bin/.safetensors file or "
                                        "a save_pretrained folder")
    p.add_argument("--topk", type=positive_int, default=None,
                   help="classes per image (default 5, or all of a model with fewer)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (default 32)")
    p.add_argument("--tta", choices=["flip"], default=None, help="test-time augmentation: mean with the mirror")
    p.add_argument("--backend", default=None,
                   help="run through res2net.optimize with this backend: eager, inductor, onnxruntime, openvino or "
                        "auto (the fastest measured here); default: the plain model")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the backend's precision: auto (default: bf16 where this machine runs it natively, else fp32; "
                        "`res2net env` says which), fp32 or bf16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--json", type=Path, help="write the records as JSON")
    p.add_argument("--csv", type=Path, help="write the records as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json/--csv file")
    p.set_defaults(func=_cmd_predict)
