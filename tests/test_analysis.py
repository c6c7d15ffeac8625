"""Analyses: complexity, Grad-CAM, receptive fields, ablation; end to end on tiny settings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from res2net.analysis.cam import GradCAM, resolve_layer
from res2net.analysis.receptive_field import (block_paths, bottleneck_of, effective_rf, erf_extent,
                                              theoretical_rf)
from res2net.cli import main
from res2net.models import ResNet, build_model


# ---- complexity ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_complexity_json_res2net50(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["complexity", "res2net50_26w_4s", "--warmup", "0", "--repeats", "1", "--json", "--no-memory",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [["model", "params", "macs", "latency_ms_b1", "latency_ms_b16",
                                        "peak_mem_infer_mb", "peak_mem_train_mb"]]
    row = rows[0]
    assert row["model"] == "res2net50_26w_4s" and row["params"] == 25_699_120
    assert abs(row["macs"] - 4.26e9) / 4.26e9 < 0.01
    assert {"report.md", "complexity.json", "complexity.csv", "complexity.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "25.70" in (tmp_path / "report.md").read_text()


def test_complexity_small_model_and_bad_args(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complexity", "res2net20_cifar", "--input-size", "32", "--batch-size", "4", "--warmup", "0",
                 "--repeats", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert "latency_ms_b4" in row and row["latency_ms_b1"] > 0
    # a training step also holds gradients and saved activations (weights: 1.7 MB)
    assert 0 < row["peak_mem_infer_mb"] < row["peak_mem_train_mb"]
    assert main(["complexity", "res2net_does_not_exist", "--json"]) == 2
    assert "res2net_does_not_exist" in capsys.readouterr().err
    assert main(["complexity", "res2net20_cifar", "--batch-size", "1"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_complexity_refuses_a_users_folder_before_measuring(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from res2net.analysis import complexity

    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(complexity, "complexity_rows", lambda *a, **k: pytest.fail("measured before the refusal"))
    assert main(["complexity", "res2net20_cifar", "--out", str(tmp_path)]) == 2
    assert "holds files res2net did not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---- Grad-CAM ----------------------------------------------------------------------------------------------------
def test_gradcam_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = build_model("res2net20_cifar", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics so the maps are not flat
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 32, 32)
    for layer, target in ((None, None), ("layer2", None), ("layer3.1", 4)):
        ours, targets = GradCAM(model, layer)(x.clone(), target)
        assert target is None or targets == [target] * 3
        with PeerGradCAM(model=model, target_layers=[resolve_layer(model, layer)]) as peer:
            theirs = torch.from_numpy(peer(input_tensor=x.clone(), targets=[ClassifierOutputTarget(t)
                                                                              for t in targets]))
        compared = 0
        for a, b in zip(ours, theirs.float()):
            if b.std() == 0:  # every weighted activation negative: both give an all-zero map
                assert float(a.abs().max()) < 1e-6
                continue
            corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
            assert corr >= 0.99, (layer, float(corr))
            compared += 1
        assert compared >= 1


def test_gradcam_bad_layer_and_target() -> None:
    model = build_model("res2net20_cifar").eval()
    with pytest.raises(ValueError, match="--layer 'nope'"):
        GradCAM(model, "nope")
    with pytest.raises(ValueError, match="--target"):
        GradCAM(model)(torch.rand(1, 3, 32, 32), target=99)


@pytest.mark.slow
def test_cam_command_two_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "r20.pt"
    torch.save({"model": build_model("resnet20_cifar", num_classes=10, in_chans=1).state_dict()}, ckpt)
    assert main(["cam", "--model", "res2net20_cifar", "--compare", "resnet20_cifar", "--compare-checkpoint",
                 str(ckpt), "--out", str(tmp_path / "cam")]) == 0
    out = tmp_path / "cam"
    assert {"report.md", "cam.png", "cam.json", "maps.pt"} <= {p.name for p in out.iterdir()}
    maps = torch.load(out / "maps.pt")
    assert maps["res2net20_cifar"].shape == (4, 32, 32) and maps["resnet20_cifar"].shape == (4, 32, 32)
    assert "chelsea" in (out / "report.md").read_text()
    assert main(["cam", "--model", "res2net20_cifar", "--compare-checkpoint", str(ckpt)]) == 2
    assert "--compare" in capsys.readouterr().err


def test_checkpoint_preprocessing_follows_training_config(tmp_path: Path) -> None:
    """A Fashion-MNIST checkpoint of `res2net train` is fed 28 px images with the data set's statistics, not
    the model card's 32 px / (0.5, 0.25): the analyses see what the model was trained on."""
    from res2net.data import fashion_mnist
    from res2net.weights import checkpoint_preprocessing, describe_checkpoint

    def preprocessing(name: str, path: Path | None = None, in_chans: int = 3) -> tuple:
        p = checkpoint_preprocessing(describe_checkpoint(path) if path else None, name, in_chans)
        return p.input_size, p.mean, p.std

    state = build_model("res2net17_slim", num_classes=10, in_chans=1).state_dict()
    ckpt = tmp_path / "fm.pt"
    torch.save({"model": state, "config": {"data": {"dataset": "fashion-mnist", "input_size": None}}}, ckpt)
    assert preprocessing("res2net17_slim", ckpt, in_chans=1) == (28, fashion_mnist.MEAN, fashion_mnist.STD)
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)  # a bare state_dict: nothing known about its training, the card applies
    assert preprocessing("res2net17_slim", bare) == (32, (0.5,) * 3, (0.25,) * 3)
    assert preprocessing("res2net17_slim") == (32, (0.5,) * 3, (0.25,) * 3)


