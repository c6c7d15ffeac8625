"""The ``res2net train`` configuration schema: ``model.*``, ``data.*`` plus the engine's ``optim.*``, ``sched.*``,
``run.*`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ...engine import OptimConfig, RunConfig, SchedConfig
from ...engine.config import at_least

DATASETS = ("fashion-mnist", "cifar100", "imagefolder")
DEFAULT_RECIPE = "fashion_mnist"


@dataclass
class ModelSection:
    """Which models to train (one after another, same recipe) and model-side regularisation."""

    names: List[str] = field(default_factory=lambda: ["res2net50_26w_4s"])
    drop_path_rate: float = 0.0
    zero_init_last: bool = False


@dataclass
class DataSection:
    """Where the images come from and how they are augmented."""

    dataset: str = "imagefolder"  # fashion-mnist | cifar100 | imagefolder
    data_dir: Optional[str] = None  # fashion-mnist: default /usr/share/datasets/fashion-mnist
    train_subset: Optional[int] = at_least(None, 1)  # random subset of the training set (seeded by run.seed)
    test_subset: Optional[int] = at_least(None, 1)  # random subset of the evaluation set
    val_split: str = "val"  # imagefolder: sub-folder evaluated (class folders, or flat + <split>_labels.txt)
    input_size: Optional[int] = at_least(None, 1)  # imagefolder: crop size (default: the model card's)
    crop_padding: int = at_least(4, 0)  # in-memory sets: zero padding of the random crop (0: no crop)
    flip: bool = True  # in-memory sets: random horizontal flip
    train_scales: Optional[List[float]] = None  # progressive resizing: training batches resized to these
    # fractions of the native size, spread over the run (first epoch the first, last epoch the last);
    # evaluation always at the native size
    download: bool = True  # fashion-mnist: torchvision download when the files are absent


@dataclass
class ClassificationConfig:
    """The ``res2net train`` schema: ``model.*``, ``data.*``, ``optim.*``, ``sched.*``, ``run.*``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    run: RunConfig = field(default_factory=RunConfig)
