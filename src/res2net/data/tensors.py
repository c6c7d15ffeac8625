"""In-memory image sets (uint8 tensors) with batched, on-device augmentation: no per-image PIL work."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 held in memory.

    ``__getitems__`` returns a whole batch ``(images, labels)`` at once (torch's DataLoader calls it with
    the batch's indices), so use :func:`batch_collate` as the loader's ``collate_fn``.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str]) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images, self.labels, self.classes = images, labels.long(), list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]

    def subset(self, n: int, seed: int = 0) -> "TensorImageDataset":
        """A class-balanced-in-expectation random subset of ``n`` images (seeded)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return TensorImageDataset(self.images[idx], self.labels[idx], self.classes)


    def select(self, classes: Optional[Sequence[int]] = None, per_class: Optional[int] = None,
               seed: int = 0) -> "TensorImageDataset":
        """Only the images of ``classes`` (indices, relabelled 0..k-1 in the given order), and of those at most
        ``per_class`` random images per class (seeded): the few-label splits of a transfer experiment."""
        keep = list(range(len(self.classes))) if classes is None else list(classes)
        bad = [c for c in keep if not 0 <= c < len(self.classes)]
        if bad or len(set(keep)) != len(keep) or not keep:
            raise ValueError(f"classes must be distinct indices in [0, {len(self.classes) - 1}], got {list(keep)}")
        g = torch.Generator().manual_seed(seed)
        chosen = []
        for c in keep:
            idx = torch.nonzero(self.labels == c).flatten()
            if per_class is not None:
                idx = idx[torch.randperm(len(idx), generator=g)[:per_class]].sort().values
            chosen.append(idx)
        order = torch.cat(chosen)
        relabel = torch.full((len(self.classes),), -1, dtype=torch.long)
        relabel[torch.tensor(keep)] = torch.arange(len(keep))
        return TensorImageDataset(self.images[order], relabel[self.labels[order]], [self.classes[c] for c in keep])


def batch_collate(batch: Any) -> Any:
    """Collate for data sets that already return whole batches (:class:`TensorImageDataset`)."""
    return batch


def random_crop_flip(images: Tensor, padding: int, flip: bool = True) -> Tensor:
    """Per-image random crop after zero padding (the CIFAR/ResNet recipe) and horizontal flip, on a batch
    ``(N, C, H, W)`` in one gather; each image gets its own offsets from torch's global RNG.
    (torchvision's v2 transforms draw one set of parameters per call, i.e. per batch.)"""
    n, _, h, w = images.shape
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dev = images.device
        oy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=dev)
        ox = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=dev)
        rows = (oy + torch.arange(h, device=dev).view(1, h, 1)).expand(n, h, w)
        cols = (ox + torch.arange(w, device=dev).view(1, 1, w)).expand(n, h, w)
        batch = torch.arange(n, device=dev).view(n, 1, 1).expand(n, h, w)
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, device=images.device) < 0.5
        images = torch.where(mask.view(n, 1, 1, 1), images.flip(3), images)
    return images


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 or [0, 1] float batch -> float32 ``(x - mean) / std`` per channel."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def progressive_size(native: int, scales: Sequence[float], epoch: int, epochs: int) -> int:
    """The training resolution of ``epoch`` (0-based) of ``epochs`` under progressive resizing: the
    ``scales`` (fractions of the ``native`` size) are spread evenly over the run, the first epoch taking the
    first and the last epoch the last; the size is ``round(native x scale)``, at least 8 px."""
    if not scales:
        raise ValueError("a progressive-resizing schedule needs at least one scale")
    n = len(scales)
    index = n - 1 if epochs <= 1 else min(n - 1, int(epoch * (n - 1) / (epochs - 1) + 0.5))
    return max(8, int(round(native * scales[index])))


def resize_batch(images: Tensor, size: int) -> Tensor:
    """Resize a float batch ``(N, C, H, W)`` to ``size x size`` (bilinear, antialiased when shrinking); the
    batch is returned as is when it already has that size (or holds no image)."""
    if images.shape[-2:] == (size, size) or images.numel() == 0:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=size < max(images.shape[-2:]))