# ---- receptive fields ----------------------------------------------------------------------------------------
def test_theoretical_rf_hand_worked() -> None:
    """3x3 stem (RF 3, stride 1), then one stage of two blocks at stride 1.

    Res2Net s=3. Stage block: shortcut (1x1) keeps 3; its two 3x3 convs and the 3x3 average pool give 5:
    {3: 1, 5: 3}. Second block, input P = {3: 1, 5: 3}: split 1 = conv(P) = {5: 1, 7: 3}; split 2 =
    conv(split 1 + P) = {5: 1, 7: 4, 9: 3}; untouched split = P; shortcut = P. Sum: {3: 2, 5: 8, 7: 7, 9: 3}.
    Bottleneck: {3: 1, 5: 1} then {3: 1, 5: 2, 7: 1}."""
    res2 = ResNet((2,), planes=(4,), scale=3, base_width=64, stem="cifar", stem_width=8, num_classes=0)
    recs = theoretical_rf(res2)
    assert [r["sizes"] for r in recs] == [{3: 1}, {3: 1, 5: 3}, {3: 2, 5: 8, 7: 7, 9: 3}]
    assert recs[-1]["distinct_sizes"] == 4 and recs[-1]["paths"] == 20
    plain = ResNet((2,), planes=(4,), scale=1, base_width=64, stem="cifar", stem_width=8, num_classes=0)
    assert [r["sizes"] for r in theoretical_rf(plain)] == [{3: 1}, {3: 1, 5: 1}, {3: 1, 5: 2, 7: 1}]
    # a strided stage block: the 3x3 convs at jump 1 add 2, the jump doubles, the 1x1 shortcut adds nothing
    block = ResNet((1, 1), planes=(4, 8), scale=2, base_width=64, stem="cifar", stem_width=8).layer2[0]
    assert block_paths(block, Counter({3: 1}), 1) == (Counter({5: 2, 3: 1}), 2)


