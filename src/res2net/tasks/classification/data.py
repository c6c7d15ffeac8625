"""The classification data sets of a config, with the preprocessing rule of :mod:`res2net.data.preprocessing`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ...data import (TensorImageDataset, classification_transforms, image_folder_split, load_cifar100,
                     load_fashion_mnist)
from ...data.preprocessing import NATIVE_SIZES, Preprocessing, dataset_preprocessing
from ...data.scaled import DEFAULT_CANVAS, DEFAULT_SCALE_RANGE, canvas_statistics, load_fashion_mnist_scaled
from ...errors import ConfigError
from ...weights import card_preprocessing
from .config import DATASETS, DataSection


@dataclass
class ClassificationData:
    """Train/evaluation sets and how to feed them."""

    train: Dataset
    test: Dataset
    classes: List[str]
    in_chans: int
    preprocessing: Preprocessing  # input size, crop, interpolation, mean/std (data.preprocessing's rule)
    in_memory: bool  # TensorImageDataset: batched augmentation in prepare_batch

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def mean(self) -> Tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> Tuple[float, ...]:
        return self.preprocessing.std


def _scaled_sets(cfg: DataSection) -> Optional[Dict[str, TensorImageDataset]]:
    """The fashion-mnist-scaled sets of ``cfg`` (None for another data set, whose config may not set the
    scaled set's keys)."""
    keys = {"scale_range": cfg.scale_range, "canvas": cfg.canvas, "clutter": cfg.clutter,
            "scale_seed": cfg.scale_seed}
    if cfg.dataset != "fashion-mnist-scaled":
        given = [f"data.{k}" for k, v in keys.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to data.dataset=fashion-mnist-scaled, not {cfg.dataset}")
        return None
    scale_range = tuple(cfg.scale_range or DEFAULT_SCALE_RANGE)
    if len(scale_range) != 2:
        raise ConfigError(f"data.scale_range must be [low, high], got {list(scale_range)}")
    try:
        return load_fashion_mnist_scaled(cfg.root, cfg.download, cfg.canvas or DEFAULT_CANVAS, scale_range,
                                         cfg.clutter or 0, cfg.scale_seed or 0)
    except ValueError as exc:
        raise ConfigError(f"data.scale_range/canvas/clutter: {exc}") from None


def _check_subsets(cfg: DataSection, n_train: int, n_test: int) -> None:
    """A subset larger than its split is refused (it would silently be the whole split)."""
    for key, flag, n, have, split in (("train_subset", "--train-subset", cfg.train_subset, n_train, "training"),
                                      ("test_subset", "--test-subset", cfg.test_subset, n_test, "evaluation")):
        if n is not None and n > have:
            raise ConfigError(f"data.{key} ({flag}) = {n} is more than the {have} images of the {split} split")


@functools.lru_cache(maxsize=2)
def _tensor_sets(dataset: str, data_dir: Optional[str], download: bool) -> Dict[str, TensorImageDataset]:
    if dataset == "fashion-mnist":
        return load_fashion_mnist(data_dir, download=download)
    if not data_dir:
        raise ConfigError("data.root (--data-dir) is required for cifar100")
    return load_cifar100(data_dir)


def load_data(cfg: DataSection, model_name: str, seed: int = 0, card: Optional[Preprocessing] = None
              ) -> ClassificationData:
    """The data sets of ``cfg`` with the preprocessing of the paper (or of the Fashion-MNIST recipe).
    ``card``: the preprocessing of the weights a run starts from (default: the model card's)."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}; got {cfg.dataset!r}")
    if cfg.train_scales is not None and (not cfg.train_scales or any(not 0 < x <= 4 for x in cfg.train_scales)):
        raise ConfigError(f"data.train_scales must be a non-empty list of fractions of the input size in (0, 4]; "
                          f"got {cfg.train_scales}")
    scaled = _scaled_sets(cfg)
    if scaled is not None:  # the canvas side and the scaled set's own statistics
        prep = Preprocessing(scaled["train"].images.shape[-1], *canvas_statistics(scaled["train"].images))
    else:
        prep = dataset_preprocessing(cfg.dataset, card or card_preprocessing(model_name), cfg.input_size)
    if cfg.dataset in NATIVE_SIZES or scaled is not None:  # the in-memory sets
        sets = scaled or _tensor_sets(cfg.dataset, cfg.root, cfg.download)
        train, test = sets["train"], sets["test"]
        if cfg.classes is not None or cfg.train_per_class:
            try:
                train = train.select(cfg.classes, cfg.train_per_class, seed)
                test = test.select(cfg.classes, None, seed)
            except ValueError as exc:
                raise ConfigError(f"data.classes: {exc}") from None
        _check_subsets(cfg, len(train), len(test))
        if cfg.train_subset:
            train = train.subset(cfg.train_subset, seed)
        if cfg.test_subset:
            test = test.subset(cfg.test_subset, seed)
        return ClassificationData(train, test, train.classes, train.images.shape[1],
                                  prep.for_channels(train.images.shape[1]), in_memory=True)
    if not cfg.root:
        raise ConfigError("data.root (--data-dir) is required for imagefolder: a folder with train/ and "
                          f"{cfg.val_split}/")
    if cfg.classes is not None or cfg.train_per_class:
        raise ConfigError("data.classes and data.train_per_class select from fashion-mnist and cifar100; for an "
                          "image folder, arrange the class folders instead")
    root = Path(cfg.root)
    tf = functools.partial(classification_transforms, input_size=prep.input_size, crop_pct=prep.crop_pct,
                           mean=prep.mean, std=prep.std, interpolation=prep.interpolation)
    train_files = image_folder_split(root, "train", tf(train=True))
    test_files = image_folder_split(root, cfg.val_split, tf(train=False), classes=train_files.classes)
    train_set: Dataset = train_files
    test_set: Dataset = test_files
    _check_subsets(cfg, len(train_files), len(test_files))
    if cfg.train_subset or cfg.test_subset:
        g = torch.Generator().manual_seed(seed)
        if cfg.train_subset:
            train_set = torch.utils.data.Subset(train_files, torch.randperm(len(train_files), generator=g)
                                                [:cfg.train_subset].tolist())
        if cfg.test_subset:
            test_set = torch.utils.data.Subset(test_files, torch.randperm(len(test_files), generator=g)
                                               [:cfg.test_subset].tolist())
    return ClassificationData(train_set, test_set, train_files.classes, 3, prep, in_memory=False)
