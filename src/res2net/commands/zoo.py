"""``res2net models`` and ``res2net info``: the zoo as a table and one model's card."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Tuple

import torch

from ..models.registry import build_model, get_spec, list_models, model_card, model_complexity
from .common import positive_int


def feature_shapes(name: str, input_size: int) -> List[Tuple[str, Tuple[int, ...], int]]:
    """(module, shape, reduction) of every stage map C1..C5 for one image, computed on the meta device."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec.name, features_only=True).eval()
        feats = model(torch.zeros(1, 3, input_size, input_size))
    return [(info["module"], tuple(f.shape[1:]), info["reduction"]) for info, f in zip(model.feature_info, feats)]


def models_table(pattern: str = "*") -> List[Dict[str, Any]]:
    """Rows of ``res2net models``: name, params, GMACs at the card's input size, paper top-1 error, weights."""
    names = list_models(pattern)
    if not names:
        raise ValueError(f"no model matches {pattern!r}; see `res2net models` for the list")
    rows = []
    for name in names:
        spec = get_spec(name)
        params, macs = model_complexity(name)
        rows.append({"name": name, "params": params, "gmacs": macs / 1e9, "input": spec.input_size,
                     "top1_err": spec.paper_top1_err, "pretrained": bool(spec.url),
                     "aliases": list(spec.aliases)})
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    rows = models_table(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':28s} {'params':>12s} {'GMACs':>7s} {'input':>5s} {'top-1 err':>9s}  pretrained  aliases")
    for r in rows:
        err = f"{r['top1_err']:.2f}" if r["top1_err"] is not None else "-"
        print(f"{r['name']:28s} {r['params']:>12,d} {r['gmacs']:>7.2f} {r['input']:>5d} {err:>9s}  "
              f"{'yes' if r['pretrained'] else 'no':10s}  {', '.join(r['aliases'])}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    card = model_card(args.name)
    shapes = feature_shapes(args.name, args.input_size or card["input_size"])
    if args.json:
        card["features"] = [{"module": m, "shape": list(s), "reduction": r} for m, s, r in shapes]
        print(json.dumps(card, indent=1, default=str))
        return 0
    for key, value in card.items():
        print(f"{key:16s} {value}")
    print(f"features at {args.input_size or card['input_size']}x{args.input_size or card['input_size']}:")
    for i, (module, shape, reduction) in enumerate(shapes):
        print(f"  C{i + 1} {module:8s} stride {reduction:2d}  {shape}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` and ``info`` to the ``res2net`` command."""
    p = subparsers.add_parser("models", help="list the model zoo")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'res2net50*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)
    p = subparsers.add_parser("info", help="one model's card and its feature shapes")
    p.add_argument("name")
    p.add_argument("--input-size", type=positive_int, default=None, help="input size for the feature shapes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
