"""Inference backends behind :func:`res2net.optimize`: eager PyTorch (the fused fast path), torch.compile
(inductor with freezing), onnxruntime and OpenVINO on the exported ONNX graph, and int8 post-training static
quantization calibrated on real images.

int8 is onnxruntime's post-training static quantization (``quantize_static``: QDQ, per-channel symmetric int8
weights, uint8 activations, MinMax ranges over the ``calibration`` batches, after ``quant_pre_process`` folds
BN), and both runtimes execute the same quantized ONNX file (OpenVINO reads QuantizeLinear/DequantizeLinear and
runs int8 convolution kernels). Chosen over OpenVINO's NNCF by measurement (docs/BENCHMARKS.md: on a trained
Fashion-MNIST res2net17_slim, QDQ lost 0.1 point of top-1 with 99.1% agreement in both runtimes; NNCF lost 1.9
points with fast bias correction, 0.15 with the full one, at 96.9% agreement).

Every backend is verified when it is built: against the eager model on a real photo
(:func:`res2net.onnxio.real_input`) with the export's scale-aware bound (fp32: ``1e-4 + 1e-5 x max|output|``;
bf16: ``5e-2 x max|output|``), and int8 by top-1 agreement with the eager model on the calibration batches.
A backend whose package is missing raises :class:`BackendNotInstalled` with one line naming the extra.
``backend="auto"`` times the installed backends for this model, input shape and dtype, keeps the fastest and
remembers the choice (in memory and in ``$RES2NET_CACHE`` or ``~/.cache/res2net``/backend_choice.json).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, Res2NetError
from .extras import MissingExtraError, require
from .files import atomic_write
from .hardware import bf16_native, detect

__all__ = ["AUTO", "BACKENDS", "DTYPES", "BackendNotInstalled", "RuntimeModel", "available_backends",
           "backend_supports", "build_backend", "choose_backend", "dtype_name", "export_onnx_for_runtime",
           "quantize_onnx", "top1_agreement"]

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
BF16_RTOL = 5e-2
CACHE_FILE = "backend_choice.json"
_CHOICES: Dict[str, str] = {}


class BackendNotInstalled(MissingExtraError):
    """A backend's package is not installed (the message names the backend and the extra to install)."""


def dtype_name(dtype: Union[torch.dtype, str]) -> str:
    """'fp32' | 'bf16' | 'int8' for ``torch.float32`` / ``torch.bfloat16`` / ``"int8"`` (names accepted too)."""
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
    """Whether ``backend`` runs ``dtype`` (it may still be missing: see :func:`available_backends`)."""
    return dtype_name(dtype) in SUPPORTED.get(backend, ())


def available_backends(dtype: Union[torch.dtype, str] = "fp32") -> List[str]:
    """The backends installed here that run ``dtype`` (inductor needs a C++ compiler; int8 on either runtime needs
    onnxruntime's quantizer)."""
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


class RuntimeModel(nn.Module):
    """What :func:`build_backend` returns for the onnxruntime and OpenVINO backends: a callable module taking
    a float32 ``(N, C, H, W)`` tensor and returning float32 output (a tensor, or a list for ``features_only``
    models), like :class:`res2net.fusion.OptimizedModel`. Inference only."""

    def __init__(self, backend: str, dtype: str, run: Callable[[np.ndarray], List[np.ndarray]],
                 input_shape: Tuple[int, int, int], features: bool) -> None:
        super().__init__()
        self.runtime_backend, self.dtype_name, self._run = backend, dtype, run
        self.input_shape, self.features = tuple(input_shape), features

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.runtime_backend} model was built for input (N, {shape}), got {tuple(x.shape)}")
        outs = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in
                self._run(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()))]
        return outs if self.features else outs[0]

    def train(self, mode: bool = True) -> "RuntimeModel":
        if mode:
            raise RuntimeError(f"a {self.runtime_backend} model is inference-only; train the original")
        return super().train(False)

    def extra_repr(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return f"backend={self.runtime_backend}, dtype={self.dtype_name}, input=(N, {shape})"


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
    from .onnxio import real_input

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


def calibration_batches(source: Union[str, Path], size: int, mean: Sequence[float], std: Sequence[float],
                        in_chans: int = 3, n_images: int = 256, batch_size: int = 32, seed: int = 0) -> List[Tensor]:
    """Real, preprocessed calibration batches: ``"fashion-mnist"`` (a seeded random ``n_images`` of its training
    split; the test split stays for evaluation) or a folder of image files (searched recursively; each resized
    and centre-cropped to ``size``). Normalised with ``mean``/``std`` like the model's input."""
    from .data import normalize, resize_batch

    if str(source).lower() in ("fashion-mnist", "fashion_mnist"):
        from .data import load_fashion_mnist

        train = load_fashion_mnist(download=False)["train"].subset(n_images, seed)
        images = train.images.float() / 255.0
        if in_chans != images.shape[1]:
            images = images.expand(-1, in_chans, -1, -1)
        images = resize_batch(images, size)
    else:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        from .data.samples import resize_center
        from .data import open_image

        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"--calibration {source}: not a folder of images, nor 'fashion-mnist'")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not files:
            raise ConfigError(f"--calibration {source}: no image files ({', '.join(IMG_EXTENSIONS[:4])} ...) in it")
        rng = np.random.default_rng(seed)
        picked = [files[i] for i in sorted(rng.permutation(len(files))[:n_images])]
        images = torch.stack([resize_center(torch.from_numpy(np.array(open_image(str(p), 3))).permute(2, 0, 1)
                                            .float() / 255.0, size, in_chans) for p in picked])
    x = normalize(images, mean, std)
    return [x[i:i + batch_size].contiguous() for i in range(0, x.shape[0], batch_size)]


