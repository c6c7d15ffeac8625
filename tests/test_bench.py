"""``res2net bench``: the cases it builds, the roofline probes at the network's own shapes, the derived shares and
ratios, the runtime rows. Tiny models and one round: no timing is asserted, only what is derived from timings."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import res2net
from res2net.bench import BenchConfig, Result, derive, format_markdown, run_bench, write_report
from res2net.bench.report import machine_info
from res2net.bench.roofline import attainable_seconds, conv_shapes, stage_probes


def test_bench_smoke(tmp_path) -> None:


    cfg = BenchConfig(models=["resnet20_cifar"], batch_sizes=[2], dtypes=["fp32"], train=True, peers=False,
                      grad_checkpointing=True, repeats=1, warmup=0, train_warmup=0, probe_size=128)
    report = run_bench(cfg, log=lambda s: None)
    rows = {(r["impl"], r["mode"]): r for r in report["results"]}
    assert {("probe", "probe"), ("ours", "infer"), ("ours-optimized", "infer"), ("ours", "train"),
            ("ours-ckpt", "train")} <= set(rows)
    assert rows[("ours", "train")]["peak_mem_mb"] > 0 and rows[("ours", "infer")]["images_per_s"] > 0
    write_report(report, tmp_path)
    assert (tmp_path / "bench.json").exists() and "resnet20_cifar" in format_markdown(report)
    with pytest.raises(res2net.errors.ConfigError, match="dtypes"):
        run_bench(BenchConfig(dtypes=["fp16"]))


def test_bench_compiled_rows_have_compiled_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile adds compiled rows for us and timm (inference and training), each compared with timm's compiled
    row of the same mode and dtype: the GPU suites of benchmarks/run_bench.py rely on them. torch.compile itself
    is replaced by a recorder here (compiling Res2Net-50 four times takes minutes on 2 cores; compiled training
    and inference are checked in test_models.test_torch_compile and the bench runs)."""


    compiled: list = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(type(m).__name__) or m)
    cfg = BenchConfig(models=["res2net50_26w_4s"], batch_sizes=[2], dtypes=["fp32"], train=True, compile=True,
                      input_size=32, repeats=1, warmup=0, train_warmup=0, probe_size=128, memory=False)
    report = run_bench(cfg, log=lambda s: None)
    assert len(compiled) == 4  # ours optimized + timm (inference), ours + timm (training)
    rows = {(r["impl"], r["mode"]): r for r in report["results"] if r["layout"] == "channels_last"}
    for mode, ours in (("infer", "ours-optimized-compiled"), ("train", "ours-compiled")):
        assert ("timm-compiled", mode) in rows, sorted(rows)
        ratio = rows[(ours, mode)]["ratios"]["timm_compiled"]
        expected = rows[(ours, mode)]["images_per_s"] / rows[("timm-compiled", mode)]["images_per_s"]
        assert ratio == pytest.approx(expected) and ratio > 0
    assert "x timm compiled" in format_markdown(report)


def test_stage_probes_follow_the_network() -> None:
    """Res2Net-50 at 224: one probe per output resolution with that stage's widest channel count; the shares
    are the conv FLOPs at each resolution and sum to one; the conv FLOPs are the model's MACs x 2 (less the fc)."""
    with torch.device("meta"):
        model = res2net.create_model("res2net50_26w_4s")
    shapes = conv_shapes(model, (3, 224, 224))
    probes = stage_probes(shapes)
    assert [p.hw for p in probes] == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]
    assert [p.channels for p in probes] == [64, 256, 512, 1024, 2048]
    assert sum(p.flops_share for p in probes) == pytest.approx(1.0)
    conv_flops = sum(s.flops for s in shapes)
    fc_flops = 2 * 2048 * 1000
    assert conv_flops + fc_flops == pytest.approx(2 * res2net.count_macs(model, 224), rel=1e-3)


