"""``res2net convert``: move Res2Net weights between key layouts (official = ours, timm, torchvision, mmdet,
mmpretrain, detectron2), verified before anything is written.

The source layout and, without ``--model``, the model are detected from the keys and shapes
(:mod:`res2net.weights.layouts`). The converted tensors are written to a temporary file next to DST, read back, loaded
strictly into the target's reference model (ours for ``official``; timm's and torchvision's own models where they
are installed; the mmdet/mmpretrain/detectron2 key/shape sets derived from their source code otherwise), converted
back and compared bit for bit with the source; only then does ``os.replace`` put the file at DST. DST is never
overwritten by a file that failed any of these checks.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..models import build_model, get_spec
from ..models.registry import ModelSpec
from . import layouts
from ..files import atomic_write, check_destination, torch_bytes
from .io import read_checkpoint, unwrap_state_dict
from .load import load_state_dict_strict, value_problems

FORMATS = ("pth", "safetensors", "pkl")
FORMAT_SUFFIXES = {"pth": ".pth", "safetensors": ".safetensors", "pkl": ".pkl"}
PathLike = Union[str, "os.PathLike[str]"]

@dataclass
class ConvertReport:
    """What :func:`convert_checkpoint` did: model, layouts, tensors written, keys left out, how it verified."""

    src: str
    dst: str
    model: str
    source_layout: str
    target_layout: str
    fmt: str
    tensors: int
    prefix: str = ""
    candidates: List[str] = field(default_factory=list)  # other models with the same keys and shapes
    dropped: List[str] = field(default_factory=list)  # official keys the target layout has no place for
    absent: List[str] = field(default_factory=list)  # official keys the source did not hold
    verified_against: str = ""

    def lines(self) -> List[str]:
        """A short human-readable account (the CLI prints it)."""
        out = [f"{self.src}: {self.model} weights in the {self.source_layout} layout"
               + (f" (prefix {self.prefix!r} stripped)" if self.prefix else "")]
        if self.candidates:
            out.append(f"  same keys and shapes as: {', '.join(self.candidates)} (took {self.model}; "
                       "pass --model to choose)")
        if self.absent:
            out.append(f"  not in the source: {_summarise(self.absent)}")
        if self.dropped:
            out.append(f"  left out ({self.target_layout} has no place for them): {_summarise(self.dropped)}")
        out.append(f"  verified: {self.verified_against}; converting back gives bit-identical tensors")
        out.append(f"wrote {self.dst} ({self.target_layout} layout, {self.fmt}, {self.tensors} tensors)")
        if self.target_layout in layouts.LAYOUT_NOTES:
            out.append(f"  note: {layouts.LAYOUT_NOTES[self.target_layout]}")
        return out


def _summarise(keys: List[str]) -> str:
    heads = sorted({k.rsplit(".", 1)[0] for k in keys})
    shown = ", ".join(heads[:4]) + (f" ... (+{len(heads) - 4} more modules)" if len(heads) > 4 else "")
    return f"{len(keys)} keys ({shown})"


# ---- reading and writing --------------------------------------------------------------------------------------
def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The state dict of a ``.pth``/``.pt``/``.bin``, ``.safetensors`` or detectron2 ``.pkl`` file, read by the
    package's one checkpoint reader (:func:`res2net.weights.io.read_checkpoint`) and unwrapped."""
    return unwrap_state_dict(read_checkpoint(path), str(path))


def _write(state_dict: Dict[str, Tensor], path: Path, fmt: str, meta: Dict[str, str]) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save  # bytes, written by Python: a full disk is an OSError naming the file

        path.write_bytes(save({k: v.contiguous() for k, v in state_dict.items()}, metadata=meta))
    elif fmt == "pkl":  # detectron2's model-zoo format: numpy arrays under "model", "__author__" required
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state_dict.items()}, "__author__": "res2net convert",
                         "matching_heuristics": True}, f, protocol=4)
    else:
        path.write_bytes(torch_bytes(state_dict))


