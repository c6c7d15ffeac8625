"""Atomic checkpoint files (temp file, fsync, rename) and tolerant loading (``weights_only=True``)."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError

PathLike = Union[str, os.PathLike]


def save_atomic(obj: Dict[str, Any], path: PathLike, keep_previous: bool = True) -> Path:
    """Write ``obj`` with :func:`torch.save` to ``path`` atomically: a temp file in the same folder, flushed
    and fsync'ed, then renamed over ``path``. With ``keep_previous`` the old file becomes ``<stem>.prev.pt``
    first, so a readable checkpoint exists at every moment. A failed write (e.g. a full disk) removes the
    temp file, leaves the previous checkpoint intact and raises :class:`CheckpointError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}; "
                              "the previous checkpoint is kept") from None
    return path


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_atomic` keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; a missing, truncated or corrupt file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong magic: all mean "unusable file"
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    return obj


def load_latest(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Optional[Dict[str, Any]]:
    """The newest usable checkpoint among ``path`` and its ``.prev`` copy, warning by file name about any
    unreadable one; None when neither exists."""
    found = False
    for candidate in (Path(path), previous_path(path)):
        if not candidate.exists():
            continue
        found = True
        try:
            return load_checkpoint(candidate, map_location)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; trying the previous one", stacklevel=2)
    if found:
        raise CheckpointError(f"no readable checkpoint at {path} or {previous_path(path)}")
    return None


def model_state(obj: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint (ours: ``obj["model"]``; a bare state_dict is accepted too)."""
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint holds no model state_dict under 'model'")
    return state


def rng_state() -> Dict[str, Any]:
    """Every RNG state that training touches, as ``weights_only``-safe tensors and containers."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        cuda: List[torch.Tensor] = state["cuda"]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
