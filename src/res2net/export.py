"""``res2net export``: ONNX (opset >= 17, checked with onnxruntime) and TorchScript (checked against eager).

ONNX is written by torch's ``torch.export``-based exporter (``exporter="dynamo"``, opset >= 18, the default)
or by the older TorchScript-based one (``exporter="torchscript"``, deprecated in torch, the only one that
writes opset 17).

Every export is written to a temporary file next to the target, verified, then renamed over it, so a failed
export never leaves a half-written file. Verification compares with eager on a random input, a real photo
and (with a dynamic batch) a batch of 3: the largest absolute difference must be within
``atol + rtol * max|eager output|``. The relative term matters for untrained models, whose logits reach the
thousands (float32 rounding then alone gives differences of ~1e-3; 5e-7 of the output's scale).
"""

from __future__ import annotations

import argparse
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .engine.args import positive_int
from .errors import Res2NetError

__all__ = ["EXPORTERS", "FORMATS", "ExportError", "export_model", "real_input", "register", "verify_onnx",
           "verify_torchscript"]

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) / the TorchScript-based exporter
MIN_OPSET = 17
MIN_OPSET_DYNAMO = 18  # torch's dynamo exporter writes opset 18 and up (it cannot convert down to 17)
DEFAULT_OPSET = 18


class ExportError(Res2NetError):
    """An export failed or its output does not match the eager model."""


def real_input(size: int, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               in_chans: int = 3) -> Tensor:
    """scikit-image's astronaut photo, resized and centre-cropped to ``size`` x ``size`` (grey when ``in_chans``
    is 1) and normalized: a (1, in_chans, size, size) batch."""
    from .analysis.common import resize_center, sample_images
    from .data import normalize

    img = resize_center(sample_images(["astronaut"])[0][1], size, in_chans)
    return normalize(img[None], mean or (0.485, 0.456, 0.406), std or (0.229, 0.224, 0.225))


