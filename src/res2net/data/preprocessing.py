"""How the images of a data set are fed to a model: input size, crop fraction, interpolation, mean and std.

One rule for training, evaluation, the analyses, export and prediction: the in-memory sets (Fashion-MNIST,
CIFAR-100) are used at their native size; Fashion-MNIST is normalised with its own statistics; everything else
takes the model card's values (``data.input_size`` may replace the card's size for image folders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from . import fashion_mnist as fmnist
from .images import CIFAR_SIZE

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
# the in-memory data sets are used at their native size
NATIVE_SIZES: Dict[str, int] = {"fashion-mnist": fmnist.SIZE, "cifar100": CIFAR_SIZE}
# data sets normalised with their own statistics instead of the model card's
DATASET_STATS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "fashion-mnist": (tuple(fmnist.MEAN), tuple(fmnist.STD)),
}


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of an image: ``input_size`` x ``input_size`` pixels after resizing to
    ``input_size / crop_pct`` and centre-cropping (``interpolation``), then ``(x - mean) / std`` per channel."""

    input_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        """Values that would give NaN or nonsense inputs (from a hand-edited ``config.json``) are refused."""
        problems = []
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 1:
            problems.append(f"input_size {self.input_size!r} (an integer >= 1)")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            problems.append(f"mean {list(self.mean)} and std {list(self.std)} (1 or 3 values each)")
        if not all(math.isfinite(v) for v in self.mean):
            problems.append(f"mean {list(self.mean)} (finite numbers)")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            problems.append(f"std {list(self.std)} (numbers > 0)")
        if not (math.isfinite(self.crop_pct) and 0 < self.crop_pct <= 1):
            problems.append(f"crop_pct {self.crop_pct!r} (in (0, 1])")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} (one of {', '.join(INTERPOLATIONS)})")
        if problems:
            raise ValueError("preprocessing: bad " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (JSON- and ``weights_only``-safe)."""
        out = asdict(self)
        out.update(mean=list(self.mean), std=list(self.std))
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict` (unknown keys are ignored: a newer writer may add some)."""
        return cls(input_size=int(values["input_size"]), mean=tuple(float(v) for v in values["mean"]),
                   std=tuple(float(v) for v in values["std"]), crop_pct=float(values.get("crop_pct", 1.0)),
                   interpolation=str(values.get("interpolation", "bilinear")))

    def for_channels(self, in_chans: int) -> "Preprocessing":
        """The same preprocessing for a model with ``in_chans`` input channels (a 3-value mean/std averaged
        for grey models, a 1-value one repeated for RGB models)."""
        if len(self.mean) == in_chans:
            return self
        mean, std = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return replace(self, mean=(mean,) * in_chans, std=(std,) * in_chans)


def dataset_preprocessing(dataset: str, card: Preprocessing, input_size: Optional[int] = None) -> Preprocessing:
    """The preprocessing of a model (its card's, ``card``) on ``dataset``: the in-memory sets' native size and
    no crop, else ``input_size`` (``data.input_size``) or the card's size; the data set's own statistics where it
    has them (Fashion-MNIST), else the card's."""
    size = NATIVE_SIZES.get(dataset) or input_size or card.input_size
    mean, std = DATASET_STATS.get(dataset, (card.mean, card.std))
    crop_pct = 1.0 if dataset in NATIVE_SIZES else card.crop_pct
    return Preprocessing(int(size), tuple(mean), tuple(std), crop_pct, card.interpolation)
