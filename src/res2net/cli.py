"""The ``res2net`` command. Each feature module registers its own subcommands (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import List, Optional

from .errors import Res2NetError

# Modules that add subcommands; each defines ``register(subparsers: argparse._SubParsersAction) -> None``
# and sets ``func`` (a callable taking the parsed args, returning an exit code or None) on its parsers.
SUBCOMMAND_MODULES = [
    "res2net.commands.zoo",  # models, info
    "res2net.commands.train",  # train, eval
    "res2net.commands.analysis",  # complexity, ablation, cam, receptive-field
    "res2net.commands.dense",  # detect, segment, saliency
    "res2net.commands.bench",  # bench
    "res2net.commands.export",  # export
    "res2net.commands.convert",  # convert
    "res2net.commands.weights",  # weights
    "res2net.commands.predict",  # predict
    "res2net.commands.env",  # env
]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the console script's handler, so that every ``with`` block (temporary
    files and folders, locks) unwinds before the process exits 143. Training installs its own handler (it saves a
    checkpoint first) and puts this one back afterwards."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


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


def _one_line(exc: BaseException) -> str:
    """The whole message of ``exc`` on one line (a multi-line message is joined, not cut)."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        text = f"{exc.strerror}: {' -> '.join(names)}" if names else exc.strerror
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def _is_user_error(exc: BaseException) -> bool:
    """Bad input rather than a bug: the package's errors, bad values and keys, file-system refusals, any
    image decoder's rejection (PIL's DecompressionBombError is no OSError), memory a bad size asked for."""
    if isinstance(exc, (Res2NetError, ValueError, KeyError, OSError, MemoryError)):
        return True
    if type(exc).__module__.split(".")[0] == "PIL":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _leave_process_group() -> None:
    """Destroy the torch.distributed process group if the command formed one (imports nothing otherwise)."""
    if "torch.distributed" in sys.modules:
        from .engine.distributed import cleanup

        cleanup()


def run() -> int:
    """The ``res2net`` console script: :func:`main` on ``sys.argv`` in a process of its own, which may therefore
    tune the process's allocator (:func:`res2net.allocator.keep_freed_memory`: freed activation buffers reused
    instead of page-faulted in every step) and its thread count (never above the cores its container allows:
    :func:`res2net.hardware.limit_threads`). A library caller of :func:`main` keeps both as they were."""
    from .hardware import limit_threads
    from .allocator import keep_freed_memory

    keep_freed_memory()
    limit_threads()
    signal.signal(signal.SIGTERM, _raise_terminated)
    return main()


def main(argv: Optional[List[str]] = None) -> int:
    """Run one ``res2net`` command (``argv``: its arguments, default ``sys.argv[1:]``). Exit codes: 0 done; 2 a
    user error (one line: what and where); 130 / 143 stopped by SIGINT / SIGTERM (training saves a checkpoint
    first and says how to resume); 1 an unexpected error (one line; ``RES2NET_DEBUG=1`` shows the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    prefix = f"res2net {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"{prefix}: interrupted{': ' + _one_line(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prefix}: stopped by SIGTERM; nothing was left half-written", file=sys.stderr)
        return 143
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if isinstance(code, int):  # e.g. engine.signals.Preempted: a requested stop, not an error
            print(f"{prefix}: {_one_line(exc)}", file=sys.stderr)
            return code
        if os.environ.get("RES2NET_DEBUG"):
            raise
        if _is_user_error(exc):
            hint = " (out of memory: lower the batch or image size)" if isinstance(exc, (MemoryError, RuntimeError)) \
                else ""
            name = "" if isinstance(exc, (Res2NetError, ValueError, KeyError, OSError)) else f"{type(exc).__name__}: "
            print(f"{prefix}: error: {name}{_one_line(exc)}{hint}", file=sys.stderr)
            return 2
        print(f"{prefix}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (RES2NET_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()


if __name__ == "__main__":
    sys.exit(run())
