"""``res2net weights [PATTERN]`` (the weight sources of each model and what is cached) and ``res2net weights
download NAME ...`` (fill the cache ahead of time, for machines without internet)."""

from __future__ import annotations

import argparse
import json
from typing import List

from ..weights.sources import OFFICIAL_LICENSE_NOTE, download, weights_table


def _cmd_weights(args: argparse.Namespace) -> int:
    words: List[str] = list(args.words)
    if words[:1] == ["download"]:
        if len(words) < 2:
            raise ValueError("weights download: give at least one model name (see `res2net weights`)")
        for name, source in download(words[1:], args.cache_dir):
            print(f"{name}: cached from {source}")
        print(f"note: {OFFICIAL_LICENSE_NOTE}")
        return 0
    if len(words) > 1:
        raise ValueError(f"weights: expected one PATTERN or `download NAME ...`, got {' '.join(words)!r}")
    rows = weights_table(words[0] if words else "*", args.cache_dir)
    if not rows:
        raise ValueError(f"no model with published weights matches {words[0]!r}; see `res2net weights`")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['model']}  (licence {row['license']})")
        for src in row["sources"]:
            state = (f"cached {src['path']} ({src['bytes']:,} bytes, sha256 {src['sha256'][:12]}...)"
                     if src["cached"] else "not cached")
            print(f"  {src['kind']:8s} {src['source']}\n           {state}")
    print(f"note: {OFFICIAL_LICENSE_NOTE}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net weights``."""
    p = subparsers.add_parser("weights", help="weight sources and the local cache; `weights download NAME ...`",
                              description=__doc__)
    p.add_argument("words", nargs="*", metavar="PATTERN | download NAME ...",
                   help="a shell-style model pattern to list, or `download` and model names to cache")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder for both official and Hub files (default: $RES2NET_CACHE, else torch.hub's "
                        "and huggingface_hub's own caches)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_weights)