def _same_bits(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().reshape(-1).contiguous().view(torch.uint8),
                       b.detach().reshape(-1).contiguous().view(torch.uint8))


# ---- verification ---------------------------------------------------------------------------------------------
def _strict(model: torch.nn.Module, state_dict: Dict[str, Tensor], what: str) -> None:
    """The converted file into ``what`` through the package's one strict loader (every key that does not fit
    named)."""
    load_state_dict_strict(model, state_dict, "the converted file", what=what)


def _peer_model(layout: str, spec: ModelSpec, has_head: bool) -> Optional[Tuple[torch.nn.Module, str]]:
    """timm's or torchvision's own model of ``spec`` and its description (None when the package is missing)."""
    try:
        package = importlib.import_module(layout)
    except ImportError:
        return None
    if layout == "timm":
        model = package.create_model(spec.timm_name, pretrained=False, num_classes=1000 if has_head else 0)
        return model, f"timm {package.__version__} {spec.timm_name}"
    name = layouts.TORCHVISION_NAMES[spec.name]
    model = getattr(package.models, name)()
    if not has_head:
        model.fc = torch.nn.Identity()
    return model, f"torchvision {package.__version__} {name}"


def verify_layout(state_dict: Dict[str, Tensor], model_name: str, layout: str) -> str:
    """Load ``state_dict`` strictly into ``layout``'s reference model of ``model_name``; returns what it was.

    official: our model; timm / torchvision: their own models when installed; mmdet / mmpretrain /
    detectron2 (not installable here): the key/shape set derived from their source (tests/fixtures/layouts)."""
    spec = get_spec(model_name)
    has_head = any(k.startswith(("fc.", "head.fc.")) for k in state_dict)
    if layout == "official":
        model = build_model(spec.name, num_classes=None if has_head else 0)
        if spec.family == "dla" and layouts.dropped_keys(spec.name, "timm")[0] not in state_dict:
            model = layouts._build_trunk(spec, num_classes=spec.num_classes if has_head else 0,
                                         keep_unused_project=False)
            _strict(model, state_dict, f"our {spec.name} built without the unused project shortcuts")
            return f"our {spec.name} (strict, without the unused DLA project keys)"
        _strict(model, state_dict, f"our {spec.name}")
        return f"our {spec.name} (strict)"
    peer = _peer_model(layout, spec, has_head) if layout in ("timm", "torchvision") else None
    if peer is not None:
        model, what = peer
        _strict(model, state_dict, what)
        return f"{what} (strict)"
    expected = layouts.layout_shapes(spec.name, layout)
    score = layouts.detect_layout(state_dict, spec.name, (layout,)).scores[0]
    if not score.exact or score.prefix:
        raise CheckpointError(f"the converted file does not match the {layout} keys of {spec.name}: "
                              + score.describe())
    return f"the {layout} key/shape set of {spec.name} ({len(expected)} keys, from {layouts.LAYOUT_SOURCES[layout]})"


# ---- conversion -----------------------------------------------------------------------------------------------
def _pick_model(state_dict: Dict[str, Tensor], model: Optional[str]) -> Tuple[layouts.LayoutMatch, List[str]]:
    if model:
        match = layouts.detect_layout(state_dict, model)
        if match.layout is None:
            raise CheckpointError(match.describe())
        return match, []
    found = layouts.infer_model(state_dict)
    if not found:
        near = layouts.nearest_models(state_dict, n=3)
        raise CheckpointError("the keys fit no known layout of any convertible model; nearest: " + " | ".join(
            f"{m.model}: {m.scores[0].describe()}" for m in near) + "; pass --model NAME for a full report")
    return found[0], [m.model for m in found[1:]]


