"""Classify images with a trained or pretrained Res2Net: :class:`Predictor` (Python) and ``res2net predict``.

A record per readable image: ``{"file": str, "topk": [{"class": str, "index": int, "prob": float}, ...]}``.
Class names come from the weights (our runs and save_pretrained folders store them), ImageNet's names for
1000-class ImageNet weights, else ``class <i>``. Preprocessing comes from the weights (what training used) or
the model card. Unreadable files are named and counted in :attr:`Predictor.skipped`, never fatal.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data import normalize
from .data.preprocessing import Preprocessing
from .data.photos import IMAGE_EXTS, load_image, resize_center
from .errors import DataError, Res2NetError
from .files import live_run
from .hardware import default_dtype, select_device
from .weights import load_model, preprocessing_of

ImageInput = Union[str, Path, Tensor]
Record = Dict[str, Any]
TTA = (None, "flip")
DEFAULT_TOPK = 5  # classes per record unless topk= says otherwise (fewer when the model has fewer)


def imagenet_classes() -> List[str]:
    """The 1000 ImageNet-1k class names, in the order of the official and timm classifiers (torchvision's list)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


MAX_IMAGE_BYTES = 256 * 2**20  # a larger "image" file is skipped unread


def image_tensor(img: Tensor, label: str = "tensor") -> Tensor:
    """The one convention for image tensors given to :class:`Predictor`: (C, H, W) with C = 1 or 3 and
    H, W >= 1, either float in [0, 1] (as torchvision's ``to_tensor``) or uint8 in [0, 255] (as
    ``torchvision.io.read_image``). Returns a float32 tensor in [0, 1]; anything else is a ValueError naming
    ``label`` and what is wrong (a NaN, a value out of range, a channel count, an empty side, a dtype)."""
    if not isinstance(img, Tensor):
        raise ValueError(f"{label}: expected an image file or tensor, got {type(img).__name__}")
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"{label}: expected an image tensor (C, H, W) with C = 1 or 3 channels, got shape "
                         f"{tuple(img.shape)}")
    if img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"{label}: empty image, shape {tuple(img.shape)}")
    if img.dtype == torch.uint8:
        return img.float() / 255.0
    if not img.is_floating_point():
        raise ValueError(f"{label}: dtype {img.dtype}; give float values in [0, 1] or uint8 in [0, 255]")
    img = img.float()
    if not bool(torch.isfinite(img).all()):
        raise ValueError(f"{label}: holds NaN or infinite values")
    low, high = float(img.min()), float(img.max())
    if low < 0 or high > 1:
        raise ValueError(f"{label}: values in [{low:.3g}, {high:.3g}]; float images are in [0, 1] (uint8 in "
                         f"[0, 255])")
    return img


