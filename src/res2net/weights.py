"""Checkpoints -> models: the one reader (:func:`read_checkpoint`), the one unwrapper, strict loading that
names every missing/unexpected/mis-shaped key, the official weight source (hash-checked), and the one builder
every command calls (:func:`model_from_checkpoint`).

Every ``.pth``/``.pt``/``.bin`` file is read with ``torch.load(..., weights_only=True)``; ``.safetensors`` files
with safetensors. Imports flow down only: this module uses ``models`` and ``data``, never ``engine`` or ``tasks``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .data.preprocessing import Preprocessing, dataset_preprocessing
from .errors import CheckpointError
from . import layouts
from .models import registry

PathLike = Union[str, "os.PathLike[str]"]
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")


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
    ``model_state``/``module`` (ours: ``model``), with a DistributedDataParallel ``module.`` prefix stripped."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise CheckpointError(f"{source} holds no state_dict (expected a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def adapt_state_dict(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Rename torchvision/timm scale-1 keys (``conv2``/``bn2``) to this package's ``convs.0``/``bns.0`` where the
    model expects them; official Res2Net keys pass unchanged."""
    return layouts.rename_scale1_keys(state_dict, model.state_dict())


def to_our_layout(state_dict: Mapping[str, Tensor], name: str, model: Optional[nn.Module] = None
                  ) -> Dict[str, Tensor]:
    """``state_dict`` in our (= the official) key layout: converted from timm, torchvision, mmdetection,
    mmpretrain or detectron2 keys when :mod:`res2net.layouts` recognises them, as given otherwise (strict loading
    then names what does not fit). Official keys a layout leaves out because the forward never uses them (DLA's
    ``project`` shortcuts in timm) are taken from ``model``."""
    try:
        match = layouts.detect_layout(state_dict, name)
    except ValueError:  # a model no other framework has
        return dict(state_dict)
    if match.layout is None or (match.layout == "official" and not match.prefix):
        return dict(state_dict)
    converted = layouts.to_official(state_dict, name, match.layout)
    if model is not None:
        own = model.state_dict()
        for key in layouts.dropped_keys(name, match.layout):
            if key in own and not key.startswith("fc."):
                converted[key] = own[key]
    return converted


def load_state_dict_strict(model: nn.Module, state_dict: Dict[str, Tensor], source: str = "checkpoint",
                           allow_new_classifier: bool = False) -> None:
    """Load with ``strict=True`` semantics, but report every missing/unexpected key and shape mismatch by name.

    With ``allow_new_classifier``, a classifier (``fc``) whose shape differs from the checkpoint's, or that the
    model does not have (``num_classes=0``), is left at its initialisation and a warning says so.
    """
    state_dict = adapt_state_dict(state_dict, model)
    own = model.state_dict()
    if allow_new_classifier:
        fc_keys = [k for k in state_dict if k.startswith("fc.")]
        if fc_keys and any(k not in own or own[k].shape != state_dict[k].shape for k in fc_keys):
            warnings.warn(f"{source}: classifier 'fc' not loaded (checkpoint has "
                          f"{tuple(state_dict[fc_keys[0]].shape)}, model has "
                          f"{tuple(own[fc_keys[0]].shape) if fc_keys[0] in own else 'none'}); it keeps its "
                          "initialisation", stacklevel=3)
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
            state_dict.update({k: v for k, v in own.items() if k.startswith("fc.")})
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:10])}{more}")
        what = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


# ---- our checkpoints and the one checkpoint -> model builder ------------------------------------------------
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


def card_preprocessing(name: str) -> Preprocessing:
    """The model card's preprocessing (ImageNet statistics, 224 px and crop 0.875 for the ImageNet models)."""
    spec = registry.get_spec(name)
    return Preprocessing(spec.input_size, tuple(spec.mean), tuple(spec.std), spec.crop_pct, spec.interpolation)


def checkpoint_preprocessing(info: Optional[CheckpointInfo], name: str, in_chans: int = 3) -> Preprocessing:
    """The preprocessing a checkpoint's model expects: what its training run used (our checkpoints: saved in
    ``meta``, or derived from the saved data config), else the model card's."""
    if info is not None and "preprocessing" in info.meta:
        return Preprocessing.from_dict(info.meta["preprocessing"]).for_channels(in_chans)
    data = (info.config or {}).get("data", {}) if info is not None else {}
    data = data if isinstance(data, dict) else {}
    return dataset_preprocessing(str(data.get("dataset", "")), card_preprocessing(name),
                                 data.get("input_size")).for_channels(in_chans)


def state_dict_shape(state_dict: Mapping[str, Tensor], name: str) -> Tuple[int, int]:
    """(input channels, classes) of the weights of zoo model ``name`` (0 classes: no classifier in the file)."""
    with torch.device("meta"):
        reference = registry.create_model(name)
    first_conv = next(f"{n}.weight" for n, m in reference.named_modules() if isinstance(m, nn.Conv2d))
    conv = state_dict.get(first_conv)
    if conv is None or conv.ndim != 4:
        conv = next((v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 4), None)
    if conv is None:
        raise CheckpointError(f"the weights hold no convolution: not a {name} checkpoint")
    fc = state_dict.get("fc.weight")
    return int(conv.shape[1]), int(fc.shape[0]) if fc is not None else 0


class LoadedModel(NamedTuple):
    """What :func:`model_from_checkpoint` returns."""

    model: nn.Module  # in eval mode, on the CPU
    preprocessing: Preprocessing
    info: CheckpointInfo


def model_from_checkpoint(checkpoint: Union[PathLike, CheckpointInfo], name: Optional[str] = None, *,
                          num_classes: Optional[int] = None, **create_kwargs: Any) -> LoadedModel:
    """The one checkpoint -> model path: a zoo model shaped like the checkpoint (input channels and classes
    read from the weights; model name, class names and preprocessing from our checkpoints' ``meta``/config),
    loaded strictly (every missing/unexpected/mis-shaped key named, with the file).

    ``num_classes`` different from the checkpoint's: refused for our checkpoints (it was trained for its
    classes); for official/timm/torchvision weights the classifier is re-initialised with a warning.
    ``create_kwargs`` go to :func:`res2net.models.create_model` (e.g. ``features_only``).
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else describe_checkpoint(checkpoint)
    name = name or info.model_name
    if not name:
        raise CheckpointError(f"{info.source} does not say which model it holds; give the model name (--model)")
    spec = registry.get_spec(name)
    if info.model_name and registry.get_spec(info.model_name).name != spec.name:
        raise CheckpointError(f"{info.source} holds {info.model_name}, not {name}")
    in_chans, classes = state_dict_shape(to_our_layout(info.state_dict, spec.name), spec.name)
    new_head = num_classes is not None and num_classes != classes
    if new_head and info.is_ours:
        raise CheckpointError(f"{info.source} was trained with {classes} classes, not {num_classes}")
    model = registry.create_model(spec.name, num_classes=num_classes if new_head else classes, in_chans=in_chans,
                                  **create_kwargs)
    load_state_dict_strict(model, to_our_layout(info.state_dict, spec.name, model), info.source,
                           allow_new_classifier=new_head)
    return LoadedModel(model.eval(), checkpoint_preprocessing(info, spec.name, in_chans), info)
