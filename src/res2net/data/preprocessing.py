"""How the images of a data set are fed to a model: input size, crop fraction, interpolation, mean and std.

One rule for training, evaluation, the analyses, export and prediction: the in-memory sets (Fashion-MNIST,
CIFAR-100) are used at their native size; Fashion-MNIST is normalised with its own statistics; everything else
takes the model card's values (``data.input_size`` may replace the card's size for image folders).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from . import fashion_mnist as fmnist
from .images import CIFAR_SIZE

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
