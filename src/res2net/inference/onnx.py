"""Writing a model's ONNX graph and checking a converted model against eager: shared by ``res2net export`` and
the inference backends (:mod:`res2net.inference.backends`), below both.

The check compares with eager on named inputs (a random one, a real photo: :func:`real_input`): the largest
absolute difference must be within ``atol + rtol * max|eager output|``. The relative term matters for untrained
models, whose logits reach the thousands (float32 rounding alone then gives differences of ~1e-3).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import Res2NetError
from ..extras import require

EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) / the TorchScript-based exporter
MIN_OPSET = 17
MIN_OPSET_DYNAMO = 18  # torch's dynamo exporter writes opset 18 and up (it cannot convert down to 17)
DEFAULT_OPSET = 18
BF16_RTOL = 5e-2  # bf16 outputs: within 5e-2 x max|eager output| (plus 1e-3)


class ExportError(Res2NetError):
    """An export failed or its output does not match the eager model."""


def real_input(size: int, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               in_chans: int = 3) -> Tensor:
    """scikit-image's astronaut photo, resized and centre-cropped to ``size`` x ``size`` (grey when ``in_chans``
    is 1) and normalized (default: ImageNet statistics): a (1, in_chans, size, size) batch."""
    from ..data import normalize
    from ..data.photos import resize_center, sample_images
    from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

    img = resize_center(sample_images(["astronaut"], extra="export")[0][1], size, in_chans)
    return normalize(img[None], mean or IMAGENET_MEAN, std or IMAGENET_STD)


def check_outputs(what: str, key: str, eager: Union[Tensor, List[Tensor]], got: List[np.ndarray], atol: float,
                   rtol: float) -> float:
    """The max abs difference of ``got`` to ``eager``; ExportError when above ``atol + rtol * max|eager|``."""
    ref = [eager] if isinstance(eager, Tensor) else list(eager)
    if len(ref) != len(got):
        raise ExportError(f"{what} returns {len(got)} outputs, eager returns {len(ref)}")
    diff = max(float(np.abs(r.detach().numpy() - o).max()) for r, o in zip(ref, got))
    scale = max(float(r.detach().abs().max()) for r in ref)
    if not diff <= atol + rtol * scale:
        raise ExportError(f"{what} output differs from eager on the {key} input: max abs diff {diff:.3g} > "
                          f"{atol:g} + {rtol:g} x max|output| ({scale:.3g})")
    return diff


def _outputs(out: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def verify_close(what: str, eager: nn.Module, candidate: Callable[[Tensor], Any], x: Tensor, dtype: str) -> float:
    """Max abs difference of ``candidate`` to ``eager`` on ``x``; ExportError above the export's scale-aware bound
    (fp32: 1e-4 + 1e-5 x max|output|; bf16: 5e-2 x max|output|).

    Args:
        what: names the candidate in the error.
        eager: the reference model.
        candidate: the converted model (float output).
        x: the input batch (the real photo).
        dtype: ``"fp32"`` or ``"bf16"``: picks the bound.

    Returns:
        the largest absolute difference.
    """
    with torch.no_grad():
        ref = eager(x)
        got = [o.detach().float().numpy() for o in _outputs(candidate(x))]
    atol, rtol = (1e-4, 1e-5) if dtype == "fp32" else (1e-3, BF16_RTOL)
    return check_outputs(what, "real (skimage astronaut)", ref, got, atol, rtol)


def top1_agreement(eager: nn.Module, candidate: Callable[[Tensor], Any], batches: Sequence[Tensor]) -> float:
    """Share of images whose top-1 class (classifiers) agrees between ``candidate`` and ``eager``; for
    feature-map outputs, the share whose per-image cosine similarity to eager is >= 0.98.

    Args:
        eager: the reference model.
        candidate: the converted (e.g. int8) model.
        batches: input batches (e.g. the calibration images).

    Returns:
        the agreeing share of all images, in [0, 1].
    """
    agree = total = 0
    with torch.no_grad():
        for x in batches:
            ref, got = _outputs(eager(x)), _outputs(candidate(x))
            if len(ref) == 1 and ref[0].dim() == 2:
                agree += int((ref[0].argmax(1) == got[0].argmax(1)).sum())
            else:
                cos = torch.stack([nn.functional.cosine_similarity(r.flatten(1).float(), g.flatten(1).float(), dim=1)
                                   for r, g in zip(ref, got)]).min(0).values
                agree += int((cos >= 0.98).sum())
            total += x.shape[0]
    return agree / max(total, 1)


def write_onnx(model: nn.Module, x: Tensor, path: Path, opset: int, dynamic_batch: bool, exporter: str) -> None:
    """Write ``model``'s ONNX graph for input ``x`` to ``path`` with torch's ``exporter`` (needs
    ``res2net[export]``: onnx, and onnxscript for the dynamo exporter)."""
    require("onnx", "export")
    if exporter == "dynamo":
        require("onnxscript", "export")
    with torch.no_grad():
        sample_out = model(x)
    n_out = 1 if isinstance(sample_out, Tensor) else len(sample_out)
    output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    kwargs: Dict[str, Any] = dict(input_names=["input"], output_names=output_names, opset_version=opset)
    if exporter == "dynamo":
        if dynamic_batch:
            arg = next(iter(inspect.signature(model.forward).parameters))
            kwargs["dynamic_shapes"] = {arg: {0: torch.export.Dim("batch")}}
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, external_data=False, **kwargs)
        return
    if dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in ["input"] + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=True, **kwargs)
