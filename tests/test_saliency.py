"""Saliency: max-F / adaptive-F / MAE against pysodmetrics on the same predictions, the DSS head's outputs and
deep supervision, and `res2net saliency train|eval|predict` end to end on generated scenes."""

import json

import numpy as np
import pytest
import torch
from py_sod_metrics import MAE, Fmeasure

from res2net.cli import main
from res2net.errors import DataError
from res2net.tasks.saliency import DSSNet, SaliencyMeter, SaliencyModelConfig


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):
        gt = np.zeros((40, 50), np.uint8)
        gt[5 + i:25 + i, 10:30 + 2 * i] = 255
        pred = np.clip(gt * 0.7 + rng.normal(60, 50, gt.shape), 0, 255).astype(np.uint8)
        cases.append((pred, gt))
    cases.append((np.full((40, 50), 128, np.uint8), cases[0][1]))  # a constant map
    cases.append((cases[1][0], np.zeros((40, 50), np.uint8)))  # an image with nothing salient
    return cases


def test_meter_matches_pysodmetrics():
    fm, mae, meter = Fmeasure(), MAE(), SaliencyMeter()
    for pred, gt in _cases():
        fm.step(pred=pred, gt=gt)
        mae.step(pred=pred, gt=gt)
        meter.update_uint8(torch.from_numpy(pred), torch.from_numpy(gt > 128))
    ours = meter.compute()
    ref = fm.get_results()["fm"]
    assert ours["max_f"] == pytest.approx(float(ref["curve"].max()), abs=1e-12)
    assert ours["adaptive_f"] == pytest.approx(float(ref["adp"]), abs=1e-12)
    assert ours["mae"] == pytest.approx(float(mae.get_results()["mae"]), abs=1e-12)


def test_meter_batch_update_quantises_like_saved_maps():
    probs = torch.rand(2, 16, 16)
    masks = (torch.rand(2, 16, 16) > 0.5).float()
    a, b = SaliencyMeter(), SaliencyMeter()
    a.update(probs, masks)
    for p, m in zip(probs, masks):
        b.update_uint8((p * 255).round().to(torch.uint8), m.bool())
    assert a.compute() == b.compute()


def test_dss_outputs_and_deep_supervision():
    model = DSSNet(SaliencyModelConfig(name="res2net50_26w_4s", side_channels=16))
    outs = model(torch.rand(2, 3, 64, 64))
    assert len(outs) == 5 and all(o.shape == (2, 1, 64, 64) for o in outs)  # 4 side outputs + fused
    assert model.head.short[0].in_channels == 4 and model.head.short[3].in_channels == 1  # deeper -> shallower
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o, torch.ones_like(o)) for o in outs)
    loss.backward()
    assert all(side[-1].weight.grad is not None for side in model.head.sides)


@pytest.mark.slow
def test_saliency_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["saliency", "train", "--model", "res2net50_26w_4s", "--data", "synthetic", "--steps", "1",
                 "--batch-size", "2", "--input-size", "64", "--quiet", "--out", str(out),
                 "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2",
                 "--set", "model.side_channels=16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"max_f", "adaptive_f", "mae"}
    assert 0 <= metrics["mae"] <= 1 and 0 <= metrics["max_f"] <= 1
    assert main(["saliency", "eval", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "ev")]) == 0
    assert main(["saliency", "predict", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "pred"),
                 "--input", str(out / "data" / "saliency" / "val" / "images")]) == 0
    assert len(list((tmp_path / "pred").glob("*_sal.png"))) == 2


@pytest.mark.slow
def test_saliency_train_under_torchrun_two_cpu_processes(tmp_path):
    """Dense tasks on the shared engine under DDP: rank 0 alone generates the scenes (the others wait at a
    barrier) and writes the checkpoint and metrics; the step count follows the global batch."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "res2net.cli", "saliency", "train",
           "--model", "res2net26_lite", "--data", "synthetic", "--steps", "2", "--batch-size", "2",
           "--input-size", "64", "--quiet", "--out", str(out), "--set", "data.synthetic_train=8",
           "--set", "data.synthetic_val=2", "--set", "model.side_channels=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # one rank reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"max_f", "adaptive_f", "mae"}
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["sampler"]["world_size"] == 2 and state["global_step"] == 2
    scenes = json.loads((out / "data" / "scenes.json").read_text())
    assert scenes["n_train"] == 8 and len(list((out / "data" / "saliency" / "train" / "images").iterdir())) == 8


def test_steps_count_global_batches_from_the_trainers_dist_info(tmp_path):
    """`--steps N` repeats the training set to N x batch x world size samples, with the world size the Trainer
    hands the task (task.dist), and only rank 0 writes the generated scenes."""
    from res2net.engine import load_config
    from res2net.engine.distributed import DistInfo
    from res2net.tasks.saliency import SaliencyConfig, SaliencyTask

    cfg = load_config(SaliencyConfig, None, ["data.synthetic=true", "data.steps=3", "optim.batch_size=2",
                                             "data.synthetic_train=4", "data.synthetic_val=2", "data.input_size=32"])
    other_rank = SaliencyTask(cfg, tmp_path)
    other_rank.dist = DistInfo(rank=1, world_size=4)
    # rank 1 waits for rank 0's scenes: none were written
    other_rank.prepare_data()
    with pytest.raises(DataError, match="saliency data folder not found"):
        other_rank.build_datasets()
    task = SaliencyTask(cfg, tmp_path)
    assert task.dist == DistInfo()  # a single process outside torchrun
    task.dist = DistInfo(rank=0, world_size=4)
    with pytest.raises(RuntimeError, match="prepare_data"):  # the data step is explicit
        task.build_datasets()
    task.prepare_data()
    train_set, val_set = task.build_datasets()
    assert len(train_set) == 3 * 2 * 4 and len(val_set) == 2


def test_dense_config_bounds_hold_in_the_task_subclasses(capsys):
    """DenseRunConfig / DenseOptimConfig only change defaults: the engine's bounds still apply to them, and the
    dense data keys have their own (input_size >= 32, steps >= 0)."""
    from res2net.engine import load_config
    from res2net.errors import ConfigError
    from res2net.tasks.saliency import SaliencyConfig

    for override, message in (("run.epochs=0", "run.epochs must be >= 1"), ("optim.batch_size=0", "optim.batch_size"),
                              ("data.input_size=16", "data.input_size must be >= 32"), ("data.steps=-1", "data.steps")):
        with pytest.raises(ConfigError, match=message):
            load_config(SaliencyConfig, None, [override])
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects it before any work
        main(["saliency", "train", "--data", "synthetic", "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps: must be >= 1" in capsys.readouterr().err
