"""What one bench run measures: the configuration, one result row per case, and the builders of the cases
(ours as created / optimized, the runtimes, timm, torchvision, training steps, probes), one small function each."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..extras import require
from ..weights.layouts import rename_scale1_keys

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": "int8"}
RUNTIMES = ("inductor", "onnxruntime", "openvino")
# the runtimes called directly, as their own documentation shows, on the same ONNX graph / model and threads
DIRECT_PEERS = ("onnxruntime-direct", "openvino-direct", "zentorch")
PEER = "resnet50"  # torchvision's


@dataclass
class BenchConfig:
    """What to measure. ``models``: zoo names; ``input_size`` None = each model card's size. ``runtimes``: the
    backends of :func:`res2net.optimize` timed beside eager (inductor compiles for minutes: opt in)."""

    models: Sequence[str] = ("res2net50_26w_4s",)
    batch_sizes: Sequence[int] = (16,)
    dtypes: Sequence[str] = ("fp32",)
    train: bool = False
    infer: bool = True
    peers: bool = True
    compile: bool = False
    grad_checkpointing: bool = False
    repeats: int = 3
    warmup: int = 1
    train_warmup: int = 5  # training steps reach their steady time only after a few (oneDNN, momentum, allocator)
    input_size: Optional[int] = None
    probe_size: int = 4096
    memory: bool = True
    device: str = "cpu"
    num_classes: Optional[int] = None
    runtimes: Sequence[str] = ()
    roofline: bool = True
    direct_peers: bool = False  # onnxruntime, OpenVINO and zentorch called directly (DIRECT_PEERS)


@dataclass
class Result:
    """One measured case: medians over the rounds, with derived rates and ratios."""

    model: str
    impl: str  # ours | ours-optimized | ours-ckpt | inductor | onnxruntime | openvino | timm | torchvision | probe
    #            | onnxruntime-direct | openvino-direct | zentorch (peers called directly)
    layout: str  # nchw | channels_last | "-" (runtimes and probes)
    dtype: str
    mode: str  # infer | train | probe | roofline
    batch: int
    input_size: int
    gflop_per_image: float
    times_s: List[float] = field(default_factory=list)
    ms_per_image: float = math.nan
    images_per_s: float = math.nan
    gflops: float = math.nan
    probe_share: float = math.nan  # of the same run's matmul probe in this dtype (a column, not the limit)
    roofline_share: float = math.nan  # of the attainable time at the network's own conv shapes
    peak_mem_mb: float = math.nan
    ratios: Dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Case:
    """A result row with the step that produces it and, where memory is measured, the objects to count."""

    result: Result
    step: Callable[[], None]
    track: Sequence[Any] = ()


@dataclass
class ModelSetup:
    """One zoo model prepared for the cases: our model, timm's with the same weights, FLOPs per image."""

    name: str
    size: int
    num_classes: int
    ours: nn.Module
    flops: float
    timm: Optional[nn.Module] = None
    torchvision: Optional[nn.Module] = None
    tv_flops: float = math.nan


def flops_per_image(model: nn.Module, size: int, in_chans: int = 3) -> float:
    """Forward FLOPs of one image: 2 x :func:`res2net.models.count_macs`."""
    from ..models import count_macs

    return 2.0 * count_macs(model, size, in_chans)


def to_timm_keys(state: Dict[str, torch.Tensor], timm_model: nn.Module) -> Dict[str, torch.Tensor]:
    """Our state dict in timm's key names (``convs.0``/``bns.0`` -> ``conv2``/``bn2`` where timm's model
    expects the renamed key)."""
    return rename_scale1_keys(state, timm_model.state_dict(), to_ours=False)


def timm_model(name: str, ours: nn.Module, num_classes: int) -> Optional[nn.Module]:
    """timm's model of the same name with our weights (None when timm lacks it or the keys differ)."""
    from ..models import get_spec

    timm_name = get_spec(name).timm_name
    if not timm_name:
        return None
    timm = require("timm", "bench")

    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(to_timm_keys(ours.state_dict(), model))
    except RuntimeError:
        return None
    return model


