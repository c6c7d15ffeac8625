"""Inference backends behind :func:`res2net.inference.optimize`: eager PyTorch (the fused fast path,
:mod:`res2net.inference.fused`), torch.compile (inductor with freezing), onnxruntime and OpenVINO on the exported
ONNX graph, and int8 post-training static quantization calibrated on real images.

int8 is onnxruntime's post-training static quantization (``quantize_static``: QDQ, per-channel symmetric int8
weights, uint8 activations, MinMax ranges over the ``calibration`` batches, after ``quant_pre_process`` folds
BN), and both runtimes execute the same quantized ONNX file (OpenVINO reads QuantizeLinear/DequantizeLinear and
runs int8 convolution kernels). Chosen over OpenVINO's NNCF by measurement: docs/BENCHMARKS.md ("int8: one
quantizer, measured against NNCF").

Every backend is verified when it is built: against the eager model on a real photo
(:func:`res2net.inference.onnx.real_input`) with the export's scale-aware bound (fp32: ``1e-4 + 1e-5 x
max|output|``; bf16: ``5e-2 x max|output|``), and int8 by top-1 agreement with the eager model on the
calibration batches. A backend whose package is missing raises :class:`BackendNotInstalled` with one line naming
the extra. ``backend="auto"`` (timing the installed backends, cached): :mod:`res2net.inference.autotune`.
"""

from __future__ import annotations

import functools

import importlib
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..extras import MissingExtraError, require
from ..hardware import bf16_native, detect
from .base import OptimizedModel
from .fused import fuse
from .onnx import DEFAULT_OPSET, ExportError, real_input, top1_agreement, verify_close, write_onnx

__all__ = ["AUTO", "BACKENDS", "DTYPES", "BackendNotInstalled", "InductorFrozen", "RuntimeRunner",
           "available_backends", "backend_supports", "build_backend", "dtype_name", "export_onnx_for_runtime",
           "model_input_shape", "onnxruntime_runner", "openvino_runner", "quantize_onnx"]

BACKENDS = ("eager", "inductor", "onnxruntime", "openvino")
AUTO = "auto"
DTYPES = ("fp32", "bf16", "int8")
SUPPORTED: Dict[str, Tuple[str, ...]] = {"eager": ("fp32", "bf16"), "inductor": ("fp32", "bf16"),
                                         "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
# package -> (module to import, pip name); int8 on OpenVINO runs onnxruntime's quantized file
PACKAGES: Dict[str, Tuple[str, str]] = {"onnxruntime": ("onnxruntime", "onnxruntime"),
                                        "openvino": ("openvino", "openvino"), "onnx": ("onnx", "onnx"),
                                        "onnxscript": ("onnxscript", "onnxscript")}
EXTRA = "pip install 'res2net[deploy]'"
MIN_INT8_AGREEMENT = 0.9  # top-1 agreement of an int8 model with eager fp32 on its calibration images


class BackendNotInstalled(MissingExtraError):
    """A backend's package is not installed (the message names the backend and the extra to install)."""


def dtype_name(dtype: Union[torch.dtype, str]) -> str:
    """The name of a dtype :func:`~res2net.inference.optimize` takes.

    Args:
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``"int8"`` (names accepted too: "fp32", "float32", ...).

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"int8"``; ValueError for anything else.
    """
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", "int8": "int8", "fp32": "fp32", "bf16": "bf16",
             "float32": "fp32", "bfloat16": "bf16"}
    try:
        return names[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or 'int8', got {dtype!r}") from None


def _require(package: str, backend: str) -> Any:
    module, pip_name = PACKAGES[package]
    try:
        return require(module, "deploy")
    except MissingExtraError:
        raise BackendNotInstalled(f"backend {backend!r} needs {pip_name}, which is not installed: {EXTRA}") from None


def _installed(package: str) -> bool:
    try:
        importlib.import_module(PACKAGES[package][0])
        return True
    except ImportError:
        return False


def backend_supports(backend: str, dtype: Union[torch.dtype, str]) -> bool:
    """Whether ``backend`` runs ``dtype`` (it may still be missing: see :func:`available_backends`).

    Args:
        backend: a backend name (unknown names run nothing).
        dtype: a dtype or its name (:func:`dtype_name`).

    Returns:
        True when the backend has kernels for the dtype.
    """
    return dtype_name(dtype) in SUPPORTED.get(backend, ())


def available_backends(dtype: Union[torch.dtype, str] = "fp32") -> List[str]:
    """The backends installed here that run ``dtype`` (inductor needs a C++ compiler; int8 on either runtime needs
    onnxruntime's quantizer).

    Args:
        dtype: a dtype or its name (:func:`dtype_name`).

    Returns:
        the backend names, in :data:`BACKENDS` order.
    """
    name = dtype_name(dtype)
    found = []
    for backend in BACKENDS:
        if name not in SUPPORTED[backend]:
            continue
        if backend == "inductor" and not detect().compiler:
            continue
        needs = {"onnxruntime": ["onnxruntime", "onnx", "onnxscript"],
                 "openvino": ["openvino", "onnx", "onnxscript"] + (["onnxruntime"] if name == "int8" else [])
                 }.get(backend, [])
        if all(_installed(p) for p in needs):
            found.append(backend)
    return found


class RuntimeRunner(nn.Module):
    """An onnxruntime or OpenVINO model as a module (the :attr:`~res2net.inference.base.OptimizedModel.model` of
    those backends): takes a ``(N, C, H, W)`` tensor of the shape it was built for, runs it as float32 on the
    CPU and returns float32 output (a tensor, or a list for ``features_only`` models)."""

    def __init__(self, backend: str, run: Callable[[np.ndarray], List[np.ndarray]],
                 input_shape: Tuple[int, int, int], features: bool) -> None:
        super().__init__()
        self.backend, self._run = backend, run
        self.input_shape, self.features = tuple(input_shape), features

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.backend} model was built for input (N, {shape}), got {tuple(x.shape)}")
        outs = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in
                self._run(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()))]
        return outs if self.features else outs[0]

    def extra_repr(self) -> str:
        return f"{self.backend}, input=(N, {', '.join(map(str, self.input_shape))})"


