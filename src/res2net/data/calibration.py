"""Calibration data for int8 quantization (:func:`res2net.inference.optimize` with ``dtype="int8"``,
``res2net export --int8``): real images of the task, preprocessed like the model's input."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["calibration_batches"]


def calibration_batches(source: Union[str, Path], size: int, mean: Sequence[float], std: Sequence[float],
                        in_chans: int = 3, n_images: int = 256, batch_size: int = 32, seed: int = 0) -> List[Tensor]:
    """Real, preprocessed calibration batches: ``"fashion-mnist"`` (a seeded random ``n_images`` of its training
    split; the test split stays for evaluation) or a folder of image files (searched recursively; each resized
    and centre-cropped to ``size``). Normalised with ``mean``/``std`` like the model's input.

    Args:
        source: ``"fashion-mnist"`` or a folder of image files.
        size: the square side each image is resized (and centre-cropped) to.
        mean: the model's input normalisation mean, one value per channel.
        std: its standard deviation, one value per channel.
        in_chans: the model's input channels.
        n_images: how many images to draw (seeded by ``seed``).
        batch_size: images per returned batch.
        seed: picks the images.

    Returns:
        the batches, each a float32 ``(N, in_chans, size, size)`` tensor.
    """
    from . import normalize, resize_batch

    if str(source).lower() in ("fashion-mnist", "fashion_mnist"):
        from . import load_fashion_mnist

        train = load_fashion_mnist(download=False)["train"].subset(n_images, seed)
        images = train.images.float() / 255.0
        if in_chans != images.shape[1]:
            images = images.expand(-1, in_chans, -1, -1)
        images = resize_batch(images, size)
    else:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        from . import open_image
        from .photos import resize_center

        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"--calibration {source}: not a folder of images, nor 'fashion-mnist'")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not files:
            raise ConfigError(f"--calibration {source}: no image files ({', '.join(IMG_EXTENSIONS[:4])} ...) in it")
        rng = np.random.default_rng(seed)
        picked = [files[i] for i in sorted(rng.permutation(len(files))[:n_images])]
        images = torch.stack([resize_center(torch.from_numpy(np.array(open_image(str(p), 3))).permute(2, 0, 1)
                                            .float() / 255.0, size, in_chans) for p in picked])
    x = normalize(images, mean, std)
    return [x[i:i + batch_size].contiguous() for i in range(0, x.shape[0], batch_size)]
