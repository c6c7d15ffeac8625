"""The ``res2net`` command. Each feature module registers its own subcommands (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import Res2NetError

# Modules that add subcommands; each defines ``register(subparsers: argparse._SubParsersAction) -> None``
# and sets ``func`` (a callable taking the parsed args, returning an exit code or None) on its parsers.
SUBCOMMAND_MODULES = [
    "res2net.zoo_cli",  # models, info
    "res2net.tasks.classification",  # train, eval
    "res2net.analysis.cli",  # complexity, ablation, cam, receptive-field
    "res2net.tasks.dense_cli",  # detect, segment, saliency
    "res2net.bench",  # bench
    "res2net.export",  # export
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="res2net", description="Res2Net models, training and analyses.")
    parser.add_argument("--version", action="version", version=f"res2net {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # feature not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``res2net`` console script; user errors print one line and exit with 2."""
    from .runtime import keep_freed_memory

    keep_freed_memory()  # reuse freed activation buffers instead of page-faulting them in every step
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (Res2NetError, ValueError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"res2net {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"res2net {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
