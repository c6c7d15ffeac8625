"""``res2net detect|segment|saliency train|eval|predict`` (see docs/DENSE.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Type

from torch import nn

from ..engine import load_config
from ..engine.config import refuse_contradictions
from ..jsonio import dumps_strict
from ..errors import ConfigError
from ..tasks.dense_config import NORMS
from ..tasks.dense_task import DenseTask, load_trained, predict_dense, run_eval, train_dense
from ..tasks.detection import DetectionConfig, DetectionTask
from ..tasks.saliency import SaliencyConfig, SaliencyTask
from ..tasks.segmentation import SegmentationConfig, SegmentationTask
from .common import add_engine_args, engine_values, positive_int


COMMANDS = {
    "detect": (DetectionTask, DetectionConfig, "object detection / instance segmentation (Faster/Mask R-CNN + FPN)"),
    "segment": (SegmentationTask, SegmentationConfig, "semantic segmentation (DeepLab v3+)"),
    "saliency": (SaliencyTask, SaliencyConfig, "salient object detection (DSS-style head)"),
}


def _task_flags(command: str, action: str, parser: argparse.ArgumentParser) -> None:
    if command == "detect" and action == "train":
        parser.add_argument("--head", choices=["faster", "mask"], help="Faster R-CNN or Mask R-CNN (model.head)")
    if command == "detect" and action == "predict":
        parser.add_argument("--score-thresh", type=float, help="draw detections scoring at least this "
                                                               "(model.predict_score_thresh, default 0.5)")
    if command == "segment" and action == "train":
        parser.add_argument("--output-stride", type=int, choices=[8, 16], help="backbone output stride "
                                                                                "(model.output_stride)")


def _extra(args: argparse.Namespace) -> Dict[str, Any]:
    """The task-specific flags as dotted config keys (None where not given)."""
    keys = {"head": "model.head", "score_thresh": "model.predict_score_thresh",
            "output_stride": "model.output_stride"}
    return {key: getattr(args, dest) for dest, key in keys.items() if getattr(args, dest, None) is not None}


def _handler(action: str, task_cls: Type[DenseTask], schema: Type[Any]) -> Callable[[argparse.Namespace], int]:
    run = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict}[action]
    return lambda args: run(task_cls, schema, args, _extra(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect``, ``segment`` and ``saliency`` commands, each with train/eval/predict."""
    for command, (task_cls, schema, help_text) in COMMANDS.items():
        parser = subparsers.add_parser(command, help=help_text, description=help_text)
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        default_model = schema().model.name
        for action, action_help in (("train", "train, then evaluate (writes metrics.json)"),
                                    ("eval", "evaluate a checkpoint (writes metrics.json)"),
                                    ("predict", "write PNG visualisations")):
            sub = actions.add_parser(action, help=action_help, description=f"{help_text}: {action_help}")
            add_common_args(sub, action, default_model)
            _task_flags(command, action, sub)
            sub.set_defaults(func=_handler(action, task_cls, schema))


def build_config(schema: Type[Any], args: argparse.Namespace, extra: Dict[str, Any]) -> Any:
    """Schema defaults <- ``--config`` recipe <- flags <- ``--set``."""
    values = engine_values(args)
    values.update({"model.name": args.model, "data.root": args.data_dir, "data.steps": args.steps,
                   "data.input_size": args.input_size, "model.pretrained": args.pretrained,
                   "model.frozen_stages": args.frozen_stages, "model.trainable_layers": args.trainable_layers,
                   "model.norm": args.norm})
    if args.data is not None:
        values["data.synthetic"] = args.data == "synthetic"
    if args.steps is not None and args.epochs is None:
        values["run.epochs"] = 1
    values.update(extra)
    refuse_contradictions(values, args.overrides)
    return load_config(schema, args.config, args.overrides, values)


def cmd_train(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace,
              extra: Dict[str, Any]) -> int:
    """``train``: fit on the engine, then write the final evaluation as metrics.json."""
    cfg = build_config(schema, args, extra)
    if args.steps is not None and args.epochs is not None and args.epochs != 1:
        raise ConfigError("--steps runs one epoch of that many steps; do not combine it with --epochs")
    done = train_dense(task_cls, cfg, Path(args.out or "runs/" + task_cls.name), resume=args.resume)
    if done is not None:
        print(dumps_strict(done[0], indent=None))
        print(f"wrote {done[1]}")
    return 0


def trained_task(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace, extra: Dict[str, Any]
                 ) -> Tuple[DenseTask, nn.Module, Any]:
    """:func:`load_trained` with the flags of ``eval``/``predict``."""
    data = getattr(args, "data", None)
    return load_trained(task_cls, schema, Path(args.checkpoint), out=Path(args.out) if args.out else None,
                        data_root=getattr(args, "data_dir", None), synthetic=(data == "synthetic") if data else None,
                        overrides=extra, random_weights=getattr(args, "random_weights", False))


def cmd_eval(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace, extra: Dict[str, Any]) -> int:
    """``eval``: metrics.json of a checkpoint on the validation split."""
    task, model, cfg = trained_task(task_cls, schema, args, extra)
    run_eval(task, model, cfg)
    path = task.write_reports(task.out_dir)
    print(dumps_strict(task.report, indent=None))
    print(f"wrote {path}")
    return 0


def cmd_predict(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace,
                extra: Dict[str, Any]) -> int:
    """``predict``: PNG visualisations of the images under ``--input``."""
    task, model, _ = trained_task(task_cls, schema, args, extra)
    written = predict_dense(task, model, Path(args.input))
    print(f"wrote {len(written)} PNG file(s) to {task.out_dir}")
    return 0


def add_common_args(parser: argparse.ArgumentParser, kind: str, default_model: str) -> None:
    """Flags of ``train`` (kind="train", plus the engine's) or ``eval``/``predict``."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", metavar="DIR", help="data folder in a supported layout (see docs/DENSE.md)")
    g.add_argument("--data", choices=["synthetic"], help="generate scenes into <out>/data instead")
    if kind == "train":
        parser.add_argument("--model", help=f"backbone: any zoo model (default {default_model})")
        parser.add_argument("--pretrained", help="'official' or a checkpoint path/URL for the backbone")
        parser.add_argument("--frozen-stages", type=int, metavar="N",
                            help="freeze the backbone's stem and stages 1..N (model.frozen_stages; -1: none)")
        parser.add_argument("--trainable-layers", type=int, metavar="K",
                            help="the older form: backbone stages trained from the top (torchvision semantics; "
                                 "5 = all of a ResNet)")
        parser.add_argument("--norm", choices=NORMS, help="backbone norm: BatchNorm or FrozenBatchNorm2d")
        parser.add_argument("--steps", type=positive_int, help="train exactly this many optimizer steps (one epoch)")
        parser.add_argument("--input-size", "--image-size", type=positive_int, metavar="N",
                            help="input size (data.input_size)")
        add_engine_args(parser, default_config="")
    else:
        parser.add_argument("--checkpoint", required=True, help="a train run's best.pt or last.pt")
        parser.add_argument("--out", metavar="DIR", help="output folder (default: the checkpoint's folder)")
        if kind == "predict":
            parser.add_argument("--input", required=True, help="an image file or a folder of images")
        if kind == "eval":
            parser.add_argument("--random-weights", action="store_true",
                                help="evaluate the checkpoint's model configuration with fresh random weights "
                                     "(seed run.seed): the untrained reference for the trained figures "
                                     "(default --out: <checkpoint folder>/random-weights)")