def _walk_images(folder: Path, skipped: List[Tuple[str, str]]) -> List[Path]:
    """Image files under ``folder`` (sorted); symbolic links to folders are not followed (no loop can hang
    the walk), unreadable folders and oversized files are added to ``skipped`` with the reason."""
    found: List[Path] = []

    def unreadable(exc: OSError) -> None:
        skipped.append((str(exc.filename or folder), f"folder cannot be read: {exc.strerror or exc}"))

    for root, _dirs, names in os.walk(folder, onerror=unreadable, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.suffix.lower() not in IMAGE_EXTS:
                continue
            try:
                size = path.stat().st_size
            except OSError as exc:  # a dangling or looping link
                skipped.append((str(path), f"cannot be read: {exc.strerror or exc}"))
                continue
            if size > MAX_IMAGE_BYTES:
                skipped.append((str(path), f"{size / 2**20:.0f} MiB is too large for an image file"))
            else:
                found.append(path)
    return sorted(found)


def find_images(inputs: Sequence[Union[str, Path]], skipped: Optional[List[Tuple[str, str]]] = None
                ) -> List[Path]:
    """Image files named by ``inputs``: files, folders (recursive, sorted) and glob patterns.

    Args:
        inputs: file names, folders and glob patterns.
        skipped: where unreadable folders, looping links and oversized files met in a folder are recorded
            (path, reason) instead of stopping the walk.

    Returns:
        The image files, in order. A name that matches nothing, or a folder without images, is a DataError
        naming it.
    """
    skipped = [] if skipped is None else skipped
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            before = len(skipped)
            found = _walk_images(path, skipped)
            if not found:
                reasons = f"; skipped {len(skipped) - before}" if len(skipped) > before else ""
                raise DataError(f"{path}: no images in this folder ({', '.join(IMAGE_EXTS)}){reasons}")
            files += found
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{item}: no such image file, folder or pattern")
            files += matches
    return files


def warn_if_training(path: Path) -> None:
    """A warning naming the run when ``path`` lies in a run folder that is still training (its ``best.pt`` and
    ``pretrained/`` may be replaced while they are used)."""
    for folder in (path, *path.resolve().parents):
        holder = live_run(folder)
        if holder is not None:
            warnings.warn(f"{path} belongs to the run {folder}, which is still training (pid {holder}): its weights "
                          "may change; the ones read now are used", UserWarning, stacklevel=3)
            return


class Predictor:
    """Top-k classification of images by one model.

    Args:
        model_or_source: a model (``nn.Module``; its ``class_names``/``preprocessing`` are used when set), or
            weights: a checkpoint of ``res2net train``, a save_pretrained or run folder, ``hf-hub:ORG/REPO``, a
            URL, ``"official"`` (the published weights of ``name``).
        name: the zoo model (needed for sources that do not say it, e.g. official files).
        topk: classes per image (default 5; more than the model has: all, with a warning); batch_size: images per
        forward; tta: None or ``"flip"`` (mean of the image and its mirror); backend: a :func:`res2net.optimize`
        backend (``"eager"``, ``"auto"``, ``"onnxruntime"``, ``"openvino"``, ...), None: the plain model; dtype: the backend's precision, ``"auto"`` (bf16 where the
        device runs it natively, else fp32: :func:`res2net.hardware.default_dtype`), ``"fp32"`` or ``"bf16"``;
        device: ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` or ``"auto"`` (:func:`res2net.hardware.select_device`).

    >>> p = Predictor(create_model("res2net17_slim", num_classes=3), name="res2net17_slim", topk=2)
    >>> [len(r["topk"]) for r in p.predict([torch.rand(3, 40, 40)])]
    [2]
    """

    def __init__(self, model_or_source: Union[nn.Module, str, Path], name: Optional[str] = None, *,
                 topk: Optional[int] = None, batch_size: int = 32, tta: Optional[str] = None,
                 backend: Optional[str] = None,
                 dtype: str = "auto", device: Union[str, torch.device] = "cpu") -> None:
        if tta not in TTA:
            raise ValueError(f"tta must be one of {TTA}, got {tta!r}")
        if isinstance(model_or_source, (str, Path)):
            warn_if_training(Path(model_or_source))
        if dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {dtype!r}")
        if dtype != "auto" and backend is None:
            raise ValueError(f"dtype={dtype!r} applies to a backend; give backend= too (e.g. 'auto')")
        if topk is not None and topk < 1 or batch_size < 1:
            raise ValueError(f"topk and batch_size must be >= 1, got {topk}, {batch_size}")
        model, self.classes, self.preprocessing, self.name = self._resolve(model_or_source, name)
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        if self.num_classes < 1:
            raise Res2NetError(f"{self.name}: the model has no classifier (num_classes=0); nothing to predict")
        self.in_chans = int(getattr(model, "in_chans", len(self.preprocessing.mean)))
        self.preprocessing = self.preprocessing.for_channels(self.in_chans)
        if topk is not None and topk > self.num_classes:
            warnings.warn(f"topk={topk} but {self.name} has {self.num_classes} classes; showing all "
                          f"{self.num_classes}", UserWarning, stacklevel=2)
        self.topk = min(DEFAULT_TOPK if topk is None else topk, self.num_classes)
        self.batch_size, self.tta = batch_size, tta
        self.device = select_device(str(device), what="device")
        model = model.eval().to(self.device)
        if backend is not None:
            from .inference import optimize

            model = optimize(model, dtype=default_dtype(self.device)[0] if dtype == "auto" else dtype,
                             backend=backend, input_size=self.preprocessing.input_size)
        self.model = model
        self.skipped: List[Tuple[str, str]] = []  # (file, reason) of every image that could not be read

    @staticmethod
    def _resolve(model_or_source: Union[nn.Module, str, Path], name: Optional[str]
                 ) -> Tuple[nn.Module, List[str], Preprocessing, str]:
        """(model, class names, preprocessing, zoo name): a given model, or :func:`res2net.weights.load_model`
        of the weights."""
        if isinstance(model_or_source, nn.Module):
            model = model_or_source
            name = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
            if not name:
                raise ValueError("Predictor(model): give name= (the zoo model), the model does not say it")
        else:
            model = load_model(model_or_source, name)
            name = name or model.pretrained_cfg["architecture"]
        classes = list(getattr(model, "class_names", None) or [])
        n = int(getattr(model, "num_classes", 0) or 0)
        if not classes:
            classes = imagenet_classes() if n == 1000 else [f"class {i}" for i in range(n)]
        return model, classes, preprocessing_of(model, name), name

    def load(self, image: ImageInput, label: str = "tensor") -> Tensor:
        """One image as the model's normalised input ``(C, S, S)``: a file, or a tensor as :func:`image_tensor`
        takes it (``label`` names it in the error)."""
        img = load_image(image) if isinstance(image, (str, Path)) else image_tensor(image, label)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        p = self.preprocessing
        x = resize_center(img[:3].float(), p.input_size, self.in_chans, p.crop_pct)
        return normalize(x[None], p.mean, p.std)[0]

    @torch.no_grad()
    def probabilities(self, batch: Tensor) -> Tensor:
        """Softmax class probabilities of a prepared batch (with the test-time augmentation)."""
        batch = batch.to(self.device)
        probs = self.model(batch).float().softmax(1)
        if self.tta == "flip":
            probs = (probs + self.model(batch.flip(-1)).float().softmax(1)) / 2
        return probs.cpu()

    def predict(self, images: Iterable[ImageInput], progress: bool = False) -> List[Record]:
        """A record per readable image (see the module docstring). An image that cannot be read goes to
        :attr:`skipped` with the reason; a tensor that breaks :func:`image_tensor`'s convention (named by its
        position in ``images``) also gets a warning, since no file walk explains its absence."""
        from tqdm.auto import tqdm

        items = list(images)
        records: List[Record] = []
        bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
        for start in range(0, len(items), self.batch_size):
            chunk, names = [], []
            for index, item in enumerate(items[start:start + self.batch_size], start):
                is_file = isinstance(item, (str, Path))
                label = str(item) if is_file else f"<tensor {index}>"
                try:
                    chunk.append(self.load(item, label))
                    names.append(label)
                except (Res2NetError, OSError, ValueError) as exc:
                    self.skipped.append((label, str(exc)))
                    if not is_file:
                        warnings.warn(f"skipped {exc}", UserWarning, stacklevel=2)
            bar.update(len(items[start:start + self.batch_size]))
            if not chunk:
                continue
            probs = self.probabilities(torch.stack(chunk))
            top = probs.topk(self.topk, dim=1)
            for label, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
                records.append({"file": label, "topk": [{"class": self.classes[i], "index": int(i), "prob": float(v)}
                                                        for v, i in zip(values, indices)]})
        bar.close()
        return records
