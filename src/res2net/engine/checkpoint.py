"""Atomic checkpoint files (temp file, fsync, rename) and tolerant loading (``weights_only=True``)."""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_write
from ..weights.io import read_checkpoint as load_checkpoint  # the one checkpoint reader (weights_only / safetensors)

PathLike = Union[str, os.PathLike]


def save_atomic(obj: Dict[str, Any], path: PathLike, keep_previous: bool = True) -> Path:
    """Write ``obj`` with :func:`torch.save` to ``path`` atomically: a temp file in the same folder, flushed
    and fsync'ed, then renamed over ``path``. With ``keep_previous`` the old file becomes ``<stem>.prev.pt``
    first, so a readable checkpoint exists at every moment.

    Whatever interrupts the write (a full disk, which torch reports as an OSError or a RuntimeError, any other
    error, Ctrl-C) removes the temp file and leaves the previous checkpoint intact; errors become one
    :class:`CheckpointError` naming the file, the reason and the free space; a KeyboardInterrupt is re-raised
    with the same facts."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: cannot create its folder "
                              f"({exc.strerror or exc})") from None
    full = False
    try:
        with atomic_write(path, keep_previous=previous_path(path) if keep_previous else None) as tmp:
            try:
                with open(tmp, "wb") as f:
                    torch.save(obj, f)
            except BaseException:
                full = _nearly_full(path.parent)  # measured before the temp file goes: torch hides ENOSPC
                raise
    except BaseException as exc:
        kept = ("the previous checkpoint is kept" if path.exists() or previous_path(path).exists()
                else "no earlier checkpoint exists")
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted while writing checkpoint {path}; {kept}") from None
        if isinstance(exc, SystemExit):
            raise
        raise CheckpointError(f"could not write checkpoint {path}: {_write_failure(exc, full)}; "
                              f"{_free_space(path.parent)}; {kept}") from None
    return path


def _write_failure(exc: BaseException, disk_full: bool = False) -> str:
    """A one-line reason for a failed write. torch's zip writer reports a full disk as a RuntimeError
    ("unexpected pos ..."): with the disk (nearly) full at that moment it is named as such."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc).splitlines()[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"No space left on device ({reason})" if disk_full else reason


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free in ``folder``'s file system."""
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free in {folder}"


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_atomic` keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_latest(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Optional[Dict[str, Any]]:
    """The newest usable checkpoint among ``path`` and its ``.prev`` copy, warning by file name about an
    unreadable one; None when neither exists. Both present and unreadable: :class:`CheckpointError` naming
    both (nothing is written, so they stay for inspection)."""
    reasons: List[str] = []
    for candidate in (Path(path), previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointError as exc:
            reasons.append(str(exc))
            continue
        if reasons:
            warnings.warn(f"{reasons[0]}; using the previous one, {candidate}", stacklevel=2)
        return state
    if reasons:
        raise CheckpointError(f"no readable checkpoint: {Path(path)} and {previous_path(path)} are both "
                              f"unusable ({' | '.join(reasons)}); nothing was overwritten; move them away to "
                              "start afresh")
    return None


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
