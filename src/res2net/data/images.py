"""Image-file classification sets: ImageNet layout (class folders; val as class folders or a flat folder
plus a label file), any user image folder, and CIFAR-100's python pickles. Bad files are skipped, warned
about by name and counted; grey, CMYK, RGBA and palette images are converted."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms import v2

from ..errors import DataError
from .tensors import TensorImageDataset

BadFile = Tuple[str, str]  # (path, reason)


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one channel, more than 8 bits per pixel


def to_8bit(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """``img`` as an 8-bit ``mode`` ("RGB" or "L") image, whatever its own mode.

    16-bit grey (``I;16*``, and ``I``, which PIL uses for 16-bit data) is scaled by 255/65535 instead of being
    clipped at 255 as PIL's ``convert`` does; float images (``F``) in [0, 1] are scaled to [0, 255] (others
    clipped); palette images with transparency and premultiplied-alpha modes go through their alpha mode;
    alpha is dropped; CMYK, YCbCr, LAB and HSV are converted by PIL."""
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            finite = arr[np.isfinite(arr)]
            scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
            arr = np.nan_to_num(arr) * scale
        else:
            arr = arr * (255.0 / 65535.0)
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return grey.convert(mode)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    elif img.mode == "RGBa":
        img = img.convert("RGBA")
    try:
        return img.convert(mode)
    except ValueError:  # no direct conversion (e.g. LAB -> L): through RGB
        return img.convert("RGB").convert(mode)


def open_image(path: Union[str, Path], channels: int = 3) -> Image.Image:
    """Decode an image file as 8-bit RGB (``channels=3``) or L (``channels=1``) with :func:`to_8bit`. Any
    rejection by the decoder (not an image, truncated, a decompression bomb, an unsupported mode, ...) raises
    :class:`DataError` naming the file and the reason."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_8bit(img, "RGB" if channels == 3 else "L")
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, struct.error...
        raise DataError(f"cannot decode image {path}: {decode_failure(exc)}") from None


