"""Checkpoint files -> state dicts: the one reader (:func:`read_checkpoint`), the one unwrapper
(:func:`unwrap_state_dict`: wrapper keys, DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes), file
hashes (:func:`sha256_of`) and what a checkpoint says about itself (:func:`describe_checkpoint`).

Every ``.pth``/``.pt``/``.bin`` file is read with ``torch.load(..., weights_only=True)``; ``.safetensors`` files
with safetensors. Files are written through :mod:`res2net.files` (the one atomic writer), never here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import Tensor

from ..errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")
_PREFIXES = ("module.", "_orig_mod.")  # in this order: DDP around a compiled model saves module._orig_mod.


def sha256_of(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# numpy's array reconstruction: the only globals a detectron2 .pkl (a dict of numpy arrays) needs
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/strings/numbers and numpy arrays only: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _to_tensors(obj: Any) -> Any:
    """numpy arrays (and 0-d numpy scalars) -> tensors, recursively through dicts."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic)):
        return torch.from_numpy(np.array(obj, copy=True))
    return obj


def _load_failure(exc: BaseException) -> str:
    """The part of a loader's exception that says what is wrong with the file: for torch's weights-only
    unpickler the reason after its advice paragraph (``Unsupported global: GLOBAL os.system``), else the first
    line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        text = reason[0] if reason else text
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}"


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The one checkpoint reader: ``.safetensors`` through safetensors (never executes code), detectron2's
    ``.pkl`` through an unpickler that accepts numpy arrays only, anything else through
    ``torch.load(weights_only=True)``. A missing, empty, truncated or foreign file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device=str(map_location))
        elif path.suffix == ".pkl":
            with open(path, "rb") as f:
                obj = _to_tensors(_NumpyOnlyUnpickler(f, encoding="latin1").load())
        else:
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch/safetensors raise several types for truncated/corrupt/unsafe files
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (truncated, corrupt or not a "
                              f"weights-only PyTorch/safetensors file): {_load_failure(exc)}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a mapping")
    return dict(obj)


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, Tensor]:
    """The tensor mapping inside a checkpoint: a bare state_dict or one under ``state_dict``/``model``/
    ``model_state``/``module`` (ours: ``model``), with a DistributedDataParallel ``module.`` and a torch.compile
    ``_orig_mod.`` prefix stripped.

    Args:
        obj: a checkpoint as read by :func:`read_checkpoint` (or any mapping).
        source: how errors name it (usually the file).

    Returns:
        The bare state dict (names -> tensors).
    """
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise CheckpointError(f"{source} holds no state_dict (expected a mapping of names to tensors)")
    for prefix in _PREFIXES:  # DDP's module.{_orig_mod.}, torch.compile's _orig_mod.
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


# ---- what a checkpoint says about itself ---------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    """What a checkpoint file says about itself. ``meta`` (written by ``res2net train`` since this version:
    model name, classes, input channels, preprocessing) and ``config``/``task`` exist only in our checkpoints."""

    source: str
    state_dict: Dict[str, Tensor]
    meta: Dict[str, Any]
    config: Optional[Dict[str, Any]]
    task: Optional[str]

    @property
    def is_ours(self) -> bool:
        """Written by this package's training engine."""
        return self.config is not None

    @property
    def model_name(self) -> Optional[str]:
        return self.meta.get("model")

    @property
    def classes(self) -> Optional[List[str]]:
        return self.meta.get("classes")


def describe_checkpoint(checkpoint: Union[PathLike, Mapping[str, Any]], source: Optional[str] = None
                        ) -> CheckpointInfo:
    """Read (when given a path) and describe a checkpoint: ours, official, timm or torchvision layout."""
    if isinstance(checkpoint, Mapping):
        obj: Mapping[str, Any] = checkpoint
        source = source or "checkpoint"
    else:
        source = source or str(checkpoint)
        obj = read_checkpoint(checkpoint)
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    task = obj.get("task") if isinstance(obj.get("task"), str) else None
    return CheckpointInfo(source, unwrap_state_dict(obj, source), dict(meta), config, task)