# ------------------------------------------------------------------------------------------------ verification

def _outputs(out: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def verify_close(what: str, eager: nn.Module, candidate: Callable[[Tensor], Any], x: Tensor, dtype: str) -> float:
    """Max abs difference of ``candidate`` to ``eager`` on ``x``; ExportError above the export's scale-aware bound
    (fp32: 1e-4 + 1e-5 x max|output|; bf16: 5e-2 x max|output|)."""
    from .onnxio import check_outputs

    with torch.no_grad():
        ref = eager(x)
        got = [o.detach().float().numpy() for o in _outputs(candidate(x))]
    atol, rtol = (1e-4, 1e-5) if dtype == "fp32" else (1e-3, BF16_RTOL)
    return check_outputs(what, "real (skimage astronaut)", ref, got, atol, rtol)


def top1_agreement(eager: nn.Module, candidate: Callable[[Tensor], Any], batches: Sequence[Tensor]) -> float:
    """Share of images whose top-1 class (classifiers) agrees between ``candidate`` and ``eager``; for
    feature-map outputs, the share whose per-image cosine similarity to eager is >= 0.98."""
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


def _verify(what: str, eager: nn.Module, built: Callable[[Tensor], Any], dtype: str, real: Tensor,
            calibration: Sequence[Tensor], min_agreement: float) -> Dict[str, float]:
    if dtype == "int8":
        agreement = top1_agreement(eager, built, calibration)
        if agreement < min_agreement:
            from .onnxio import ExportError

            raise ExportError(f"{what} int8 model agrees with eager fp32 on {agreement:.1%} of the calibration "
                              f"images' top-1 (< {min_agreement:.0%})")
        return {"top1_agreement": agreement}
    return {"max_abs_diff": verify_close(what, eager, built, real, dtype)}


# ------------------------------------------------------------------------------------------- ONNX and int8

def export_onnx_for_runtime(model: nn.Module, path: Union[str, Path], shape: Tuple[int, int, int]) -> Path:
    """Write ``model`` as ONNX (torch's dynamo exporter, opset 18, dynamic batch) for a runtime backend."""
    for package in ("onnx", "onnxscript"):
        _require(package, "onnx export")
    from .onnxio import DEFAULT_OPSET, write_onnx

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
    # (measured: eager PyTorch interleaved with a spinning session ran ~10x slower on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


# throughput mode only for images of at least this many input values (3 x 128 x 128): one Res2Net-50 image at
# 224 px per request ran 1.07x fp32 / 1.08x bf16 against one latency-mode call at batch 16 (2 cores), also with
# eager PyTorch calls in between; for 28 px Fashion-MNIST images it was 1.5x alone but 0.55x fp32 / 0.86x bf16
# with eager PyTorch calls in between (docs/BENCHMARKS.md), so small images keep the latency-mode call
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


def openvino_runner(model_or_path: Any, dtype: str) -> Callable[[np.ndarray], List[np.ndarray]]:
    """An OpenVINO CPU model, inference precision f32 (fp32, int8) or bf16 (f32 where bf16 is not native), torch's
    thread count, compiled per input shape (static shapes compile to faster kernels than a dynamic batch). One
    image, one thread or small images: the latency hint, the batch in one call. Several large images (:data:`OPENVINO_STREAM_MIN_ELEMENTS`)
    on several threads: the throughput hint, min(threads, images) streams sharing the threads (one each when the
    batch is at least the thread count: no barriers inside a layer), each image its own request: 1.07x fp32 /
    1.08x bf16 over one latency-mode call at batch 16 for Res2Net-50 on 2 cores (docs/BENCHMARKS.md). Outputs in
    input order either way."""
    ov = _require("openvino", "openvino")
    core = ov.Core()
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
                     channels_last: bool = True) -> nn.Module:
    from .fusion import fuse

    built = fuse(model, torch.float32 if dtype == "fp32" else torch.bfloat16, compile=compile,
                            channels_last=channels_last)
    built.runtime_backend = "inductor" if inductor else "eager"
    if inductor:
        built.model = InductorFrozen(built.model)
    return built