def decode_failure(exc: BaseException) -> str:
    """``Type: first line`` of a decoder's exception."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classification_transforms(train: bool, input_size: int, crop_pct: float, mean: Sequence[float],
                              std: Sequence[float], interpolation: str = "bilinear") -> Callable[[Any], Tensor]:
    """The paper's preprocessing: train RandomResizedCrop(size) + flip; test resize to
    ``size / crop_pct`` (256 for 224) then centre crop; then float and normalize with the card's mean/std."""
    mode = v2.InterpolationMode(interpolation)
    geometry = [v2.RandomResizedCrop(input_size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()] \
        if train else [v2.Resize(int(round(input_size / crop_pct)), interpolation=mode, antialias=True),
                       v2.CenterCrop(input_size)]
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class ImageFiles(Dataset):
    """Labelled image files. An item is ``(image tensor, label)`` or, for a file that cannot be decoded,
    ``(None, label, path, reason)``; :func:`skip_collate` drops those from the batch and reports them.
    Files found unusable while scanning (zero bytes, not an image extension) are listed in ``bad_files``."""

    def __init__(self, samples: List[Tuple[str, int]], classes: List[str], transform: Callable[[Any], Tensor],
                 channels: int = 3, bad_files: Optional[List[BadFile]] = None) -> None:
        if not samples:
            raise DataError("no usable image files found")
        self.samples, self.classes, self.transform, self.channels = samples, classes, transform, channels
        self.bad_files: List[BadFile] = list(bad_files or [])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        path, label = self.samples[index]
        try:
            img = open_image(path, self.channels)
        except DataError as exc:  # any decoder rejection: skipped, named and counted by the caller
            reason, prefix = str(exc), f"cannot decode image {path}: "
            return None, label, path, reason[len(prefix):] if reason.startswith(prefix) else reason
        return self.transform(img), label


def skip_collate(items: List[Tuple[Any, ...]]) -> Tuple[Tensor, Tensor, List[BadFile]]:
    """Collate :class:`ImageFiles` items into ``(images, labels, bad)``, dropping undecodable files (listed
    in ``bad`` as (path, reason)); one bad file never ends an epoch."""
    good = [it for it in items if it[0] is not None]
    bad = [(it[2], it[3]) for it in items if it[0] is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


def _scan_file(path: Path, bad: List[BadFile]) -> bool:
    if path.suffix.lower() not in IMG_EXTENSIONS:
        bad.append((str(path), "not an image file extension"))
        return False
    if path.stat().st_size == 0:
        bad.append((str(path), "zero-byte file"))
        return False
    return True


def scan_class_folders(root: Path) -> Tuple[List[Tuple[str, int]], List[str], List[BadFile]]:
    """Samples of a ``root/<class>/<image>`` tree (classes sorted, as torchvision's ImageFolder), plus the
    files rejected while scanning."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    try:
        classes, to_idx = find_classes(str(root))
    except FileNotFoundError as exc:
        raise DataError(f"image folder {root}: {exc}") from None
    samples: List[Tuple[str, int]] = []
    bad: List[BadFile] = []
    for cls in classes:
        for path in sorted(p for p in (root / cls).rglob("*") if p.is_file() and not p.name.startswith(".")):
            if _scan_file(path, bad):
                samples.append((str(path), to_idx[cls]))
    return samples, classes, bad


def scan_flat_folder(folder: Path, label_file: Path, classes: List[str]) -> Tuple[List[Tuple[str, int]],
                                                                                  List[BadFile]]:
    """Samples of a flat folder labelled by ``label_file`` lines ``<file name> <class name or index>``
    (ImageNet's validation set as distributed)."""
    if not label_file.is_file():
        raise DataError(f"label file {label_file} for the flat folder {folder} does not exist")
    to_idx = {c: i for i, c in enumerate(classes)}
    samples: List[Tuple[str, int]] = []
    bad: List[BadFile] = []
    for n, line in enumerate(label_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{label_file}:{n}: expected '<file> <class>', got {line!r}")
        name, cls = parts
        label = int(cls) if cls.isdigit() else to_idx.get(cls)
        if label is None or not 0 <= label < len(classes):
            raise DataError(f"{label_file}:{n}: unknown class {cls!r}")
        path = folder / name
        if not path.is_file():
            bad.append((str(path), "listed in the label file but missing"))
        elif _scan_file(path, bad):
            samples.append((str(path), label))
    return samples, bad


def image_folder_split(root: Path, split: str, transform: Callable[[Any], Tensor], channels: int = 3,
                       classes: Optional[List[str]] = None) -> ImageFiles:
    """``root/<split>`` as class folders, or as a flat folder with ``root/<split>_labels.txt`` /
    ``root/<split>.txt`` (then ``classes`` come from the train split)."""
    folder = root / split
    labels = next((p for p in (root / f"{split}_labels.txt", root / f"{split}.txt") if p.is_file()), None)
    if labels is not None:
        if classes is None:
            raise DataError(f"{folder} is a flat folder; its classes come from {root / 'train'}")
        samples, bad = scan_flat_folder(folder, labels, classes)
    else:
        samples, found, bad = scan_class_folders(folder)
        if classes is not None and found != classes:
            raise DataError(f"classes of {folder} differ from those of the training folder")
        if classes is None and len(found) < 2:
            raise DataError(f"{folder} holds {len(found)} class folder(s) ({', '.join(found) or 'none'}); a "
                            "classifier needs at least 2 (one sub-folder per class)")
        classes = found
    return ImageFiles(samples, classes, transform, channels, bad)


CIFAR_SIZE = 32  # CIFAR images are 32 x 32 RGB


def load_cifar100(data_dir: str) -> Dict[str, TensorImageDataset]:
    """CIFAR-100 from its python pickles (``cifar-100-python/{train,test,meta}``; fine labels) in memory."""
    root = Path(data_dir)
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    out: Dict[str, TensorImageDataset] = {}
    classes: List[str] = [str(i) for i in range(100)]
    meta = root / "meta"
    if meta.is_file():
        classes = list(_unpickle(meta).get("fine_label_names", classes))
    for split in ("train", "test"):
        d = _unpickle(root / split)
        try:
            data = torch.as_tensor(d["data"], dtype=torch.uint8).view(-1, 3, CIFAR_SIZE, CIFAR_SIZE)
            labels = torch.as_tensor(d["fine_labels"], dtype=torch.long)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise DataError(f"CIFAR-100 file {root / split} lacks 32x32x3 'data' or 'fine_labels': {exc}") from None
        out[split] = TensorImageDataset(data, labels, classes)
    return out


def _unpickle(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} is missing; give --data-dir the folder holding "
                        "cifar-100-python/ (https://www.cs.toronto.edu/~kriz/cifar.html)")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"CIFAR-100 file {path} is unreadable: {type(exc).__name__}") from None


def warn_bad_files(bad: Sequence[BadFile], seen: Set[str]) -> int:
    """Warn once per new bad file (naming it) and record it in ``seen``; returns how many were new."""
    new = 0
    for path, reason in bad:
        if path not in seen:
            seen.add(path)
            warnings.warn(f"skipped image {path}: {reason}", stacklevel=2)
            new += 1
    return new
