"""``res2net export``: ONNX (opset >= 17, checked with onnxruntime), OpenVINO IR (.xml + .bin, checked with
OpenVINO) and TorchScript (checked against eager); ONNX and OpenVINO also as int8 (``--int8 --calibration``:
post-training static quantization on real images by onnxruntime's quantizer, :mod:`res2net.inference.backends`:
a QDQ ONNX file, or its OpenVINO IR), checked by top-1 agreement with eager on the calibration images.

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

import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .extras import require
from .files import publish, scratch_folder, torch_bytes
from .inference.onnx import (DEFAULT_OPSET, EXPORTERS, MIN_OPSET, MIN_OPSET_DYNAMO, ExportError, check_outputs,
                             real_input, write_onnx)

__all__ = ["EXPORTERS", "FORMATS", "ExportError", "export_model", "real_input", "verify_onnx",
           "verify_openvino", "verify_torchscript", "write_onnx"]

FORMATS = ("onnx", "openvino", "torchscript")
INT8_FORMATS = ("onnx", "openvino")


def max_opset() -> int:
    """The newest ONNX opset the installed ``onnx`` package knows."""
    return int(require("onnx", "export").defs.onnx_opset_version())


def verify_onnx(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor], atol: float = 1e-4,
                rtol: float = 1e-5, expected_opset: Optional[int] = None) -> Dict[str, float]:
    """Run the ONNX file in onnxruntime on each named input; max abs difference to eager per input (an error
    above ``atol + rtol * max|eager output|``); with ``expected_opset``, a file of another opset is an error."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")

    proto = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ExportError(f"{path}: ONNX opset {opset} < {MIN_OPSET}")
    if expected_opset is not None and opset != expected_opset:
        raise ExportError(f"opset {expected_opset} was asked for, but the exporter wrote opset {opset}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    diffs: Dict[str, float] = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref = model(x)
        diffs[key] = check_outputs("ONNX", key, ref, sess.run(None, {name: x.numpy()}), atol, rtol)
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
        diffs[key] = check_outputs("TorchScript", key, ref, [o.numpy() for o in outs], atol, rtol)
    return diffs


def verify_openvino(path: Union[str, Path], model: nn.Module, inputs: Dict[str, Tensor], atol: float = 1e-4,
                    rtol: float = 1e-5) -> Dict[str, float]:
    """Compile the OpenVINO IR (``.xml`` with its ``.bin``) for the CPU (f32 precision) and compare it with eager
    on each named input (max abs difference per input; an error above ``atol + rtol * max|eager output|``)."""
    from .inference.backends import openvino_runner

    run = openvino_runner(path, "fp32")
    diffs: Dict[str, float] = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref = model(x)
        diffs[key] = check_outputs("OpenVINO", key, ref, run(x.numpy()), atol, rtol)
    return diffs


def _verify_int8(what: str, run: Any, model: nn.Module, calibration: Sequence[Tensor]) -> Dict[str, float]:
    from .inference.backends import MIN_INT8_AGREEMENT, RuntimeRunner
    from .inference.onnx import top1_agreement

    shape = tuple(calibration[0].shape[1:])
    with torch.no_grad():
        features = not isinstance(model(calibration[0][:1]), Tensor)
    agreement = top1_agreement(model, RuntimeRunner(what, run, shape, features), calibration)
    if agreement < MIN_INT8_AGREEMENT:
        raise ExportError(f"{what} int8 model agrees with eager fp32 on {agreement:.1%} of the calibration images' "
                          f"top-1 (< {MIN_INT8_AGREEMENT:.0%})")
    return {"top-1 agreement on the calibration images": agreement}


def export_model(model: nn.Module, out: Union[str, Path], fmt: str, input_size: int = 224,
                 dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, in_chans: int = 3,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 exporter: str = "dynamo", int8: bool = False,
                 calibration: Optional[Sequence[Tensor]] = None) -> Dict[str, float]:
    """Export ``model`` (eval mode) to ``out`` as ``fmt`` ("onnx", "openvino" or "torchscript"), verify it on a
    random and a real input (batch 3 as well when ``dynamic_batch``), and move it into place; returns the max abs
    diffs. ``exporter`` picks torch's ONNX exporter ("dynamo", opset >= 18, or the older "torchscript").
    OpenVINO writes ``out`` (.xml) and the .bin beside it. ``int8`` (onnx, openvino) quantizes with the real
    input ``calibration`` batches and verifies by top-1 agreement with eager on them."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if fmt in ("onnx", "openvino") and opset > max_opset():
        raise ValueError(f"opset {opset}: the installed onnx writes opsets {MIN_OPSET}..{max_opset()}")
    if fmt in ("onnx", "openvino") and exporter == "dynamo" and opset < MIN_OPSET_DYNAMO:
        raise ValueError(f"opset {opset}: the dynamo exporter writes opset >= {MIN_OPSET_DYNAMO}; "
                         f"use exporter='torchscript' (--exporter torchscript) for opset {opset}")
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    if int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"--int8 applies to --format {' or '.join(INT8_FORMATS)}, not {fmt}")
    if int8 and not calibration:
        raise ValueError("--int8 needs --calibration (a folder of images of the task, or fashion-mnist)")
    out = Path(out)
    if fmt == "openvino" and out.suffix != ".xml":
        raise ValueError(f"--out {out}: an OpenVINO IR is written as NAME.xml (with NAME.bin beside it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: directory {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the file to write (e.g. {out / 'model'}.{fmt})")
    model = model.eval()
    torch.manual_seed(0)
    sample = torch.randn(1, in_chans, input_size, input_size)
    inputs = {"random": sample, "real (skimage astronaut)": real_input(input_size, mean, std, in_chans)}
    if dynamic_batch:
        inputs["random batch 3"] = torch.randn(3, in_chans, input_size, input_size)
    with scratch_folder(out) as tmp_dir:
        tmp = tmp_dir / out.name
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript deprecation notices
                tmp.write_bytes(torch_bytes(torch.jit.script(model)))
                diffs = verify_torchscript(tmp, model, inputs)
            written = [tmp]
        elif fmt == "onnx":
            fp32 = tmp_dir / "fp32.onnx" if int8 else tmp
            write_onnx(model, sample, fp32, opset, dynamic_batch or int8, exporter)
            if int8:
                from .inference.backends import onnxruntime_runner, quantize_onnx

                quantize_onnx(fp32, tmp, list(calibration or []))
                diffs = _verify_int8("ONNX (onnxruntime)", onnxruntime_runner(tmp), model, list(calibration or []))
            else:
                diffs = verify_onnx(tmp, model, inputs, expected_opset=opset)
            written = [tmp]
        else:
            diffs = _write_openvino(model, sample, tmp, opset, exporter, inputs, calibration if int8 else None)
            written = [tmp.with_suffix(".bin"), tmp]  # the .bin first: an .xml never points at a missing .bin
        for path in written:
            publish(path, out.with_suffix(path.suffix) if fmt == "openvino" else out)
    return diffs


def _write_openvino(model: nn.Module, sample: Tensor, xml: Path, opset: int, exporter: str,
                    inputs: Dict[str, Tensor], calibration: Optional[Sequence[Tensor]]) -> Dict[str, float]:
    """The OpenVINO IR of ``model`` at ``xml`` (+ .bin), through ONNX (dynamic batch); int8: the IR of
    onnxruntime's QDQ quantization (OpenVINO turns the Q/DQ pairs into FakeQuantize and runs int8 kernels)."""
    from .inference.backends import _require, openvino_runner, quantize_onnx

    ov = _require("openvino", "openvino")
    onnx_path = xml.with_name("model.onnx")
    write_onnx(model, sample, onnx_path, opset, True, exporter)
    if calibration:
        onnx_path = quantize_onnx(onnx_path, xml.with_name("model.int8.onnx"), list(calibration))
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    for leftover in xml.parent.glob("model*.onnx"):
        leftover.unlink()
    if calibration:
        return _verify_int8("OpenVINO", openvino_runner(xml, "int8"), model, list(calibration))
    return verify_openvino(xml, model, inputs)


def model_for_export(name: str, checkpoint: Optional[str] = None, num_classes: Optional[int] = None
                     ) -> Tuple[nn.Module, int, Tuple[float, ...], Tuple[float, ...]]:
    """The model to export and its input: :func:`res2net.weights.load_model` of ``checkpoint`` (a checkpoint of
    ``res2net train`` brings its own input channels, classes and preprocessing, e.g. Fashion-MNIST: 1 channel,
    28 px, the set's statistics, and refuses another ``num_classes``; official, timm or torchvision weights load
    into the model card's shape), or random weights with the card's preprocessing.

    Args:
        name: the zoo model.
        checkpoint: its weights; None: random weights.
        num_classes: classifier outputs (default: the weights', else the card's).

    Returns:
        (model in eval mode, input size, mean, std).
    """
    from .models import build_model
    from .weights import load_model, preprocessing_of

    if checkpoint is None:
        model = build_model(name, num_classes=num_classes)
    else:
        model = load_model(checkpoint, name, num_classes=num_classes, keep_trained_head=True)
    prep = preprocessing_of(model.eval(), name)
    return model, prep.input_size, prep.mean, prep.std
