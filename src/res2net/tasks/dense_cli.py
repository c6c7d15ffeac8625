"""``res2net detect|segment|saliency train|eval|predict`` (see docs/DENSE.md)."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Type

from . import dense_common as dc
from .detection import DetectionConfig, DetectionTask
from .saliency import SaliencyConfig, SaliencyTask
from .segmentation import SegmentationConfig, SegmentationTask

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


def _handler(action: str, task_cls: Type[dc.DenseTask], schema: Type[Any]) -> Callable[[argparse.Namespace], int]:
    run = {"train": dc.cmd_train, "eval": dc.cmd_eval, "predict": dc.cmd_predict}[action]
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
            dc.add_common_args(sub, action, default_model)
            _task_flags(command, action, sub)
            sub.set_defaults(func=_handler(action, task_cls, schema))