class InductorFrozen(nn.Module):
    """``torch.compile`` (inductor) of an inference trunk with its weights frozen into constants, so that on the
    CPU every convolution runs oneDNN-packed with its ReLU / residual add fused. ``freezing`` is switched on
    while each call runs, where dynamo traces too: given as ``torch.compile(options={"freezing": True})`` it
    reached inductor alone, which then found the weights as graph inputs and froze nothing (torch 2.14: the
    convolutions ran unpacked, a fifth of them on the im2col path, 77 ms vs 49 ms for Res2Net-50 at batch 1)."""

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
                  workdir: Optional[Path] = None, compile: bool = False, channels_last: bool = True) -> nn.Module:
    """``model`` on one named backend (not "auto"), verified against eager (see the module docstring).

    ``calibration``: batches of input tensors (or (input, label) pairs), needed for int8. ``input_size``: the
    square input side the runtime is built for (default: the calibration's, else the model card's).
    ``preprocessing``: (mean, std) of the real verification photo (default: the model card's).
    ``workdir``: where the ONNX graph is written (a temporary folder by default; reused across backends).
    ``compile`` / ``channels_last``: options of the eager backend (see :func:`res2net.optimize`).
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
        built: nn.Module = _eager_fast_path(model, name, backend == "inductor", compile, channels_last)
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
        built = RuntimeModel(backend, name, run, shape0, features=not isinstance(sample_out, Tensor))
    for attr in ("feature_info", "default_cfg", "num_classes", "num_features", "out_indices"):
        if hasattr(model, attr):
            setattr(built, attr, getattr(model, attr))
    if verify:
        real = _real_batch(model, shape0, preprocessing)
        built.verification = _verify(what, eager, built, name, real, batches, min_agreement)  # type: ignore[assignment]
    return built.eval()


# -------------------------------------------------------------------------------------------------- auto

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
                   log: Callable[[str], None] = lambda s: None, **build_kw: Any) -> nn.Module:
    """``backend="auto"``: build every installed backend for ``dtype`` (inductor only when named in
    ``candidates``: its compile takes minutes on a small CPU), time ``rounds`` forwards of a ``batch_size`` batch
    each, interleaved, and return the fastest. The choice is cached per (architecture, input shape, dtype,
    machine) in memory and on disk, so the next call builds only the chosen backend."""
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
        _CHOICES[key] = cached
        built = build_backend(model, cached, name, **kw)
        built.backend_choice = {"backend": cached, "cached": True}  # type: ignore[assignment]
        return built
    names = [b for b in available_backends(name) if b in (candidates or [b for b in BACKENDS if b != "inductor"])]
    if not names:
        raise BackendNotInstalled(f"no installed backend runs {name}: {EXTRA}")
    built_all: Dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="res2net-auto-") as tmp:
        for b in names:
            try:
                built_all[b] = build_backend(model, b, name, workdir=Path(tmp), **kw)
            except Res2NetError as exc:
                log(f"auto: {b} skipped: {exc}")
    if not built_all:
        raise Res2NetError(f"auto: no backend could be built for {name}")
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
    chosen.backend_choice = {"backend": best, "cached": False,  # type: ignore[assignment]
                             "ms": {b: 1e3 * t for b, t in medians.items()}}
    return chosen
