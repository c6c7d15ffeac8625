"""Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28x28 images of 10 clothing classes, read from the
four IDX ``.gz`` files into memory, verified by count and checksum."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import DataError
from .tensors import TensorImageDataset

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)  # of the 60,000 training images
SIZE = 28  # images are SIZE x SIZE, one grey channel
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
# md5 of each .gz as published (torchvision's FashionMNIST.resources) ...
GZ_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
          "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
          "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
          "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
# ... and of the decompressed IDX payload, which also holds for re-compressed copies such as Debian's
# dataset-fashion-mnist package (whose .gz bytes differ from the published ones).
IDX_MD5 = {"train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
           "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
           "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
           "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965"}
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/"
              "fashion-mnist), or pass --data-dir to a folder holding the four IDX .gz files")


def find_dir(data_dir: Optional[str] = None, download: bool = True) -> Path:
    """The folder with all four files. A given ``data_dir`` is the only place looked at (it or its
    ``FashionMNIST/raw``; with ``download`` torchvision's download goes into it when the files are absent);
    a ``data_dir`` that does not exist is an error, never a reason to use a copy found elsewhere. Without
    ``data_dir``: $RES2NET_FASHION_MNIST, else the Debian package's folder, else the cache
    ``~/.cache/res2net/fashion-mnist`` (downloaded into with ``download``). Raises :class:`DataError` naming
    the missing folder or file otherwise."""
    cache = Path.home() / ".cache" / "res2net" / "fashion-mnist"
    if data_dir:
        given = Path(data_dir)
        if not given.is_dir():
            raise DataError(f"--data-dir {given} does not exist (or is not a folder); {HOW_TO_GET}")
        candidates, target = [given], given
    else:
        candidates = [Path(os.environ["RES2NET_FASHION_MNIST"])] if os.environ.get("RES2NET_FASHION_MNIST") else []
        candidates += [DEFAULT_DIR, cache]
        target = cache
    for folder in candidates:
        for sub in (folder, folder / "FashionMNIST" / "raw"):
            if all((sub / name).is_file() for name in GZ_MD5):
                return sub
    first = candidates[0]
    missing = next(name for name in GZ_MD5 if not (first / name).is_file())
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(target), train=train, download=True)
            return target / "FashionMNIST" / "raw"
        except Exception as exc:  # no network, proxy refusal, ...: report the original problem
            reason = f" (download failed: {type(exc).__name__})"
    else:
        reason = ""
    raise DataError(f"Fashion-MNIST file {first / missing} is missing{reason}; {HOW_TO_GET}")


def verify_file(path: Path) -> bytes:
    """The decompressed IDX bytes of ``path`` after checking its md5 (published .gz or known payload)."""
    raw = path.read_bytes()
    try:
        payload = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"Fashion-MNIST file {path} is not a valid .gz ({exc}); {HOW_TO_GET}") from None
    if hashlib.md5(raw).hexdigest() != GZ_MD5[path.name] and \
            hashlib.md5(payload).hexdigest() != IDX_MD5[path.name]:
        raise DataError(f"Fashion-MNIST file {path} fails its md5 check (corrupt or not the official file); "
                        f"{HOW_TO_GET}")
    return payload


def read_split(folder: Path, split: str, verify: bool = True) -> Tuple[Tensor, Tensor]:
    """(images ``(N, 1, 28, 28)`` uint8, labels ``(N,)`` int64) of ``split`` ("train" or "test")."""
    img_name, lbl_name, count = SPLITS[split]
    images, labels = (parse_idx(verify_file(folder / name) if verify else gzip.decompress(
        (folder / name).read_bytes()), folder / name) for name in (img_name, lbl_name))
    if images.shape != (count, SIZE, SIZE) or labels.shape != (count,):
        raise DataError(f"Fashion-MNIST {split} files in {folder} hold {tuple(images.shape)} images and "
                        f"{tuple(labels.shape)} labels; expected {count} of {SIZE}x{SIZE}")
    return images.unsqueeze(1).contiguous(), labels.long()


def parse_idx(payload: bytes, path: Path) -> Tensor:
    """A uint8 IDX payload (magic 0x0000080N, N big-endian int32 sizes, then the bytes) as a tensor."""
    ndim = payload[3] if len(payload) >= 4 else 0
    if len(payload) < 4 + 4 * ndim or payload[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 3:
        raise DataError(f"Fashion-MNIST file {path} is not a uint8 IDX file")
    shape = [int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = payload[4 + 4 * ndim:]
    if len(data) != math.prod(shape):
        raise DataError(f"Fashion-MNIST file {path} is truncated: {len(data)} bytes for shape {shape}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(*shape)


def load_fashion_mnist(data_dir: Optional[str] = None, download: bool = True,
                       verify: bool = True) -> Dict[str, TensorImageDataset]:
    """Both splits as in-memory data sets: ``{"train": ..., "test": ...}``."""
    folder = find_dir(data_dir, download)
    return {split: TensorImageDataset(*read_split(folder, split, verify), classes=CLASSES) for split in SPLITS}