def setup_model(cfg: BenchConfig, name: str, device: torch.device, with_torchvision: bool) -> ModelSetup:
    """Our model (random weights, seeded), timm's copy and torchvision's resnet50 when peers are asked for."""
    import torchvision

    from ..models import build_model, get_spec

    spec = get_spec(name)
    size = cfg.input_size or spec.input_size
    n_cls = cfg.num_classes if cfg.num_classes is not None else spec.num_classes
    ours = build_model(name, num_classes=n_cls).to(device).eval()
    setup = ModelSetup(name, size, n_cls, ours, flops_per_image(ours, size))
    if cfg.peers:
        timm_m = timm_model(name, ours, n_cls)
        setup.timm = timm_m.to(device).eval() if timm_m is not None else None
        if with_torchvision:
            setup.torchvision = torchvision.models.resnet50(num_classes=n_cls).to(device).eval()
            setup.tv_flops = flops_per_image(setup.torchvision, size)
    return setup


def infer_step(model: Callable[[torch.Tensor], Any], x: torch.Tensor,
               autocast: Optional[torch.dtype]) -> Callable[[], None]:
    """One no-grad forward, under autocast when ``autocast`` is a dtype."""
    device = x.device

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast or torch.float32,
                                             enabled=autocast is not None):
            model(x)

    return step


