"""Report-folder helpers shared by the analyses: matplotlib (Agg), JSON/CSV writers, markdown tables,
sample images and checkpoint-aware model building."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(fig: Any, axes: Any, path: Path) -> None:
    """Hide the axes of an image grid, lay it out, write it as a PNG and free the figure."""
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def out_dir(path: str | Path) -> Path:
    """Create (if needed) and return the report folder ``path``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Write dict rows as CSV; columns are the union of keys, in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A markdown table (list of lines); numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> List[Tuple[str, Tensor]]:
    """scikit-image's sample photos as float tensors (3, H, W) in [0, 1]."""
    from skimage import data

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
    """An image file as a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {p} not found")
    with Image.open(p) as img:
        arr = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
        w, h = img.size
    return arr.view(h, w, 3).permute(2, 0, 1).float() / 255.0


def resize_center(img: Tensor, size: int, in_chans: int = 3) -> Tensor:
    """Resize the short side to ``size``, centre-crop ``size`` x ``size``; grey if ``in_chans == 1``."""
    from torchvision.transforms.v2 import functional as F

    img = F.center_crop(F.resize(img, [size], antialias=True), [size, size])
    if in_chans == 1:
        img = F.rgb_to_grayscale(img)
    elif in_chans != 3:
        img = img.mean(0, keepdim=True).expand(in_chans, -1, -1)
    return img.clamp(0, 1)


def checkpoint_shape(path: str | Path, loaded: Optional[Dict[str, Any]] = None
                     ) -> Tuple[int, int, Dict[str, Tensor]]:
    """(in_chans, num_classes, state_dict) of a checkpoint of ours (``res2net train``) or a bare state_dict;
    ``loaded``: the file's contents when already read."""
    from ..engine import load_checkpoint, model_state

    state = model_state(loaded if loaded is not None else load_checkpoint(path))
    conv = next((v for k, v in state.items() if k.startswith("conv1") and k.endswith("weight") and v.ndim == 4),
                None)
    fc = state.get("fc.weight")
    if conv is None or fc is None:
        raise CheckpointError(f"checkpoint {path} has no conv1/fc weights: not a ResNet-style classifier")
    return int(conv.shape[1]), int(fc.shape[0]), state


def preprocessing(name: str, checkpoint: Optional[str | Path] = None, loaded: Optional[Dict[str, Any]] = None
                  ) -> Tuple[int, Tuple[float, ...], Tuple[float, ...]]:
    """(input size, mean, std) the model expects: those its training run used, read from the config that
    ``res2net train`` saves in its checkpoints (Fashion-MNIST: 28 px with the data set's statistics), else the
    model card's. ``loaded``: the checkpoint's contents when already read."""
    from ..engine import load_checkpoint
    from ..tasks.classification import dataset_preprocessing

    if loaded is None and checkpoint is not None:
        loaded = load_checkpoint(checkpoint)
    config = loaded.get("config") if loaded is not None else None
    data = config.get("data", {}) if isinstance(config, dict) else {}
    return dataset_preprocessing(data.get("dataset", ""), name, data.get("input_size"))


def build_model(name: str, checkpoint: Optional[str | Path] = None, loaded: Optional[Dict[str, Any]] = None
                ) -> nn.Module:
    """A named model in eval mode: with ``checkpoint`` (its in_chans/classes are read from the file, or from
    ``loaded``, its contents when already read), else random weights."""
    from ..models import create_model

    if checkpoint is None:
        return create_model(name).eval()
    in_chans, num_classes, state = checkpoint_shape(checkpoint, loaded)
    model = create_model(name, in_chans=in_chans, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit {name}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def trained_model(name: str, checkpoint: Optional[str | Path] = None
                  ) -> Tuple[nn.Module, int, Tuple[float, ...], Tuple[float, ...]]:
    """:func:`build_model` and :func:`preprocessing` from one read of ``checkpoint``:
    (model, input size, mean, std)."""
    from ..engine import load_checkpoint

    loaded = load_checkpoint(checkpoint) if checkpoint is not None else None
    return (build_model(name, checkpoint, loaded), *preprocessing(name, checkpoint, loaded))
