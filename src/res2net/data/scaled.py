"""Fashion-MNIST at many scales: each item resized by a factor drawn log-uniformly from a range and placed at a
random position on a larger black canvas, optionally with clutter (patches of other items, which do not carry
the label). The setting where the paper expects multi-scale features to help most (docs/ANALYSES.md).

The set is a pure function of the source split and the seed: item ``i`` is made from source image ``i`` of the
same split (train items from the training split, test items from the test split), so it is reproducible on
any machine and needs no file of its own; it is built in memory in seconds and cached per process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fashion_mnist as fmnist
from .tensors import TensorImageDataset

DEFAULT_CANVAS = 64
DEFAULT_SCALE_RANGE = (0.5, 2.0)
CLUTTER_PATCH = 10  # side of a clutter patch, in source pixels
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ScaledItems:
    """Items on their canvases (N, 1, canvas, canvas) uint8, with how each was made: its scale factor, its
    side in pixels and the top-left corner (row, column) where it was placed."""

    images: Tensor
    factors: Tensor
    sides: Tensor
    corners: Tensor


def scale_onto_canvas(images: Tensor, canvas: int = DEFAULT_CANVAS,
                      scale_range: Sequence[float] = DEFAULT_SCALE_RANGE, clutter: int = 0,
                      seed: int = 0) -> ScaledItems:
    """Each image resized by a factor drawn log-uniformly from ``scale_range`` and placed at a random position
    of a ``canvas`` x ``canvas`` black image; ``clutter`` patches of other images of the same set added where
    they are brighter (a pixel-wise maximum). Deterministic given ``seed``.

    Args:
        images: (N, 1, H, W) uint8 source images (H == W).
        canvas: side of the output images; it must hold the largest scaled item.
        scale_range: (low, high) factors, 0 < low <= high.
        clutter: patches of other items per image (0: none).
        seed: the draw's seed.

    Returns:
        The :class:`ScaledItems`.
    """
    low, high = (float(v) for v in scale_range)
    n, _, side, _ = images.shape
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be 0 < low <= high, got {list(scale_range)}")
    if round(side * high) > canvas:
        raise ValueError(f"canvas {canvas} cannot hold an item scaled by {high} ({round(side * high)} px)")
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    g = torch.Generator().manual_seed(seed)
    factors = torch.exp(math.log(low) + torch.rand(n, generator=g, dtype=torch.float64) * math.log(high / low))
    sides = (side * factors).round().clamp(min=1).long()
    room = canvas - sides + 1
    corners = (torch.rand(n, 2, generator=g, dtype=torch.float64) * room[:, None]).long()
    out = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    for s in sides.unique().tolist():
        idx = (sides == s).nonzero().flatten()
        resized = images[idx].float() if s == side else F.interpolate(
            images[idx].float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        resized = resized.round().clamp(0, 255).to(torch.uint8)
        for k, i in enumerate(idx.tolist()):
            r, c = corners[i].tolist()
            out[i, :, r:r + s, c:c + s] = resized[k]
    if clutter:
        p = min(CLUTTER_PATCH, side)
        donors = (torch.arange(n)[:, None] + torch.randint(1, max(2, n), (n, clutter), generator=g)) % n
        src = torch.randint(0, side - p + 1, (n, clutter, 2), generator=g)
        dst = torch.randint(0, canvas - p + 1, (n, clutter, 2), generator=g)
        for i in range(n):
            for k in range(clutter):
                (sr, sc), (dr, dc) = src[i, k].tolist(), dst[i, k].tolist()
                patch = images[donors[i, k], :, sr:sr + p, sc:sc + p]
                region = out[i, :, dr:dr + p, dc:dc + p]
                torch.maximum(region, patch, out=region)
    return ScaledItems(out, factors.float(), sides, corners)


@functools.lru_cache(maxsize=2)
def load_fashion_mnist_scaled(data_dir: Optional[str] = None, download: bool = True,
                              canvas: int = DEFAULT_CANVAS,
                              scale_range: Tuple[float, float] = DEFAULT_SCALE_RANGE, clutter: int = 0,
                              seed: int = 0) -> Dict[str, TensorImageDataset]:
    """Fashion-MNIST's two splits made into scale-varied sets (:func:`scale_onto_canvas`; the test split with
    a seed of its own, so no train and test draws are paired).

    Args:
        data_dir, download: where Fashion-MNIST is (see :func:`res2net.data.load_fashion_mnist`).
        canvas, scale_range, clutter: see :func:`scale_onto_canvas`.
        seed: the set's seed (independent of the training seed: every model sees the same set).

    Returns:
        ``{"train": ..., "test": ...}`` as :class:`TensorImageDataset` s of (1, canvas, canvas) uint8 images.
    """
    source = fmnist.load_fashion_mnist(data_dir, download=download)
    out = {}
    for split in SPLITS:
        items = scale_onto_canvas(source[split].images, canvas, scale_range, clutter, seed=split_seed(seed, split))
        out[split] = TensorImageDataset(items.images, source[split].labels, source[split].classes)
    return out


def split_seed(seed: int, split: str) -> int:
    """The draw's seed of ``split`` ("train" or "test") in the set of ``seed``: each split has its own, so
    :func:`scale_onto_canvas` with it remakes that split's items of :func:`load_fashion_mnist_scaled` together
    with how each was made (factors, sides, corners)."""
    return 2 * seed + SPLITS.index(split)


def canvas_statistics(images: Tensor) -> Tuple[Tuple[float], Tuple[float]]:
    """Mean and std of uint8 images scaled to [0, 1] (the normalisation of a scaled set)."""
    x = images.float().div_(255)
    return (float(x.mean()),), (float(x.std()),)
