"""Checkpoint loading: official / timm / torchvision key layouts, hash checks, strict loading with clear errors.

Every file is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .errors import CheckpointError

if TYPE_CHECKING:
    from .models.registry import ModelSpec

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")
_SCALE1_RENAMES = ((".conv2.", ".convs.0."), (".bn2.", ".bns.0."))


def sha256_of(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: Union[str, Path]) -> Any:
    """``torch.load`` with ``weights_only=True``; a missing, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (truncated, corrupt or not a "
                              f"weights-only PyTorch file): {type(exc).__name__}: {str(exc)[:200]}") from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, Tensor]:
    """The tensor mapping inside a checkpoint: accepts a bare state_dict or one under ``state_dict``/``model``,
    and strips a DistributedDataParallel ``module.`` prefix."""
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
    expected = set(model.state_dict())
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key
        if key not in expected:
            for old, repl in _SCALE1_RENAMES:
                candidate = key.replace(old, repl)
                if candidate in expected:
                    new = candidate
                    break
        out[new] = value
    return out


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
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def download_checkpoint(url: str, model_dir: Optional[str] = None) -> Dict[str, Tensor]:
    """Fetch ``url`` (``https://`` or ``file://``) through torch.hub's cache with the hash check of its file name
    (``name-<sha256 prefix>.pth``). A mismatching download is refused and never kept in the cache."""
    name = os.path.basename(url.split("?")[0])
    if not HASH_IN_NAME.search(name):
        warnings.warn(f"{name}: no '-<sha256 prefix>' in the file name, so the download is not hash-checked",
                      stacklevel=2)
    try:
        obj = torch.hub.load_state_dict_from_url(url, model_dir=model_dir, map_location="cpu", progress=True,
                                                 check_hash=True, weights_only=True)
    except RuntimeError as exc:
        if "invalid hash" in str(exc):
            raise CheckpointError(f"{url}: hash mismatch, the file was refused and removed ({exc})") from None
        raise CheckpointError(f"{url}: cannot be loaded: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"{url}: cannot be downloaded: {exc}") from None
    return unwrap_state_dict(obj, url)


def load_pretrained(model: nn.Module, spec: "ModelSpec", pretrained: Union[bool, str, Path]) -> None:
    """Load weights into a freshly built model: ``True`` = the official checkpoint of ``spec``; a path or a
    ``file://``/``https://`` URL = that file. A local file whose name carries a hash is checked too."""
    if pretrained is True:
        if not spec.url:
            raise CheckpointError(f"no official weights are published for {spec.name!r}; pass a checkpoint path "
                                  "as pretrained=PATH")
        source = spec.url
        state_dict = download_checkpoint(spec.url)
    elif isinstance(pretrained, (str, Path)):
        source = str(pretrained)
        if re.match(r"^(https?|file)://", source):
            state_dict = download_checkpoint(source)
        else:
            match = HASH_IN_NAME.search(os.path.basename(source))
            if match and Path(source).is_file() and not sha256_of(source).startswith(match.group(1)):
                raise CheckpointError(f"{source}: SHA-256 does not start with {match.group(1)} as its name says; "
                                      "refused (the file may be corrupt or not what its name claims)")
            state_dict = unwrap_state_dict(read_checkpoint(source), source)
    else:
        raise ValueError(f"pretrained must be True, False, a path or a URL, got {pretrained!r}")
    load_state_dict_strict(model, state_dict, source, allow_new_classifier=True)