# ---------------------------------------------------------------------------------------------- shapes, inputs

def model_input_shape(model: nn.Module, input_size: Optional[int] = None) -> Tuple[int, int, int]:
    """(channels, size, size): channels of the first convolution, size ``input_size`` or the model card's."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    chans = int(conv.in_channels) if conv is not None else 3
    cfg = getattr(model, "default_cfg", None) or {}
    card_size = cfg.get("input_size", 224)
    size = input_size or int(card_size[-1] if isinstance(card_size, (tuple, list)) else card_size)
    return chans, size, size


def _preprocessing(model: nn.Module, chans: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    cfg = getattr(model, "default_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != chans:  # e.g. a grey model built from a 3-channel card
        mean, std = (float(np.mean(mean)),) * chans, (float(np.mean(std)),) * chans
    return mean, std


def _real_batch(model: nn.Module, shape: Tuple[int, int, int],
                preprocessing: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> Tensor:
    mean, std = preprocessing or _preprocessing(model, shape[0])
    return real_input(shape[1], mean, std, shape[0])


def _as_batches(calibration: Optional[Iterable[Any]], shape: Tuple[int, int, int]) -> List[Tensor]:
    if calibration is None:
        return []
    batches = []
    for i, item in enumerate(calibration):
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ConfigError(f"calibration batch {i}: expected (N, {', '.join(map(str, shape))}), "
                              f"got {tuple(x.shape)}")
        batches.append(x.contiguous())
    if not batches:
        raise ConfigError("calibration: no batches")
    return batches


# ------------------------------------------------------------------------------------------------ verification

def _verify(what: str, eager: nn.Module, built: Callable[[Tensor], Any], dtype: str, real: Tensor,
            calibration: Sequence[Tensor], min_agreement: float) -> Dict[str, float]:
    if dtype == "int8":
        agreement = top1_agreement(eager, built, calibration)
        if agreement < min_agreement:
            raise ExportError(f"{what} int8 model agrees with eager fp32 on {agreement:.1%} of the calibration "
                              f"images' top-1 (< {min_agreement:.0%})")
        return {"top1_agreement": agreement}
    return {"max_abs_diff": verify_close(what, eager, built, real, dtype)}


# ------------------------------------------------------------------------------------------- ONNX and int8

def export_onnx_for_runtime(model: nn.Module, path: Union[str, Path], shape: Tuple[int, int, int]) -> Path:
    """Write ``model`` as ONNX (torch's dynamo exporter, opset 18, dynamic batch) for a runtime backend."""
    for package in ("onnx", "onnxscript"):
        _require(package, "onnx export")
    write_onnx(model, torch.zeros(1, *shape), Path(path), DEFAULT_OPSET, dynamic_batch=True, exporter="dynamo")
    return Path(path)


def quantize_onnx(onnx_path: Union[str, Path], out: Union[str, Path], calibration: Sequence[Tensor]) -> Path:
    """onnxruntime post-training static quantization: QDQ, per-channel symmetric int8 weights, uint8
    activations, MinMax ranges over the calibration batches (the graph is pre-processed first: shape inference,
    Conv+BN folding)."""
    _require("onnxruntime", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": x.numpy()} for x in calibration])

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self._it, None)

    out = Path(out)
    pre = out.with_name(out.stem + ".pre.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    return out


# -------------------------------------------------------------------------------------------- runners

def _threads() -> int:
    return max(1, torch.get_num_threads())


def onnxruntime_runner(path: Union[str, Path]) -> Callable[[np.ndarray], List[np.ndarray]]:
    """An onnxruntime CPU session of the file (all graph optimisations, torch's thread count)."""
    ort = _require("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # no busy-waiting between calls: spinning pool threads would steal the cores from whatever runs next
    # (measured: docs/BENCHMARKS.md, "The product's path")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


# throughput mode only for images of at least this many input values (3 x 128 x 128); small images keep the
# latency-mode call (measured: docs/BENCHMARKS.md, "OpenVINO batches in throughput mode")
OPENVINO_STREAM_MIN_ELEMENTS = 3 * 128 * 128


def _per_image_requests(model: Any, queue: Any, x: np.ndarray) -> List[np.ndarray]:
    """Each image of ``x`` one request on ``queue``'s parallel streams; outputs in input order."""
    parts: List[Any] = [None] * x.shape[0]

    def done(request: Any, index: int) -> None:
        parts[index] = [request.get_output_tensor(k).data.copy() for k in range(len(model.outputs))]

    queue.set_callback(done)
    for i in range(x.shape[0]):
        queue.start_async({0: x[i:i + 1]}, userdata=i)
    queue.wait_all()
    return [np.concatenate([p[k] for p in parts]) for k in range(len(model.outputs))]


@functools.lru_cache(maxsize=None)
def openvino_core() -> Any:
    """The process's one ``openvino.Core``: every model of the package (and of the tests and benchmarks) is
    compiled by it.

    One Core, not one per model, because each Core's CPU plugin (OpenVINO 2026.4) points the compiling thread's
    alternate signal stack (``sigaltstack``) at a buffer of its own and puts back the one it found when that
    Core is freed. Cores freed in another order than they were made leave the thread pointing at freed memory,
    and the next signal a Python handler takes on it (Ctrl-C, SIGTERM, the DataLoader's SIGCHLD when any child
    process exits) kills the process with SIGSEGV (tests/test_backends.py reproduces it). This was the test
    suite's intermittent worker crash."""
    return _require("openvino", "openvino").Core()


def openvino_runner(model_or_path: Any, dtype: str) -> Callable[[np.ndarray], List[np.ndarray]]:
    """An OpenVINO CPU model, inference precision f32 (fp32, int8) or bf16 (f32 where bf16 is not native), torch's
    thread count, compiled per input shape (static shapes compile to faster kernels than a dynamic batch). One
    image, one thread or small images: the latency hint, the batch in one call. Several large images
    (:data:`OPENVINO_STREAM_MIN_ELEMENTS`) on several threads: the throughput hint, min(threads, images) streams sharing the threads (one each when the
    batch is at least the thread count: no barriers inside a layer), each image its own request (measured:
    docs/BENCHMARKS.md, "OpenVINO batches in throughput mode"). Outputs in input order either way."""
    ov = _require("openvino", "openvino")
    core = openvino_core()
    base = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    threads = _threads()
    # bf16 only where the CPU runs it natively: OpenVINO itself falls back to f32 elsewhere, but under
    # ONEDNN_MAX_CPU_ISA its CPU plugin finds no kernel for some layers and refuses to compile
    native = dtype == "bf16" and bf16_native("cpu")
    precision = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if native else "f32"}
    compiled: Dict[Tuple[Tuple[int, ...], int], Tuple[Any, Any]] = {}

    def compile_for(shape: Tuple[int, ...], streams: int) -> Tuple[Any, Any]:
        """The model compiled for inputs of this shape, and its request queue (throughput mode only)."""
        if (shape, streams) not in compiled:
            m = base.clone()
            m.reshape({m.inputs[0].get_any_name(): list(shape)})
            hint = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else \
                {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
            model = core.compile_model(m, "CPU", {**precision, **hint})
            compiled[(shape, streams)] = (model, ov.AsyncInferQueue(model, streams) if streams > 1 else None)
        return compiled[(shape, streams)]

    def run(x: np.ndarray) -> List[np.ndarray]:
        streams = min(threads, x.shape[0])
        if streams > 1 and int(np.prod(x.shape[1:])) >= OPENVINO_STREAM_MIN_ELEMENTS:
            return _per_image_requests(*compile_for((1, *x.shape[1:]), streams), x)
        model, _ = compile_for(tuple(x.shape), 1)
        result = model(x)
        return [result[o] for o in model.outputs]

    return run


# ------------------------------------------------------------------------------------------------- build

def _eager_fast_path(model: nn.Module, dtype: str, inductor: bool, compile: bool = False,
                     channels_last: bool = True) -> OptimizedModel:
    built = fuse(model, torch.float32 if dtype == "fp32" else torch.bfloat16, compile=compile,
                 channels_last=channels_last)
    if inductor:
        built.backend = "inductor"
        built.model = InductorFrozen(built.model)
    return built


class InductorFrozen(nn.Module):
    """``torch.compile`` (inductor) of an inference trunk with its weights frozen into constants, so that on the
    CPU every convolution runs oneDNN-packed with its ReLU / residual add fused. ``freezing`` is switched on
    while each call runs, where dynamo traces too: given as ``torch.compile(options={"freezing": True})`` it
    reached inductor alone, which then found the weights as graph inputs and froze nothing (torch 2.14; measured:
    docs/BENCHMARKS.md, "The inductor backend was not frozen")."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(trunk)

    def forward(self, x: torch.Tensor) -> Any:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def build_backend(model: nn.Module, backend: str, dtype: Union[torch.dtype, str] = torch.float32,
                  calibration: Optional[Iterable[Any]] = None, input_size: Optional[int] = None,
                  verify: bool = True, min_agreement: float = MIN_INT8_AGREEMENT,
                  preprocessing: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                  workdir: Optional[Path] = None, compile: bool = False,
                  channels_last: bool = True) -> OptimizedModel:
    """``model`` on one named backend (not "auto"), verified against eager (see the module docstring).

    Args:
        model: the eager model (put in eval mode, otherwise not modified).
        backend: one of :data:`BACKENDS`.
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``"int8"`` (names accepted: :func:`dtype_name`).
        calibration: batches of input tensors (or (input, label) pairs), needed for int8.
        input_size: the square input side the runtime is built for (default: the calibration's, else the model
            card's).
        verify: check the result against eager at build time.
        min_agreement: int8: the least top-1 agreement with eager on the calibration batches.
        preprocessing: (mean, std) of the real verification photo (default: the model card's).
        workdir: where the ONNX graph is written (a temporary folder by default; reused across backends).
        compile: eager backend only: the fused trunk under ``torch.compile`` (see
            :func:`res2net.inference.optimize`).
        channels_last: eager backend only: NHWC weights and input.

    Returns:
        an eval-only :class:`~res2net.inference.base.OptimizedModel` (``verification`` set when verified).
    """
    name = dtype_name(dtype)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS + (AUTO,)}, got {backend!r}")
    if name not in SUPPORTED[backend]:
        runs = [b for b in BACKENDS if name in SUPPORTED[b]]
        raise ConfigError(f"backend {backend!r} does not run {name}; {name} runs on {', '.join(runs)}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    eager = model.eval()
    shape0 = model_input_shape(model, input_size)
    calibration = list(calibration) if calibration is not None else None
    first = calibration[0] if calibration else None
    if input_size is None and first is not None:
        x0 = first[0] if isinstance(first, (tuple, list)) else first
        shape0 = (shape0[0], int(x0.shape[-2]), int(x0.shape[-1]))
    batches = _as_batches(calibration, shape0)
    if name == "int8" and not batches:
        raise ConfigError("dtype int8 needs calibration: an iterable of real input batches (e.g. 256 training "
                          "images of the task)")
    what = f"{backend} ({name})"
    if backend == "inductor" and not available_backends(name).count("inductor"):
        raise BackendNotInstalled("backend 'inductor' needs a C++ compiler (c++/g++) on PATH")
    if backend in ("eager", "inductor"):
        built = _eager_fast_path(model, name, backend == "inductor", compile, channels_last)
    else:
        _require(backend, backend)
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="res2net-runtime-")
            workdir = Path(tmp.name)
        try:
            onnx_path = workdir / "model.onnx"
            if not onnx_path.exists():
                export_onnx_for_runtime(eager, onnx_path, shape0)
            path = quantize_onnx(onnx_path, workdir / "model.int8.onnx", batches) if name == "int8" else onnx_path
            run = onnxruntime_runner(path) if backend == "onnxruntime" else openvino_runner(path, name)
        finally:
            if tmp is not None:
                tmp.cleanup()
        with torch.no_grad():
            sample_out = eager(torch.zeros(1, *shape0))
        built = OptimizedModel(RuntimeRunner(backend, run, shape0, features=not isinstance(sample_out, Tensor)),
                               backend, name)
    for attr in ("feature_info", "default_cfg", "num_classes", "num_features", "out_indices"):
        if hasattr(model, attr):
            setattr(built, attr, getattr(model, attr))
    if verify:
        real = _real_batch(model, shape0, preprocessing)
        built.verification = _verify(what, eager, built, name, real, batches, min_agreement)
    return built.eval()