def train_step(model: nn.Module, x: torch.Tensor, autocast: Optional[torch.dtype]) -> Tuple[Callable[[], None], Any]:
    """One SGD step (momentum 0.9, cross-entropy); returns the step and its optimizer (for memory tracking)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, 10, (x.shape[0],), device=x.device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


class _Rows:
    """Collects cases for one (model, dtype, batch): ``add`` makes the Result and the step."""

    def __init__(self, setup: ModelSetup, dtype: str, batch: int, device: torch.device) -> None:
        self.setup, self.dtype, self.batch = setup, dtype, batch
        self.x = torch.randn(batch, 3, setup.size, setup.size, device=device)
        self.xcl = self.x.contiguous(memory_format=torch.channels_last)
        self.amp = DTYPES[dtype] if dtype == "bf16" else None
        self.cases: List[Case] = []

    def add(self, impl: str, layout: str, mode: str, model: Any, inp: torch.Tensor,
            autocast: Optional[torch.dtype] = None, flops: Optional[float] = None, name: Optional[str] = None,
            note: str = "") -> None:
        res = Result(name or self.setup.name, impl, layout, self.dtype, mode, self.batch, self.setup.size,
                     (flops if flops is not None else self.setup.flops) / 1e9, note=note)
        if mode == "infer":
            self.cases.append(Case(res, infer_step(model, inp, autocast), [model]))
        else:
            step, opt = train_step(model, inp, autocast)
            self.cases.append(Case(res, step, [model, opt]))


def inference_cases(cfg: BenchConfig, rows: _Rows) -> None:
    """Ours as created (fp32) and optimized (eager), timm as shipped and channels_last, torchvision resnet50."""
    from ..inference import optimize

    s, dt = rows.setup, rows.dtype
    if dt == "fp32":
        rows.add("ours", "nchw", "infer", s.ours, rows.x)
    rows.add("ours-optimized", "channels_last", "infer", optimize(s.ours, dtype=DTYPES[dt]), rows.xcl)
    if cfg.compile:
        rows.add("ours-optimized-compiled", "channels_last", "infer", optimize(s.ours, dtype=DTYPES[dt], compile=True),
                 rows.xcl)
    if s.timm is not None:
        if dt == "fp32":
            rows.add("timm", "nchw", "infer", s.timm, rows.x)
        tcl = copy.deepcopy(s.timm).to(memory_format=torch.channels_last)
        rows.add("timm", "channels_last", "infer", tcl, rows.xcl, rows.amp)
        if cfg.compile:
            rows.add("timm-compiled", "channels_last", "infer", torch.compile(tcl), rows.xcl, rows.amp)
    if s.torchvision is not None:
        tvcl = copy.deepcopy(s.torchvision).to(memory_format=torch.channels_last)
        rows.add("torchvision", "channels_last", "infer", tvcl, rows.xcl, rows.amp, s.tv_flops, PEER)


def calibration_photos(size: int, batch: int = 8) -> List[torch.Tensor]:
    """A batch of real photos (scikit-image's samples, resized, ImageNet-normalised) to calibrate int8 rows."""
    from ..data import normalize
    from ..data.photos import resize_center, sample_images

    photos = torch.stack([resize_center(img, size) for _, img in sample_images()])
    photos = photos.repeat((batch + len(photos) - 1) // len(photos), 1, 1, 1)[:batch]
    return [normalize(photos, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]


def runtime_cases(cfg: BenchConfig, rows: _Rows, workdir: Any, log: Callable[[str], None]) -> None:
    """The same weights through :func:`res2net.optimize`'s other backends (fp32 input, the runtime's own
    layout); a backend that is not installed or does not run the dtype is skipped with a note."""
    from ..errors import Res2NetError
    from ..inference import available_backends, backend_supports, build_backend

    s, dt = rows.setup, rows.dtype
    for backend in cfg.runtimes:
        if not backend_supports(backend, dt):
            continue
        if backend not in available_backends(dt):
            log(f"note: {backend} ({dt}) skipped: not installed (pip install 'res2net[deploy]')")
            continue
        try:
            built = build_backend(s.ours, backend, dt, calibration=calibration_photos(s.size) if dt == "int8" else None,
                                  input_size=s.size, verify=dt != "int8", workdir=workdir)
        except Res2NetError as exc:
            log(f"note: {backend} ({dt}) skipped: {exc}")
            continue
        rows.add(backend, "-", "infer", built, rows.x, note="int8 calibrated on 8 photos" if dt == "int8" else "")


def _direct_openvino(onnx_path: Any, shape: Sequence[int], dtype: str) -> Callable[[torch.Tensor], Any]:
    """OpenVINO as its documentation shows: ``compile_model`` on the ONNX file reshaped to this input shape,
    default (latency) hint, its own thread count, one synchronous call per batch; bf16 through its precision
    hint, int8 on the QDQ file."""
    from ..inference.backends import openvino_core

    core = openvino_core()  # the process's one Core (why: its docstring); calling OpenVINO directly all the same
    model = core.read_model(str(onnx_path))
    model.reshape({model.inputs[0].get_any_name(): list(shape)})
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32"}
    compiled = core.compile_model(model, "CPU", config)
    return lambda x: compiled(x.numpy())


def _direct_onnxruntime(onnx_path: Any) -> Callable[[torch.Tensor], Any]:
    """onnxruntime as its documentation shows: an ``InferenceSession`` with default options (all graph
    optimisations, its own thread count)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def _zentorch(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """zentorch (AMD's ZenDNN plug-in for EPYC) as its documentation shows for CNN inference:
    ``torch.compile(model, backend="zentorch")`` on the channels_last fp32 model with inductor's freezing."""
    import torch._inductor.config as inductor_config
    import zentorch  # noqa: F401  (registers the backend)

    compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last).eval(), backend="zentorch")

    def run(x: torch.Tensor) -> Any:
        with inductor_config.patch(freezing=True):
            return compiled(x.contiguous(memory_format=torch.channels_last))

    return run


def direct_peer_cases(rows: _Rows, workdir: Any, log: Callable[[str], None]) -> None:
    """The runtimes a user could call instead of :func:`res2net.optimize` (:data:`DIRECT_PEERS`), on the same
    weights: onnxruntime and OpenVINO on our exported ONNX graph (int8: the same calibrated QDQ file), zentorch
    on the model; a missing package is skipped with a note."""
    from pathlib import Path

    from ..inference.backends import export_onnx_for_runtime, model_input_shape, quantize_onnx

    s, dt = rows.setup, rows.dtype
    onnx_path = Path(workdir) / "direct.onnx"
    try:
        if not onnx_path.exists():
            export_onnx_for_runtime(s.ours, onnx_path, model_input_shape(s.ours, s.size))
        if dt == "int8":
            q = Path(workdir) / "direct.int8.onnx"
            if not q.exists():
                quantize_onnx(onnx_path, q, calibration_photos(s.size))
            onnx_path = q
    except Exception as exc:  # noqa: BLE001  (the bench goes on without the direct rows)
        log(f"note: direct peers ({dt}) skipped: {type(exc).__name__}: {exc}")
        return
    builders = {"onnxruntime-direct": lambda: _direct_onnxruntime(onnx_path) if dt != "bf16" else None,
                "openvino-direct": lambda: _direct_openvino(onnx_path, tuple(rows.x.shape), dt),
                "zentorch": lambda: _zentorch(s.ours) if dt == "fp32" else None}
    for impl, build in builders.items():
        try:
            run = build()
        except (ImportError, RuntimeError) as exc:  # e.g. OpenVINO's bf16 hint under ONEDNN_MAX_CPU_ISA=AVX2
            log(f"note: {impl} ({dt}) skipped: {type(exc).__name__}: {' '.join(str(exc).split())[-160:]}")
            continue
        if run is not None:
            rows.add(impl, "-", "infer", run, rows.x, note="called directly")


def training_cases(cfg: BenchConfig, rows: _Rows) -> None:
    """An SGD step of ours (channels_last; compiled; with grad checkpointing), timm's and torchvision's."""
    import torchvision

    from ..models import build_model

    s, dt, xcl, amp = rows.setup, rows.dtype, rows.xcl, rows.amp
    device = xcl.device
    ours_t = build_model(s.name, num_classes=s.num_classes).to(device, memory_format=torch.channels_last)
    ours_t.load_state_dict(s.ours.state_dict())
    rows.add("ours", "channels_last", "train", ours_t.train(), xcl, amp)
    if cfg.compile:  # a separate copy: the compiled step keeps its own optimizer state
        rows.add("ours-compiled", "channels_last", "train", torch.compile(copy.deepcopy(ours_t)), xcl, amp)
    if cfg.grad_checkpointing:
        ck = build_model(s.name, num_classes=s.num_classes, grad_checkpointing=True)
        rows.add("ours-ckpt", "channels_last", "train", ck.to(device, memory_format=torch.channels_last).train(),
                 xcl, amp)
    if s.timm is not None:
        if dt == "fp32":  # timm as shipped: NCHW fp32
            rows.add("timm", "nchw", "train", copy.deepcopy(s.timm).train(), rows.x)
        tt = copy.deepcopy(s.timm).to(memory_format=torch.channels_last).train()
        rows.add("timm", "channels_last", "train", tt, xcl, amp)
        if cfg.compile:
            rows.add("timm-compiled", "channels_last", "train", torch.compile(copy.deepcopy(tt)), xcl, amp)
    if s.torchvision is not None:
        tvt = torchvision.models.resnet50(num_classes=s.num_classes).to(device, memory_format=torch.channels_last)
        rows.add("torchvision", "channels_last", "train", tvt.train(), xcl, amp, s.tv_flops, PEER)


def model_cases(cfg: BenchConfig, device: torch.device, log: Callable[[str], None] = print) -> List[Case]:
    """Every case of every model, dtype and batch size of ``cfg``."""
    import tempfile
    from pathlib import Path

    from ..models import get_spec
    from ..hardware import bf16_native

    cases: List[Case] = []
    tv_sizes: set = set()
    for name in cfg.models:
        size = cfg.input_size or get_spec(name).input_size
        with_tv = cfg.peers and size >= 32 and size not in tv_sizes
        tv_sizes.add(size)
        setup = setup_model(cfg, name, device, with_torchvision=with_tv)
        with tempfile.TemporaryDirectory(prefix="res2net-bench-") as tmp:  # one ONNX export per model
            for dt in cfg.dtypes:
                if dt == "bf16" and not bf16_native(device):
                    log(f"note: {device} has no native bf16: bf16 rows will be slow")
                for batch in cfg.batch_sizes:
                    rows = _Rows(setup, dt, batch, device)
                    if cfg.infer and dt != "int8":
                        inference_cases(cfg, rows)
                    if cfg.infer and device.type == "cpu":
                        runtime_cases(cfg, rows, Path(tmp), log)
                    if cfg.infer and cfg.direct_peers and device.type == "cpu":
                        direct_peer_cases(rows, Path(tmp), log)
                    if cfg.train and dt != "int8":
                        training_cases(cfg, rows)
                    cases += rows.cases
    return cases


def matmul_probe_cases(cfg: BenchConfig, device: torch.device) -> List[Case]:
    """Large square matmuls (fp32, bf16 when asked): a column for comparison with older runs, not the limit."""
    n = cfg.probe_size
    cases = []
    for dt in cfg.dtypes:
        if dt == "int8":
            continue
        a = torch.randn(n, n, device=device, dtype=DTYPES[dt])  # type: ignore[arg-type]
        b = torch.randn(n, n, device=device, dtype=DTYPES[dt])  # type: ignore[arg-type]
        res = Result(f"matmul{n}", "probe", "-", dt, "probe", 1, n, 2.0 * n ** 3 / 1e9)
        cases.append(Case(res, (lambda a=a, b=b: torch.mm(a, b))))  # type: ignore[misc]
    return cases


def roofline_cases(cfg: BenchConfig, device: torch.device, log: Callable[[str], None] = print
                   ) -> Tuple[List[Case], Dict[str, Any]]:
    """The conv probes at each model's own stage shapes, per dtype and batch (int8 through the fastest
    installed int8 runtime: OpenVINO, else onnxruntime); returns the cases and each model's stage table."""
    from ..models import build_model, get_spec
    from .roofline import conv_shapes, eager_probe_step, probe_flops, runtime_probe_step, stage_probes

    cases: List[Case] = []
    stages: Dict[str, Any] = {}
    done: Dict[Tuple[Any, ...], Result] = {}
    for name in cfg.models:
        size = cfg.input_size or get_spec(name).input_size
        with torch.device("meta"):
            model = build_model(name)
        probes = stage_probes(conv_shapes(model, (3, size, size)))
        stages[f"{name}@{size}"] = [dict(hw=list(p.hw), channels=p.channels, flops_share=p.flops_share)
                                    for p in probes]
        for dt in cfg.dtypes:
            for batch in cfg.batch_sizes:
                for p in probes:
                    key = (p.hw, p.channels, dt, batch)
                    if key in done:
                        continue
                    res = Result(f"conv3x3 {p.channels}ch {p.hw[0]}x{p.hw[1]}", "roofline", "channels_last", dt,
                                 "roofline", batch, p.hw[0], probe_flops(p, batch) / 1e9)
                    if dt == "int8":
                        step = None
                        for backend in ("openvino", "onnxruntime"):
                            step = runtime_probe_step(p, batch, backend, "int8")
                            if step is not None:
                                res.impl, res.layout = f"roofline-{backend}", "-"
                                break
                        if step is None:
                            log("note: no int8 runtime installed: int8 rows get no roofline share")
                            continue
                    else:
                        step = eager_probe_step(p, batch, DTYPES[dt], device)  # type: ignore[arg-type]
                    done[key] = res
                    cases.append(Case(res, step))
    return cases, stages