def convert_checkpoint(src: PathLike, dst: PathLike, to: str, model: Optional[str] = None,
                       fmt: Optional[str] = None, source_layout: Optional[str] = None,
                       overwrite: bool = False) -> ConvertReport:
    """Convert the weights in ``src`` to layout ``to`` and write them to ``dst`` (atomically, once verified).

    Args:
        src: ``.pth``/``.pt``/``.bin``, ``.safetensors`` or detectron2 ``.pkl``; wrappers (``state_dict``,
            ``model``, ``module.``, a detector's ``backbone.``) are taken off.
        dst: the file to write; its folder must exist. Replaced only after verification passed.
        to: one of :data:`res2net.weights.layouts.LAYOUTS`.
        model: the zoo name; inferred from the keys and shapes when None.
        fmt: ``pth``, ``safetensors`` or ``pkl`` (detectron2's numpy pickle); default from ``dst``'s suffix.
        source_layout: the source's layout; detected when None.
        overwrite: replace an existing ``dst`` (``dst`` may never be ``src`` itself).

    Returns:
        The :class:`ConvertReport`.
    """
    if to not in layouts.LAYOUTS:
        raise ValueError(f"--to must be one of {', '.join(layouts.LAYOUTS)}, got {to!r}")
    dst_path = Path(dst)
    implied = {".safetensors": "safetensors", ".pkl": "pkl"}.get(dst_path.suffix.lower(), "pth")
    if fmt not in (None, *FORMATS):
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt is not None and fmt != implied:
        raise ValueError(f"--format {fmt} disagrees with DST {dst_path.name!r}, which reads as {implied}; name "
                         f"DST {dst_path.with_suffix(FORMAT_SUFFIXES[fmt]).name!r} or drop --format")
    fmt = implied
    check_destination(dst_path, [src], overwrite=overwrite, what="DST")
    if not dst_path.parent.is_dir():
        raise ValueError(f"DST folder {str(dst_path.parent)!r} does not exist")
    if not os.access(dst_path.parent, os.W_OK):
        raise ValueError(f"DST folder {str(dst_path.parent)!r} is not writable")

    source = read_state_dict(src)
    if source_layout is not None:
        if model is None:
            raise ValueError("--from needs --model")
        match = layouts.detect_layout(source, model, (source_layout,))
        if match.layout is None:
            raise CheckpointError(match.describe())
        candidates: List[str] = []
    else:
        match, candidates = _pick_model(source, model)
    name = match.model
    official = layouts.to_official(source, name, match.layout)
    bad_values = [f"{len(items)} {label}: {', '.join(items[:5])}" for label, items in value_problems(
        official, [k for k in official if not k.endswith("num_batches_tracked")]) if items]
    if bad_values:
        raise CheckpointError(f"{src}: " + "; ".join(bad_values))
    converted = layouts.from_official(official, name, to)
    report = ConvertReport(src=str(src), dst=str(dst_path), model=name, source_layout=match.layout,
                           target_layout=to, fmt=fmt, tensors=len(converted), prefix=match.prefix,
                           candidates=candidates, dropped=[k for k in layouts.dropped_keys(name, to) if k in official],
                           absent=[k for k in layouts.official_shapes(name) if k not in official])

    # the temporary file keeps the format's suffix: the readers choose by suffix
    with atomic_write(dst_path, suffix=f".{fmt}") as tmp:
        _write(converted, tmp, fmt, {"layout": to, "model": name, "format": "pt"})
        written = read_state_dict(tmp)
        report.verified_against = verify_layout(written, name, to)
        back = layouts.to_official(written, name, to)
        bad = [k for k, v in official.items() if k not in report.dropped and
               (k not in back or not _same_bits(back[k], v))]
        if bad:
            raise CheckpointError(f"converting the written file back does not give the source tensors "
                                  f"({len(bad)} differ, e.g. {', '.join(bad[:3])}); {str(dst_path)!r} not written")
    return report


# ---- command line ---------------------------------------------------------------------------------------------
