"""``res2net export``: ONNX (opset >= 17, checked with onnxruntime) and TorchScript (checked against eager).

Every export is written to a temporary file next to the target, verified, then renamed over it, so a failed
export never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .errors import Res2NetError

__all__ = ["FORMATS", "ExportError", "export_model", "real_input", "register", "verify_onnx", "verify_torchscript"]

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 17


class ExportError(Res2NetError):
    """An export failed or its output does not match the eager model."""


def real_input(size: int, mean: Optional[List[float]] = None, std: Optional[List[float]] = None) -> Tensor:
    """scikit-image's astronaut photo, resized to ``size`` x ``size`` and normalized: a (1, 3, size, size) batch."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1).float().div_(255)
    img = nn.functional.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=True)
    m = torch.tensor(mean or (0.485, 0.456, 0.406)).reshape(1, 3, 1, 1)
    s = torch.tensor(std or (0.229, 0.224, 0.225)).reshape(1, 3, 1, 1)
    return (img - m) / s


def _max_diff(a: Union[Tensor, List[Tensor]], b: List[np.ndarray]) -> float:
    ref = [a] if isinstance(a, Tensor) else list(a)
    if len(ref) != len(b):
        raise ExportError(f"exported model returns {len(b)} outputs, eager returns {len(ref)}")
    return max(float(np.abs(r.detach().numpy() - o).max()) for r, o in zip(ref, b))


def verify_onnx(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor], atol: float = 1e-4) -> Dict[str, float]:
    """Run the ONNX file in onnxruntime on each named input; max abs difference to eager per input."""
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
        diffs[key] = _max_diff(ref, sess.run(None, {name: x.numpy()}))
        if not diffs[key] <= atol:
            raise ExportError(f"ONNX output differs from eager on the {key} input: max abs diff {diffs[key]:.3g} "
                              f"> {atol}")
    return diffs


def verify_torchscript(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor],
                       atol: float = 1e-5) -> Dict[str, float]:
    """Load the TorchScript file and compare it with eager on each named input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation notice
        loaded = torch.jit.load(str(path), map_location="cpu")
    diffs: Dict[str, float] = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref, out = model(x), loaded(x)
        outs = [out] if isinstance(out, Tensor) else list(out)
        diffs[key] = _max_diff(ref, [o.numpy() for o in outs])
        if not diffs[key] <= atol:
            raise ExportError(f"TorchScript output differs from eager on the {key} input: max abs diff "
                              f"{diffs[key]:.3g} > {atol}")
    return diffs


def _write_onnx(model: nn.Module, x: Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset, dynamo=False,
                  do_constant_folding=True)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), **kwargs)


def export_model(model: nn.Module, out: Union[str, Path], fmt: str, input_size: int = 224,
                 dynamic_batch: bool = False, opset: int = MIN_OPSET, in_chans: int = 3,
                 mean: Optional[List[float]] = None, std: Optional[List[float]] = None) -> Dict[str, float]:
    """Export ``model`` (eval mode) to ``out`` as ``fmt`` ("onnx" or "torchscript"), verify it on a random and
    a real input (batch 2 as well when ``dynamic_batch``), and move it into place; returns the max abs diffs."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: directory {str(out.parent)!r} does not exist")
    model = model.eval()
    torch.manual_seed(0)
    sample = torch.randn(1, in_chans, input_size, input_size)
    inputs = {"random": sample}
    if in_chans == 3:
        inputs["real (skimage astronaut)"] = real_input(input_size, mean, std)
    if dynamic_batch:
        inputs["random batch 3"] = torch.randn(3, in_chans, input_size, input_size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            _write_onnx(model, sample, tmp, opset, dynamic_batch)
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


def _main(args: argparse.Namespace) -> int:
    from .models import create_model, get_spec

    spec = get_spec(args.name)
    model = create_model(args.name, pretrained=args.checkpoint or False, num_classes=args.num_classes)
    size = args.input_size or spec.input_size
    diffs = export_model(model, args.out, args.format, input_size=size, dynamic_batch=args.dynamic_batch,
                         opset=args.opset, mean=list(spec.mean), std=list(spec.std))
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
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--input-size", type=int, default=None, help="default: the model card's")
    p.add_argument("--num-classes", type=int, default=None, help="default: the model card's")
    p.set_defaults(func=_main)
