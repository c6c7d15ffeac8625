"""``backend="auto"``: the installed backends built and timed for this model, input shape and dtype, the
fastest kept, and the choice remembered in memory and on disk (``$RES2NET_CACHE`` or
``~/.cache/res2net``/backend_choice.json), keyed by architecture, input shape, dtype and machine."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import Res2NetError
from ..files import atomic_write
from ..hardware import detect
from .backends import (BACKENDS, EXTRA, BackendNotInstalled, _threads, available_backends, build_backend,
                       dtype_name, model_input_shape)
from .base import OptimizedModel

__all__ = ["CACHE_FILE", "choose_backend"]

CACHE_FILE = "backend_choice.json"
_CHOICES: Dict[str, str] = {}


def _machine_key() -> str:
    """The CPU, its effective class (an emulated AVX2 run keeps its own choices), threads and torch."""
    cpu = detect().cpu
    return f"{cpu.name}|{cpu.isa}|threads={_threads()}|torch={torch.__version__}"


def _arch_hash(model: nn.Module) -> str:
    """The model's class and parameter/buffer names and shapes (not values): same architecture, same hash."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for key, value in model.state_dict().items():
        digest.update(f"{key}:{tuple(value.shape)};".encode())
    return digest.hexdigest()[:16]


def _cache_path() -> Path:
    root = os.environ.get("RES2NET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "res2net")
    return Path(root) / CACHE_FILE


def _load_cache() -> Dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_cache(key: str, entry: Dict[str, Any]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache()
        data[key] = entry
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))
    except OSError as exc:  # a read-only home: the in-memory cache still holds the choice
        warnings.warn(f"backend choice not cached in {path}: {exc}", RuntimeWarning, stacklevel=3)


def choose_backend(model: nn.Module, dtype: Union[torch.dtype, str] = torch.float32,
                   calibration: Optional[Iterable[Any]] = None, input_size: Optional[int] = None,
                   batch_size: int = 1, rounds: int = 5, candidates: Optional[Sequence[str]] = None,
                   log: Callable[[str], None] = lambda s: None, **build_kw: Any) -> OptimizedModel:
    """``backend="auto"``: build every installed backend for ``dtype`` (inductor only when named in
    ``candidates``: its compile takes minutes on a small CPU), time ``rounds`` forwards of a ``batch_size`` batch
    each, interleaved, and return the fastest. The choice is cached per (architecture, input shape, dtype,
    machine) in memory and on disk, so the next call builds only the chosen backend.

    Args:
        model: the eager model (not modified).
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``"int8"`` (names accepted: :func:`dtype_name`).
        calibration: input batches (or (input, label) pairs) of real images; needed for int8.
        input_size: the square input side (default: the calibration's, else the model card's).
        batch_size: the batch timed (and part of the cache key).
        rounds: timed forwards per backend.
        candidates: the backends to time (default: every installed one but inductor).
        log: receives one line per skipped backend and the timings.
        **build_kw: passed to :func:`~res2net.inference.backends.build_backend`.

    Returns:
        the fastest backend's :class:`~res2net.inference.base.OptimizedModel`, its ``backend_choice`` set
        (``{"backend", "cached"}``, plus ``"ms"`` per backend when timed now).
    """
    name = dtype_name(dtype)
    shape = model_input_shape(model, input_size)
    if input_size is None and isinstance(calibration, (list, tuple)) and calibration:
        x0 = calibration[0][0] if isinstance(calibration[0], (tuple, list)) else calibration[0]
        shape = (shape[0], int(x0.shape[-2]), int(x0.shape[-1]))
    key = f"{_arch_hash(model)}|{batch_size}x{shape[0]}x{shape[1]}x{shape[2]}|{name}|{_machine_key()}"
    calibration = list(calibration) if calibration is not None else None
    cached = _CHOICES.get(key) or (_load_cache().get(key) or {}).get("backend")
    kw = dict(calibration=calibration, input_size=shape[1], **build_kw)
    if cached in available_backends(name):
        try:
            built = build_backend(model, cached, name, **kw)
        except Res2NetError as exc:  # the remembered choice cannot be built now: search again, naming every reason
            log(f"auto: the cached choice {cached} failed ({exc}); trying every backend")
            _CHOICES.pop(key, None)
        else:
            _CHOICES[key] = cached
            built.backend_choice = {"backend": cached, "cached": True}
            return built
    names = [b for b in available_backends(name) if b in (candidates or [b for b in BACKENDS if b != "inductor"])]
    if not names:
        raise BackendNotInstalled(f"no installed backend runs {name}: {EXTRA}")
    built_all: Dict[str, OptimizedModel] = {}
    reasons: List[str] = []
    with tempfile.TemporaryDirectory(prefix="res2net-auto-") as tmp:
        for b in names:
            try:
                built_all[b] = build_backend(model, b, name, workdir=Path(tmp), **kw)
            except Res2NetError as exc:
                log(f"auto: {b} skipped: {exc}")
                reasons.append(f"{b}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if not built_all:
        raise Res2NetError(f"auto: no backend could be built for {name} ({'; '.join(reasons)})")
    x = torch.randn(batch_size, *shape)
    times: Dict[str, List[float]] = {b: [] for b in built_all}
    for b, m in built_all.items():
        m(x)  # warm-up
    for _ in range(rounds):
        for b, m in built_all.items():
            t0 = time.perf_counter()
            m(x)
            times[b].append(time.perf_counter() - t0)
    medians = {b: statistics.median(t) for b, t in times.items()}
    best = min(medians, key=medians.__getitem__)
    log("auto: " + ", ".join(f"{b} {1e3 * t:.2f} ms" for b, t in medians.items()) + f" -> {best}")
    _CHOICES[key] = best
    _store_cache(key, {"backend": best, "ms": {b: round(1e3 * t, 3) for b, t in medians.items()}})
    chosen = built_all[best]
    chosen.backend_choice = {"backend": best, "cached": False, "ms": {b: 1e3 * t for b, t in medians.items()}}
    return chosen