def test_attainable_time_is_each_stage_at_its_own_rate() -> None:
    with torch.device("meta"):
        model = res2net.create_model("res2net20_cifar")
    probes = stage_probes(conv_shapes(model, (3, 32, 32)))
    rates = [10.0 * (i + 1) for i in range(len(probes))]  # GFLOP/s
    flops = 1e9
    expected = sum(p.flops_share * flops * 4 / (r * 1e9) for p, r in zip(probes, rates))
    assert attainable_seconds(probes, rates, flops, 4) == pytest.approx(expected)
    assert math.isnan(attainable_seconds(probes, [math.nan] * len(probes), flops, 4))


def test_derive_roofline_share_and_runtime_ratios() -> None:
    """Shares and ratios from given times: a row exactly at every stage probe's rate has share 1."""
    stages = {"m@32": [dict(hw=[32, 32], channels=16, flops_share=0.25), dict(hw=[16, 16], channels=32,
                                                                             flops_share=0.75)]}
    probe_a = Result("conv3x3 16ch 32x32", "roofline", "channels_last", "fp32", "roofline", 2, 32, 8.0, [0.1])
    probe_b = Result("conv3x3 32ch 16x16", "roofline", "channels_last", "fp32", "roofline", 2, 16, 8.0, [0.2])
    # 2 images of 1 GFLOP: at 80 / 40 GFLOP/s for 25% / 75% of the FLOPs the attainable time is 43.75 ms
    eager = Result("m", "ours-optimized", "channels_last", "fp32", "infer", 2, 32, 1.0, [0.04375])
    ov = Result("m", "openvino", "-", "fp32", "infer", 2, 32, 1.0, [0.0875 / 4])
    ov_bf16 = Result("m", "openvino", "-", "bf16", "infer", 2, 32, 1.0, [0.01])
    int8 = Result("m", "onnxruntime", "-", "int8", "infer", 2, 32, 1.0, [0.005])
    derive([probe_a, probe_b, eager, ov, ov_bf16, int8], stages)
    assert probe_a.gflops == pytest.approx(80) and probe_b.gflops == pytest.approx(40)
    assert eager.roofline_share == pytest.approx(1.0)
    assert ov.roofline_share == pytest.approx(2.0)
    assert eager.ratios["openvino_fp32"] == pytest.approx(0.5)
    assert int8.ratios["best_bf16"] == pytest.approx(2.0)
    assert math.isnan(ov_bf16.roofline_share)  # no bf16 probe in this run
    text = format_markdown({"machine": {"cpu": "x", "threads": 2, "torch": "t"}, "date": "d",
                            "results": [vars(r) for r in (probe_a, probe_b, eager, ov)]})
    assert "share of roofline" in text and "| 100% |" in text


