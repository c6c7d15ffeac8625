"""Real photos and image files: scikit-image's sample photos, reading, listing and writing image files, and the
resize + centre crop that brings a photo to a model's input (used by the analyses, export verification,
prediction and the dense tasks' visualisations)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError
from .dense import IMAGE_EXTS
from .images import open_image

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def sample_images(names: Sequence[str] = SAMPLE_IMAGES, extra: str = "analysis") -> List[Tuple[str, Tensor]]:
    """scikit-image's sample photos as float tensors (3, H, W) in [0, 1] (scikit-image comes with the feature's
    ``extra``: ``res2net[analysis]``, ``res2net[export]``)."""
    from ..extras import require

    data = require("skimage.data", extra)
    images = []
    for name in names:
        if not hasattr(data, name):
            raise ValueError(f"unknown scikit-image sample {name!r}")
        arr = torch.from_numpy(getattr(data, name)().copy())
        if arr.ndim == 2:
            arr = arr[..., None].expand(-1, -1, 3)
        images.append((name, arr[..., :3].permute(2, 0, 1).float() / 255.0))
    return images


def load_image(path: str | Path) -> Tensor:
    """An image file as a float tensor (3, H, W) in [0, 1]; DataError naming the file when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {p} not found")
    try:
        img = open_image(str(p), channels=3)
    except DataError:
        raise
    except Exception as exc:  # PIL raises several types (UnidentifiedImageError, DecompressionBombError, ...)
        raise DataError(f"image {p} cannot be read: {type(exc).__name__}: {exc}") from None
    arr = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    w, h = img.size
    return arr.view(h, w, 3).permute(2, 0, 1).float() / 255.0


def resize_center(img: Tensor, size: int, in_chans: int = 3, crop_pct: float = 1.0) -> Tensor:
    """Resize the short side to ``size / crop_pct``, centre-crop ``size`` x ``size``; grey if ``in_chans == 1``."""
    from torchvision.transforms.v2 import functional as F

    img = F.center_crop(F.resize(img, [int(round(size / crop_pct))], antialias=True), [size, size])
    if in_chans == 1:
        img = F.rgb_to_grayscale(img)
    elif in_chans != 3:
        img = img.mean(0, keepdim=True).expand(in_chans, -1, -1)
    return img.clamp(0, 1)


def list_images(path: Path) -> List[Path]:
    """One image file, or every image in a folder (sorted); DataError if there is none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such image file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def save_png(image: Tensor, path: Path) -> Path:
    """Save a (3, H, W) or (H, W) uint8 tensor as PNG."""
    arr = image.detach().cpu()
    arr = arr.permute(1, 2, 0) if arr.dim() == 3 else arr
    Image.fromarray(arr.numpy()).save(path)
    return path


def to_uint8(image: Tensor) -> Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
