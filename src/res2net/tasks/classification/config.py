"""The ``res2net train`` configuration schema: ``model.*``, ``data.*`` plus the engine's ``optim.*``, ``sched.*``,
``run.*`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional

from ...engine import OptimConfig, RunConfig, SchedConfig
from ...engine.config import at_least, between
from ...errors import ConfigError

DATASETS = ("fashion-mnist", "fashion-mnist-scaled", "cifar100", "imagefolder")
DEFAULT_RECIPE = "fashion_mnist"


@dataclass
class ModelSection:
    """Which models to train (one after another, same recipe) and model-side regularisation."""

    RENAMED: ClassVar[Dict[str, str]] = {"names": "name", "freeze_stages": "frozen_stages"}

    name: List[str] = field(default_factory=lambda: ["res2net50_26w_4s"])  # one model or a list of them
    drop_path_rate: float = 0.0
    zero_init_last: bool = False
    # fine-tuning: start from these weights ("" = random init; "official", a path, URL, hf-hub:ORG/REPO or a run
    # folder); the backbone loads strictly, the classifier is replaced for the data's classes
    pretrained: str = ""
    frozen_stages: int = at_least(-1, -1)  # mmdetection semantics: stem and stages 1..N frozen (-1: none)
    linear_probe: bool = False  # train the classifier only (stem and every stage frozen)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name is an empty list; name at least one model (res2net models lists them)")
        if self.linear_probe and self.frozen_stages != -1:
            raise ConfigError(f"model.linear_probe (--linear-probe) freezes every stage; model.frozen_stages="
                              f"{self.frozen_stages} (--frozen-stages) contradicts it: give one of the two")
        if self.linear_probe and not self.pretrained:
            raise ConfigError("model.linear_probe (--linear-probe) trains a classifier on pretrained features; "
                              "give model.pretrained (--pretrained SRC) too")


@dataclass
class DataSection:
    """Where the images come from and how they are augmented."""

    RENAMED: ClassVar[Dict[str, str]] = {"data_dir": "root"}

    dataset: str = "imagefolder"  # fashion-mnist | fashion-mnist-scaled | cifar100 | imagefolder
    root: Optional[str] = None  # fashion-mnist: default /usr/share/datasets/fashion-mnist
    train_subset: Optional[int] = at_least(None, 1)  # random subset of the training set (seeded by run.seed)
    test_subset: Optional[int] = at_least(None, 1)  # random subset of the evaluation set
    val_split: str = "val"  # imagefolder: sub-folder evaluated (class folders, or flat + <split>_labels.txt)
    input_size: Optional[int] = between(None, 1, 4096)  # imagefolder: crop size (default: the model card's)
    crop_padding: int = between(4, 0, 64)  # in-memory sets: zero padding of the random crop (0: no crop)
    flip: bool = True  # in-memory sets: random horizontal flip
    train_scales: Optional[List[float]] = None  # progressive resizing: training batches resized to these
    # fractions of the native size, spread over the run (first epoch the first, last epoch the last);
    # evaluation always at the native size
    download: bool = True  # fashion-mnist: torchvision download when the files are absent
    classes: Optional[List[int]] = None  # keep only these class indices (relabelled 0..k-1 in this order)
    train_per_class: Optional[int] = at_least(None, 1)  # N labelled training images per class (seeded)
    # fashion-mnist-scaled (res2net.data.scaled): each item resized by a factor drawn log-uniformly from
    # scale_range (default [0.5, 2.0]) onto a canvas x canvas image (default 64) at a random position, with
    # `clutter` patches of other items (default 0); the set is fixed by scale_seed (default 0), not run.seed
    scale_range: Optional[List[float]] = None
    canvas: Optional[int] = at_least(None, 8)
    clutter: Optional[int] = at_least(None, 0)
    scale_seed: Optional[int] = None


@dataclass
class ClassificationConfig:
    """The ``res2net train`` schema: ``model.*``, ``data.*``, ``optim.*``, ``sched.*``, ``run.*``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    run: RunConfig = field(default_factory=RunConfig)
