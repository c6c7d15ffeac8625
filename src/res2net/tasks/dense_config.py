"""The configuration schema shared by the dense tasks (detection, segmentation, saliency): the backbone and data
sections and the engine sections with dense-task defaults; :func:`dense_config` assembles a task's schema."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Type

from ..engine import OptimConfig, RunConfig, SchedConfig
from ..engine.config import at_least

NORMS = ("bn", "frozen")


@dataclass
class DenseModelConfig:
    """The backbone: any zoo model, optional weights, how much of it trains and which normalisation."""

    name: str = "res2net50_26w_4s"
    pretrained: str = ""  # "" = random init, "official" = the zoo's checkpoint, or a path / URL
    frozen_stages: int = at_least(-1, -1)  # as `res2net train`: stem and stages 1..N frozen (-1: none)
    # the older name of the setting, in torchvision's semantics (K top stages trained; stages + 1 = all, stem
    # included); still read, with a note naming model.frozen_stages
    trainable_layers: Optional[int] = at_least(None, 0)
    norm: str = "bn"  # bn | frozen (torchvision FrozenBatchNorm2d)


@dataclass
class DenseDataConfig:
    """Where the data comes from. ``synthetic``: generated scenes written to ``<out>/data`` (or ``root``)."""

    RENAMED: ClassVar[Dict[str, str]] = {"image_size": "input_size"}

    synthetic: bool = False
    root: str = ""
    input_size: int = at_least(128, 32)  # training/eval resize (segmentation, saliency) or detector min/max size
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train: int = at_least(200, 1)
    synthetic_val: int = at_least(50, 1)
    synthetic_seed: int = 0
    steps: int = at_least(0, 0)  # > 0: one epoch of exactly this many optimizer steps (the train set is cycled)


@dataclass
class DenseOptimConfig(OptimConfig):
    """The engine's optimizer section with dense-task defaults: AdamW 1e-3 at batch 8."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_batch: int = 8
    batch_size: int = 8


@dataclass
class DenseSchedConfig(SchedConfig):
    """Cosine decay over the run by default."""

    name: str = "cosine"
    milestones: List[int] = field(default_factory=list)


@dataclass
class DenseRunConfig(RunConfig):
    """Short runs: one epoch, fp32 (AMP off: torchvision's detection ops are fp32 on CPU), loading in the main
    process, a log record every 5 steps."""

    epochs: int = 1
    amp: str = "off"
    workers: int = 0
    log_every: int = 5


def dense_config(model_cls: Type[Any]) -> Type[Any]:
    """A top-level config schema with a task's ``model`` section and the shared data/engine sections."""
    name = model_cls.__name__.replace("Model", "")
    return dataclasses.make_dataclass(name, [
        ("model", model_cls, field(default_factory=model_cls)),
        ("data", DenseDataConfig, field(default_factory=DenseDataConfig)),
        ("optim", DenseOptimConfig, field(default_factory=DenseOptimConfig)),
        ("sched", DenseSchedConfig, field(default_factory=DenseSchedConfig)),
        ("run", DenseRunConfig, field(default_factory=DenseRunConfig)),
    ])