def test_runtime_rows_and_roofline_in_one_run(tmp_path) -> None:
    """onnxruntime/OpenVINO rows (fp32, int8) beside eager, conv probes per stage and dtype, strict JSON."""
    from res2net.inference import available_backends

    if not {"onnxruntime", "openvino"} <= set(available_backends("int8")):
        pytest.skip("onnxruntime/OpenVINO not installed: pip install 'res2net[deploy]'")
    cfg = BenchConfig(models=["res2net20_cifar"], batch_sizes=[2], dtypes=["fp32", "int8"], peers=False,
                      runtimes=["onnxruntime", "openvino"], repeats=1, warmup=0, probe_size=128, memory=False)
    report = run_bench(cfg, log=lambda s: None)
    rows = {(r["impl"], r["dtype"]) for r in report["results"] if r["mode"] == "infer"}
    assert {("ours-optimized", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
            ("openvino", "int8")} <= rows
    probes = [r for r in report["results"] if r["mode"] == "roofline"]
    assert {(r["dtype"], r["input_size"]) for r in probes} == {(d, s) for d in ("fp32", "int8") for s in (32, 16, 8)}
    eager = next(r for r in report["results"] if r["impl"] == "ours-optimized")
    assert eager["roofline_share"] > 0 and eager["ratios"]["openvino_fp32"] > 0
    write_report(report, tmp_path)
    json.loads((tmp_path / "bench.json").read_text())  # NaN-free
    assert "x OpenVINO fp32" in (tmp_path / "bench.md").read_text()


def test_runtime_flag_is_checked() -> None:
    with pytest.raises(res2net.errors.ConfigError, match="runtimes"):
        run_bench(BenchConfig(runtimes=["tensorrt"]))


def test_a_missing_runtime_is_a_note_in_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from res2net import inference

    monkeypatch.setattr(inference, "available_backends", lambda dtype="fp32": ["eager"])
    cfg = BenchConfig(models=["resnet20_cifar"], batch_sizes=[1], dtypes=["fp32"], peers=False,
                      runtimes=["openvino"], repeats=1, warmup=0, probe_size=128, memory=False, roofline=False)
    report = run_bench(cfg, log=lambda s: None)
    assert not [r for r in report["results"] if r["impl"] == "openvino"]
    assert report["notes"] == ["openvino (fp32) skipped: not installed (pip install 'res2net[deploy]')"]
    assert "Note: openvino (fp32) skipped" in format_markdown(report)


@pytest.mark.slow
def test_direct_peer_rows_compute_what_ours_computes(tmp_path) -> None:
    """--direct-peers: onnxruntime and OpenVINO on our exported graph and zentorch on the model, each called as its
    documentation shows; every row is built, runs, and computes the model's output (not only a time); the report
    records the CPU class it ran on."""
    from res2net.bench.cases import (DIRECT_PEERS, _direct_onnxruntime, _direct_openvino, _Rows, _zentorch,
                                     direct_peer_cases, setup_model)
    from res2net.inference.backends import export_onnx_for_runtime, model_input_shape

    cfg = BenchConfig(models=["res2net17_slim"], batch_sizes=[2], dtypes=["fp32"], peers=False, input_size=28)
    setup = setup_model(cfg, "res2net17_slim", torch.device("cpu"), with_torchvision=False)
    rows = _Rows(setup, "fp32", 2, torch.device("cpu"))
    notes: list = []
    direct_peer_cases(rows, tmp_path, notes.append)
    built = {c.result.impl: c for c in rows.cases}
    has_zentorch = importlib.util.find_spec("zentorch") is not None
    assert {"onnxruntime-direct", "openvino-direct"} | ({"zentorch"} if has_zentorch else set()) == set(built), notes
    for case in built.values():
        case.step()  # the timed call runs
    with torch.no_grad():
        ref = setup.ours(rows.x).numpy()
    path = export_onnx_for_runtime(setup.ours, tmp_path / "m.onnx", model_input_shape(setup.ours, 28))
    outs = {"onnxruntime-direct": _direct_onnxruntime(path)(rows.x)[0],
            "openvino-direct": next(iter(_direct_openvino(path, tuple(rows.x.shape), "fp32")(rows.x).values()))}
    if has_zentorch:
        outs["zentorch"] = _zentorch(setup.ours)(rows.x).detach().numpy()
    for impl, out in outs.items():
        np.testing.assert_allclose(np.asarray(out, dtype=np.float32), ref, rtol=1e-3, atol=1e-3, err_msg=impl)
    assert set(DIRECT_PEERS) == {"onnxruntime-direct", "openvino-direct", "zentorch"}
    info = machine_info(torch.device("cpu"))
    assert info["cpu_class"].split()[0] == res2net.hardware.detect().cpu.isa


def test_bench_refuses_a_users_folder_an_empty_model_list_and_runtimes_with_train_only(
        tmp_path, capsys: pytest.CaptureFixture) -> None:
    """Issue 22 probe: ``bench --out`` replaced a user's own bench.json, ``--models ,`` timed nothing and exited 0,
    ``--train-only --runtimes onnxruntime`` ignored the runtimes; each is refused before any timing."""
    from res2net.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "bench.json").write_text("{}\n")
    fast = ["--models", "res2net17_slim", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--no-peers",
            "--no-roofline", "--no-memory", "--input-size", "32"]
    assert main(["bench", *fast, "--out", str(mine)]) == 2
    assert "did not write" in capsys.readouterr().err and (mine / "bench.json").read_text() == "{}\n"
    assert main(["bench", *fast, "--train-only", "--runtimes", "onnxruntime"]) == 2
    assert "--runtimes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--models", ","])
    assert "comma-separated names" in capsys.readouterr().err