def _check_outputs(what: str, key: str, eager: Union[Tensor, List[Tensor]], got: List[np.ndarray], atol: float,
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


def verify_onnx(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor], atol: float = 1e-4,
                rtol: float = 1e-5) -> Dict[str, float]:
    """Run the ONNX file in onnxruntime on each named input; max abs difference to eager per input (an error
    above ``atol + rtol * max|eager output|``)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ExportError(f"{path}: ONNX opset {opset} < {MIN_OPSET}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    diffs: Dict[str, float] = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref = model(x)
        diffs[key] = _check_outputs("ONNX", key, ref, sess.run(None, {name: x.numpy()}), atol, rtol)
    return diffs


def verify_torchscript(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor],
                       atol: float = 1e-5, rtol: float = 1e-6) -> Dict[str, float]:
    """Load the TorchScript file and compare it with eager on each named input (max abs difference per input;
    an error above ``atol + rtol * max|eager output|``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation notice
        loaded = torch.jit.load(str(path), map_location="cpu")
    diffs: Dict[str, float] = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref, out = model(x), loaded(x)
        outs = [out] if isinstance(out, Tensor) else list(out)
        diffs[key] = _check_outputs("TorchScript", key, ref, [o.numpy() for o in outs], atol, rtol)
    return diffs


def _write_onnx(model: nn.Module, x: Tensor, path: Path, opset: int, dynamic_batch: bool, exporter: str) -> None:
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


def export_model(model: nn.Module, out: Union[str, Path], fmt: str, input_size: int = 224,
                 dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, in_chans: int = 3,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 exporter: str = "dynamo") -> Dict[str, float]:
    """Export ``model`` (eval mode) to ``out`` as ``fmt`` ("onnx" or "torchscript"), verify it on a random and
    a real input (batch 3 as well when ``dynamic_batch``), and move it into place; returns the max abs diffs.
    ``exporter`` picks torch's ONNX exporter ("dynamo", opset >= 18, or the older "torchscript")."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if fmt == "onnx" and exporter == "dynamo" and opset < MIN_OPSET_DYNAMO:
        raise ValueError(f"opset {opset}: the dynamo exporter writes opset >= {MIN_OPSET_DYNAMO}; "
                         f"use exporter='torchscript' (--exporter torchscript) for opset {opset}")
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: directory {str(out.parent)!r} does not exist")
    model = model.eval()
    torch.manual_seed(0)
    sample = torch.randn(1, in_chans, input_size, input_size)
    inputs = {"random": sample, "real (skimage astronaut)": real_input(input_size, mean, std, in_chans)}
    if dynamic_batch:
        inputs["random batch 3"] = torch.randn(3, in_chans, input_size, input_size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            _write_onnx(model, sample, tmp, opset, dynamic_batch, exporter)
            diffs = verify_onnx(tmp, model, inputs)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript deprecation notices
                scripted = torch.jit.script(model)
                torch.jit.save(scripted, str(tmp))
                diffs = verify_torchscript(tmp, model, inputs)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return diffs


def model_for_export(name: str, checkpoint: Optional[str] = None, num_classes: Optional[int] = None
                     ) -> Tuple[nn.Module, int, Tuple[float, ...], Tuple[float, ...]]:
    """(model in eval mode, input size, mean, std). A checkpoint of ``res2net train`` brings its own input
    channels, classes and preprocessing (e.g. Fashion-MNIST: 1 channel, 28 px, the set's statistics); any
    other checkpoint (official, timm or torchvision layout) or none loads into the model card's shape."""
    from .analysis.common import build_model, preprocessing
    from .engine import load_checkpoint
    from .models import create_model, get_spec

    spec = get_spec(name)
    loaded = load_checkpoint(checkpoint) if checkpoint is not None else None
    if loaded is not None and isinstance(loaded.get("config"), dict):
        model = build_model(name, checkpoint, loaded)
        size, mean, std = preprocessing(name, checkpoint, loaded)
        classes = int(getattr(model, "num_classes", 0) or 0)
        if num_classes is not None and num_classes != classes:
            raise ValueError(f"--num-classes {num_classes}: checkpoint {checkpoint} was trained with {classes} "
                             "classes")
        return model, size, mean, std
    model = create_model(name, pretrained=checkpoint or False, num_classes=num_classes)
    return model.eval(), spec.input_size, tuple(spec.mean), tuple(spec.std)


def _main(args: argparse.Namespace) -> int:
    if args.format != "onnx":
        given = [flag for flag, value in (("--exporter", args.exporter), ("--opset", args.opset)) if value is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(f"{' and '.join(given)} {verb} to --format onnx only, not --format {args.format}")
    model, trained_size, mean, std = model_for_export(args.name, args.checkpoint, args.num_classes)
    size = args.input_size or trained_size
    in_chans = int(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels)
    diffs = export_model(model, args.out, args.format, input_size=size, dynamic_batch=args.dynamic_batch,
                         opset=DEFAULT_OPSET if args.opset is None else args.opset, in_chans=in_chans, mean=mean,
                         std=std, exporter=args.exporter or "dynamo")
    checks = ", ".join(f"{k}: max abs diff {v:.2e}" for k, v in diffs.items())
    print(f"wrote {args.out} ({args.format}, {args.name}, {size}x{size}); verified {checks}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net export``."""
    p = subparsers.add_parser("export", help="export a model to ONNX or TorchScript (verified)", description=__doc__)
    p.add_argument("name", help="model name (see `res2net models`)")
    p.add_argument("--checkpoint", default=None, help="weights file (default: random init)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path, help="output file")
    p.add_argument("--dynamic-batch", action="store_true", help="batch dimension left symbolic")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; >= {MIN_OPSET_DYNAMO} with the dynamo exporter, "
                        f">= {MIN_OPSET} with torchscript)")
    p.add_argument("--exporter", choices=EXPORTERS, default=None,
                   help="torch's ONNX exporter: dynamo (torch.export, default) or the deprecated torchscript one")
    p.add_argument("--input-size", type=positive_int, default=None, help="default: the model card's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="default: the model card's")
    p.set_defaults(func=_main)
