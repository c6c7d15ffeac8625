"""What every ``res2net`` command shares: argparse types, the engine's training flags (``train``, ``detect``,
``segment``, ``saliency``) and the command line echoed into reports."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

# flag destination -> dotted config key (the flag wins over the recipe; a ``--set`` of the same key must agree)
FLAG_KEYS = {
    "epochs": "run.epochs",
    "batch_size": "optim.batch_size",
    "seed": "run.seed",
    "deterministic": "run.deterministic",
    "checkpoint_every": "run.checkpoint_every",
    "quiet": "run.quiet",
    "device": "run.device",
    "amp": "run.amp",
    "workers": "run.workers",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts and sizes, where 0 would otherwise read as "not given")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_arg(parser: argparse.ArgumentParser, help_text: str = "model name (see `res2net models`)") -> None:
    """Add ``--model NAME`` (required), the model argument of every command; the older positional NAME of
    ``export`` and ``receptive-field`` is still read (:func:`model_name`)."""
    parser.add_argument("--model", metavar="NAME", help=help_text + " (required)")
    parser.add_argument("old_positional_name", nargs="?", metavar="NAME", help=argparse.SUPPRESS)


def model_name(args: argparse.Namespace) -> str:
    """The model named by ``--model`` (or, with a one-line note, by the older positional NAME)."""
    old = getattr(args, "old_positional_name", None)
    if old is not None:
        if args.model is not None and args.model != old:
            raise ValueError(f"two models named: --model {args.model} and {old}; give --model NAME only")
        print(f"note: the model is now given as --model {old} (the positional NAME still works)", file=sys.stderr)
        return old
    if args.model is None:
        raise ValueError("--model NAME is required (see `res2net models`)")
    return args.model


def add_engine_args(parser: argparse.ArgumentParser, default_config: str) -> None:
    """Add ``--config --epochs --batch-size --seed --deterministic --out --resume --checkpoint-every --quiet
    --device --amp --workers --set`` to a training subcommand's parser."""
    g = parser.add_argument_group("engine")
    g.add_argument("--config", default=default_config, metavar="NAME|FILE",
                   help=f"packaged recipe name or YAML file (default: {default_config})")
    g.add_argument("--epochs", type=positive_int, help="epochs to train (run.epochs)")
    g.add_argument("--batch-size", type=positive_int, help="batch size per process (optim.batch_size)")
    g.add_argument("--seed", type=int, help="random seed (run.seed)")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels: a resumed run equals an uninterrupted one bit for bit")
    g.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/<model>/last.pt where present")
    g.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (run.checkpoint_every)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars (run.quiet)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (run.device)")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype (run.amp)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes (run.workers)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")


def engine_values(args: argparse.Namespace) -> Dict[str, Any]:
    """The dotted config values given by the shared flags (None where a flag was not given)."""
    return {key: getattr(args, dest, None) for dest, key in FLAG_KEYS.items()}


def command_line(name: str) -> str:
    """The command being run as the user typed it (``res2net <name> ...``), for reports; ``res2net <name>`` when
    called from Python."""
    words = name.split()
    if sys.argv[1:1 + len(words)] == words:
        return " ".join(["res2net", *words, *sys.argv[1 + len(words):]])
    return f"res2net {name}"
