"""``res2net train`` and ``res2net eval``: the flags of image classification on the shared engine; the work is
:mod:`res2net.tasks.classification.run`'s."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..engine.config import load_config, refuse_contradictions
from ..errors import ConfigError
from ..files import check_destination
from ..jsonio import write_json
from ..models import get_spec
from ..tasks.classification import DATASETS, DEFAULT_RECIPE, ClassificationConfig
from ..tasks.classification.run import evaluate_checkpoint, train_models
from ..weights import parse_pretrained
from .common import add_engine_args, command_line, engine_values, positive_int

TASK_FLAGS = {"model": "model.name", "dataset": "data.dataset", "data_dir": "data.root",
              "train_subset": "data.train_subset", "pretrained": "model.pretrained",
              "frozen_stages": "model.frozen_stages", "linear_probe": "model.linear_probe"}


def train_config(args: argparse.Namespace) -> ClassificationConfig:
    """The config of a ``res2net train`` call: recipe < flags < ``--set``."""
    values = engine_values(args)
    values.update({key: getattr(args, dest, None) for dest, key in TASK_FLAGS.items()})
    refuse_contradictions(values, args.overrides)
    cfg = load_config(ClassificationConfig, args.config, args.overrides, values)
    for name in cfg.model.name:
        get_spec(name)  # unknown names fail before any data is read
    if not isinstance(parse_pretrained(cfg.model.pretrained), bool) and len(cfg.model.name) > 1:
        raise ConfigError(f"model.pretrained={cfg.model.pretrained!r} holds one model's weights; train one model "
                          f"(--model NAME), not {', '.join(cfg.model.name)}")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """``res2net train``: train every model of the config (``--seeds N``: each with N seeds, one after the
    other), then write the report (rank 0)."""
    cfg = train_config(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    train_models(cfg, out, seeds=args.seeds, resume=args.resume, command=command_line("train"))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``res2net eval``: top-1/top-5 error of a checkpoint on a data set; prints and writes JSON."""
    flags = {"data.dataset": args.dataset, "data.root": args.data_dir, "data.test_subset": args.test_subset,
             "optim.batch_size": args.batch_size, "run.device": args.device, "run.workers": args.workers}
    refuse_contradictions(flags, args.overrides)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
    # the default <checkpoint>.eval.json is this command's own file; an --out the user names is theirs
    check_destination(out, [args.checkpoint], overwrite=args.overwrite or not args.out)
    result = evaluate_checkpoint(args.checkpoint, args.model, flags, args.overrides)
    write_json(out, result)
    print(f"{result['model']} on {result['dataset']} ({result['images']} images): top-1 error "
          f"{100 * result['top1_error']:.2f}%  top-5 error {100 * result['top5_error']:.2f}%  -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``res2net`` command."""
    p = subparsers.add_parser("train", help="train classifiers (default: Res2Net vs ResNet on Fashion-MNIST)",
                              description="Train image classifiers with a recipe (YAML) on the shared engine. "
                              "With no arguments: the embedded Fashion-MNIST default (docs/TRAINING.md).")
    p.add_argument("--model", help="model name (res2net models); default: the recipe's model.name")
    p.add_argument("--dataset", choices=DATASETS, help="data set (data.dataset)")
    p.add_argument("--data-dir", help="data folder (data.data_dir)")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="train on a random N images (data.train_subset)")
    p.add_argument("--pretrained", metavar="SRC",
                   help="fine-tune from weights: official, a .pth/.bin/.safetensors path or URL, hf-hub:ORG/REPO, or "
                        "a run folder (model.pretrained); use --config finetune for the fine-tuning recipe")
    p.add_argument("--frozen-stages", "--freeze-stages", type=int, metavar="N",
                   help="freeze the stem and stages 1..N, their BatchNorm statistics too (model.frozen_stages)")
    p.add_argument("--linear-probe", action="store_true", default=None,
                   help="train the classifier only (model.linear_probe)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="train each model with N seeds (run.seed, +1, ...); report means, spreads and the paired "
                        "difference to the same-budget baseline with a 95%% interval")
    add_engine_args(p, DEFAULT_RECIPE)
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 error of a checkpoint",
                              description="Evaluate a checkpoint (ours or a bare state_dict) on a data set.")
    e.add_argument("--model", help="model name the checkpoint belongs to (default: the one our checkpoints name)")
    e.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    e.add_argument("--dataset", choices=DATASETS, help="data set (default: the checkpoint's, else imagefolder)")
    e.add_argument("--data-dir", help="data folder")
    e.add_argument("--test-subset", type=positive_int, metavar="N", help="evaluate a random N images")
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--workers", type=int, help="DataLoader worker processes")
    e.add_argument("--out", help="JSON file to write (default: <checkpoint>.eval.json)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never the checkpoint)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (data.*, run.*), e.g. --set run.amp=off")
    e.set_defaults(func=cmd_eval)
