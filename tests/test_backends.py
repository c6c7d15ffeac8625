"""res2net.optimize's backends (eager, inductor, onnxruntime, OpenVINO) against eager PyTorch, int8 on a briefly
trained Fashion-MNIST model, backend='auto' and its cache, the errors. No timing is asserted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

import res2net
from res2net.data.calibration import calibration_batches
from res2net.inference import autotune, backends
from res2net.inference.onnx import BF16_RTOL
from res2net.errors import ConfigError, DataError, Res2NetError

NAME, SIZE = "res2net20_cifar", 32


def _needs(backend: str, dtype: str = "fp32") -> None:
    if backend not in backends.available_backends(dtype):
        pytest.skip(f"{backend} ({dtype}) is not installed here: pip install 'res2net[deploy]'")


def _bound(ref: torch.Tensor, atol: float, rtol: float) -> float:
    return atol + rtol * float(ref.abs().max())


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the module's model shared by its runtime builds (the export dominates build time)."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = res2net.create_model(NAME).eval()
    for bn in m.modules():  # non-trivial statistics, so BN folding is exercised
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_var.uniform_(0.8, 1.2)
            bn.running_mean.uniform_(-0.1, 0.1)
    return m


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "openvino"])
def test_fp32_backend_equals_eager(model: torch.nn.Module, onnx_dir: Path, backend: str) -> None:
    _needs(backend)
    fast = backends.build_backend(model, backend, torch.float32, workdir=onnx_dir)
    assert fast.verification["max_abs_diff"] <= 1e-4  # checked at build time on the real photo
    torch.manual_seed(1)
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the build-time check
    with torch.no_grad():
        ref = model(x)
    got = fast(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert float((got - ref).abs().max()) <= _bound(ref, 1e-4, 1e-5)


@pytest.mark.parametrize("stream_min_elements", [1, backends.OPENVINO_STREAM_MIN_ELEMENTS])
def test_openvino_throughput_requests_keep_the_input_order(model: torch.nn.Module, onnx_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            stream_min_elements: int) -> None:
    """On several threads a batch of large images runs as parallel one-image requests: every image's output is
    eager's for that image, in input order (small images, one image and one thread: one latency-mode call)."""
    _needs("openvino")
    monkeypatch.setattr(backends, "OPENVINO_STREAM_MIN_ELEMENTS", stream_min_elements)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = backends.export_onnx_for_runtime(model, onnx_dir / "order.onnx", (3, SIZE, SIZE))
        run = backends.openvino_runner(path, "fp32")
        torch.manual_seed(2)
        for n in (4, 3, 1):
            x = torch.randn(n, 3, SIZE, SIZE)
            with torch.no_grad():
                ref = model(x)
            got = torch.from_numpy(run(x.numpy())[0])
            assert got.shape == ref.shape
            assert float((got - ref).abs().max()) <= _bound(ref, 1e-4, 1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_inductor_backend_equals_eager(model: torch.nn.Module) -> None:
    _needs("inductor")
    fast = res2net.optimize(model, backend="inductor")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
    assert float((fast(x) - ref).abs().max()) <= _bound(ref, 1e-4, 1e-5)
    # frozen: every convolution runs on its packed weight (with options={"freezing": True} none did, torch 2.14)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast(x)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert "aten::convolution" not in counts and "aten::_slow_conv2d_forward" not in counts, sorted(counts)
    packed = counts.get("mkldnn::_convolution_pointwise", 0) + counts.get("mkldnn::_convolution_pointwise_", 0)
    assert packed == sum(isinstance(m, torch.nn.Conv2d) for m in fast.modules())  # the fused model's convolutions


@pytest.mark.parametrize("backend", ["eager", "openvino"])
def test_bf16_backend_close_to_eager(model: torch.nn.Module, onnx_dir: Path, backend: str) -> None:
    _needs(backend, "bf16")
    fast = backends.build_backend(model, backend, torch.bfloat16, workdir=onnx_dir)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
    got = fast(x)
    assert got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= _bound(ref, 1e-3, BF16_RTOL)


def test_features_only_runtime_returns_a_list() -> None:
    _needs("onnxruntime")
    torch.manual_seed(0)
    feats = res2net.create_model(NAME, features_only=True).eval()
    fast = res2net.optimize(feats, backend="onnxruntime")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = feats(x)
    got = fast(x)
    assert isinstance(got, list) and len(got) == len(ref) > 1
    for r, g in zip(ref, got):
        assert g.shape == r.shape and float((g - r).abs().max()) <= _bound(r, 1e-4, 1e-5)


# -------------------------------------------------------------------------------- int8 on a trained model

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Tuple[torch.nn.Module, list, torch.Tensor, torch.Tensor, Path]:
    """res2net17_slim trained for 48 steps on Fashion-MNIST (grey, 28 px): (model, calibration batches from the
    training split, 512 test images normalised, their labels, a folder for its ONNX export)."""
    from res2net.data import load_fashion_mnist, normalize

    try:
        sets = load_fashion_mnist(download=False)
    except DataError as exc:  # the data set is an apt package; CI installs it (Makefile)
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    mean, std = (0.286,), (0.353,)
    torch.manual_seed(0)
    model = res2net.create_model("res2net17_slim", in_chans=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = sets["train"].subset(48 * 64, seed=1)
    model.train()
    for i in range(0, len(train), 64):
        x = normalize(train.images[i:i + 64], mean, std)
        loss = torch.nn.functional.cross_entropy(model(x), train.labels[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    calibration = calibration_batches("fashion-mnist", 28, mean, std, 1, n_images=128)
    test = sets["test"].subset(512, seed=2)
    return model, calibration, normalize(test.images, mean, std), test.labels, tmp_path_factory.mktemp("trained")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32_on_held_out_images(trained: tuple, backend: str) -> None:
    _needs(backend, "int8")
    model, calibration, images, labels, onnx = trained
    with torch.no_grad():
        ref = model(images).argmax(1)
    fp32_acc = float((ref == labels).float().mean())
    assert fp32_acc > 0.6, "the fixture's model did not learn: the int8 check would mean nothing"
    q = backends.build_backend(model, backend, "int8", calibration=calibration, workdir=onnx)
    assert q.verification["top1_agreement"] >= backends.MIN_INT8_AGREEMENT  # on the calibration images
    pred = q(images).argmax(1)  # images the calibration never saw
    assert float((pred == ref).float().mean()) >= 0.95
    assert abs(float((pred == labels).float().mean()) - fp32_acc) <= 0.03


def test_int8_onnx_export_round_trip(trained: tuple, tmp_path: Path) -> None:
    _needs("onnxruntime", "int8")
    import onnx
    import onnxruntime as ort

    from res2net.export import export_model

    model, calibration, images, _, _ = trained
    out = tmp_path / "q.onnx"
    checks = export_model(model, out, "onnx", input_size=28, in_chans=1, mean=(0.286,), std=(0.353,), int8=True,
                          calibration=calibration)
    assert checks["top-1 agreement on the calibration images"] >= backends.MIN_INT8_AGREEMENT
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: images[:64].numpy()})[0]
    with torch.no_grad():
        ref = model(images[:64]).argmax(1).numpy()
    assert (got.argmax(1) == ref).mean() >= 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]


def test_int8_openvino_export_round_trip(trained: tuple, tmp_path: Path) -> None:
    _needs("openvino", "int8")
    from res2net.export import export_model
    from res2net.inference.backends import openvino_core

    model, calibration, images, _, _ = trained
    out = tmp_path / "q.xml"
    export_model(model, out, "openvino", input_size=28, in_chans=1, mean=(0.286,), std=(0.353,), int8=True,
                 calibration=calibration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.xml"]
    compiled = openvino_core().compile_model(str(out), "CPU")
    ops = {op.get_type_name() for op in openvino_core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in ops
    got = compiled(images[:64].numpy())[compiled.outputs[0]]
    with torch.no_grad():
        ref = model(images[:64]).argmax(1).numpy()
    assert (np.asarray(got).argmax(1) == ref).mean() >= 0.9


def test_int8_check_refuses_a_broken_model(trained: tuple) -> None:
    """The build-time int8 check can fail: a model whose quantized copy disagrees is refused."""
    _needs("onnxruntime", "int8")
    model, calibration, _, _, onnx = trained
    with pytest.raises(res2net.errors.Res2NetError, match="agrees with eager"):
        backends.build_backend(model, "onnxruntime", "int8", calibration=calibration, min_agreement=1.01,
                               workdir=onnx)


# ------------------------------------------------------------------------------------- auto and errors

def test_auto_times_once_then_uses_the_cache(model: torch.nn.Module, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("onnxruntime")
    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "_CHOICES", {})
    first = res2net.optimize(model, backend="auto")
    choice = first.backend_choice
    assert not choice["cached"] and choice["backend"] in choice["ms"]
    assert set(choice["ms"]) == set(b for b in backends.available_backends("fp32") if b != "inductor")
    stored = json.loads((tmp_path / autotune.CACHE_FILE).read_text())
    assert [v["backend"] for v in stored.values()] == [choice["backend"]]
    monkeypatch.setattr(autotune, "_CHOICES", {})  # a new process: only the file remembers
    second = res2net.optimize(model, backend="auto")
    assert second.backend_choice == {"backend": choice["backend"], "cached": True}
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
    assert float((second(x) - ref).abs().max()) <= _bound(ref, 1e-4, 1e-5)


def test_missing_backend_names_the_extra(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    from res2net.extras import MissingExtraError

    real = backends.require

    def fake_require(module: str, extra: str):  # openvino "not installed"
        if module == "openvino":
            raise MissingExtraError("no openvino")
        return real(module, extra)

    monkeypatch.setattr(backends, "require", fake_require)
    with pytest.raises(backends.BackendNotInstalled, match=r"backend 'openvino'.*pip install 'res2net\[deploy\]'"):
        res2net.optimize(model, backend="openvino")


def test_bad_arguments(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        res2net.optimize(model, backend="tensorrt")
    with pytest.raises(ConfigError, match="int8"):
        res2net.optimize(model, dtype="int8")  # eager has no int8
    with pytest.raises(ConfigError, match="calibration"):
        res2net.optimize(model, dtype="int8", backend="onnxruntime")
    with pytest.raises(ConfigError, match="does not run bf16"):
        res2net.optimize(model, dtype=torch.bfloat16, backend="onnxruntime")
    with pytest.raises(ConfigError, match="calibration batch 0"):
        backends.build_backend(model, "onnxruntime", "int8", calibration=[torch.zeros(2, 1, 28, 28)],
                               input_size=SIZE)
    with pytest.raises(ValueError, match="dtype"):
        res2net.optimize(model, dtype=torch.float16)


def test_runtime_model_refuses_other_shapes_and_training(model: torch.nn.Module, onnx_dir: Path) -> None:
    _needs("onnxruntime")
    fast = backends.build_backend(model, "onnxruntime", "fp32", verify=False, workdir=onnx_dir)
    with pytest.raises(ValueError, match="built for input"):
        fast(torch.zeros(1, 3, SIZE + 8, SIZE + 8))
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()
    with pytest.raises(ConfigError, match="already optimized"):
        res2net.optimize(fast)


@pytest.mark.parametrize("cached", [False, True])
def test_auto_says_why_no_backend_could_be_built(cached: bool, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend's reason, also when an earlier call cached a choice for this model (it failed in a full
    run, where another test had cached one: the cached backend's own error came out alone)."""
    from res2net.inference import autotune

    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "_CHOICES", {})
    model = res2net.create_model("res2net17_slim").eval()
    if cached:
        calibration = [torch.randn(4, 3, 32, 32)]
        res2net.optimize(model, dtype="int8", backend="auto", calibration=calibration, verify=False)
    with pytest.raises(Res2NetError, match=r"no backend could be built for int8 \(onnxruntime: dtype int8 needs "
                                           r"calibration.*openvino: dtype int8 needs calibration"):
        res2net.optimize(model, dtype="int8", backend="auto")


ALTSTACK_SCRIPT = """
import gc, os, signal, sys, torch, res2net
from res2net.inference import backends
if sys.argv[1] == "one-core-per-model":  # what openvino_runner did: OpenVINO's CPU plugin of each Core sets the
    import openvino as ov                # thread's sigaltstack and puts back the one it found when freed
    backends.openvino_core = ov.Core
model = res2net.create_model("res2net17_slim").eval()
a = res2net.optimize(model, backend="openvino", verify=False)
b = res2net.optimize(model, backend="openvino", verify=False)
x = torch.randn(1, 3, 32, 32)
a(x), b(x)
del a    # freed before b: b's Core then puts back a's freed stack
gc.collect()
del b
gc.collect()
signal.signal(signal.SIGTERM, lambda *args: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGTERM)   # Python's handlers run on the alternate stack (SA_ONSTACK)
print("alive", flush=True)
"""


@pytest.mark.parametrize("cores", ["one-core-per-model", "shared"])
def test_openvino_models_freed_out_of_order_leave_signals_working(cores: str) -> None:
    """The suite's intermittent SIGSEGV: two OpenVINO models freed in the order they were made, then any signal
    with a Python handler. With a Core per model the process dies of SIGSEGV (the thread's alternate signal
    stack points at freed memory); with the package's one Core it handles the signal."""
    _needs("openvino")
    proc = subprocess.run([sys.executable, "-c", ALTSTACK_SCRIPT, cores], capture_output=True, text=True,
                          timeout=600)
    if cores == "shared":
        assert proc.returncode == 0 and proc.stdout.split() == ["handled", "alive"], proc.stderr[-2000:]
    elif proc.returncode == 0:  # the OpenVINO behaviour guarded against is gone in this version
        pytest.skip("this OpenVINO leaves no dangling signal stack with a Core per model")
    else:
        assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])