def test_theoretical_rf_resnet50_is_427() -> None:
    recs = theoretical_rf(bottleneck_of("res2net50_26w_4s"))
    assert recs[-1]["max_rf"] == 427  # the well-known theoretical receptive field of ResNet-50
    with torch.device("meta"):
        res2 = theoretical_rf(build_model("res2net50_26w_4s"))
    assert res2[-1]["distinct_sizes"] > 2 * recs[-1]["distinct_sizes"]
    with pytest.raises(ValueError, match="dla"):
        bottleneck_of("res2net_dla60")


def test_effective_rf_grows_with_depth() -> None:
    torch.manual_seed(0)
    model = build_model("res2net20_cifar").eval()
    maps = effective_rf(model, torch.randn(2, 3, 32, 32))
    assert len(maps) == 4 and all(abs(float(m.sum()) - 1) < 1e-4 for m in maps)
    extents = [erf_extent(m) for m in maps]
    assert extents[0] == 3 and extents == sorted(extents)
    assert erf_extent(torch.ones(5, 5), 1.0) == 5


@pytest.mark.slow
def test_receptive_field_command(tmp_path: Path) -> None:
    ckpt = tmp_path / "r.pt"
    torch.save({"model": build_model("res2net20_cifar", num_classes=10, in_chans=1).state_dict()}, ckpt)
    out = tmp_path / "rf"
    assert main(["receptive-field", "--model", "res2net20_cifar", "--checkpoint", str(ckpt), "--images", "2",
                 "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "rf_theory.png", "rf_theory.csv", "rf_theory.json", "erf.png", "erf.csv"} <= names
    text = (out / "report.md").read_text()
    assert "resnet20_cifar" in text and "bottleneck (s=1)" in text and str(ckpt) in text


# ---- ablation ----------------------------------------------------------------------------------------------------
def test_ablation_variants_and_plan() -> None:
    from res2net.tasks.ablation import BUDGETS, VARIANTS, plan
    from res2net.models import count_params

    params = {n: count_params(VARIANTS[n].build(10, 1)) for n in ("48w2s", "26w4s", "14w8s", "26w8s")}
    preserved = [params[n] for n in ("48w2s", "26w4s", "14w8s")]
    assert max(preserved) / min(preserved) < 1.05 < params["26w8s"] / max(preserved)  # Table 3 trade
    scale = [count_params(VARIANTS[n].build(10, 1)) for n in ("s2", "s3", "s4", "s5", "s6")]
    assert scale == sorted(scale)
    runs = plan(BUDGETS["full"])
    assert len(runs) == 3 * len(VARIANTS) and len({r.run_id for r in runs}) == len(runs)
    with pytest.raises(ValueError, match="--variants: unknown nope"):
        plan(BUDGETS["quick"], variants=["nope"])
    with pytest.raises(ValueError, match="--seeds"):
        plan(BUDGETS["quick"], seeds=0)


@pytest.mark.slow
def test_ablation_command_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "abl"
    tiny = ["ablation", "--train-subset", "64", "--test-subset", "32", "--set", "optim.batch_size=32",
            "--out", str(out)]
    assert main(tiny + ["--variants", "bottleneck"]) == 0
    first = (out / "results.jsonl").read_text()
    assert main(tiny + ["--variants", "bottleneck", "s4"]) == 2  # finished runs are never silently redone
    assert "--resume" in capsys.readouterr().err
    assert main(tiny + ["--variants", "bottleneck", "--resume", "--epochs", "2"]) == 2  # other settings
    assert "--resume: run bottleneck-seed0" in capsys.readouterr().err
    assert main(tiny + ["--variants", "bottleneck", "48w2s", "--resume"]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert (out / "results.jsonl").read_text().startswith(first) and len(lines) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == ["bottleneck", "48w2s"]
    assert {"report.md", "fig4.png", "summary.csv"} <= {p.name for p in out.iterdir()}
    assert "48w2s" in (out / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_ablation_refuses_a_missing_device_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 22 probe: ``ablation --device cuda`` drew the sweep's progress bar before its error line."""
    assert main(["ablation", "--variants", "s2", "--device", "cuda", "--out", str(tmp_path / "abl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0]
