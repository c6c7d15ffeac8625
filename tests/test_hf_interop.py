"""The Hugging Face round trip: a ``save_pretrained`` folder uploaded to the Hub loads in plain timm
(``timm.create_model("hf-hub:ORG/REPO", pretrained=True)``) and in transformers (``AutoModelForImageClassification``,
its ``TimmWrapper``) with the same logits as ours. Offline: the Hub cache is laid out on disk from the folder's
files and read with ``HF_HUB_OFFLINE=1`` in a fresh process, which builds the timm-native models before res2net is
ever imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import res2net
from res2net.weights import save_pretrained
from test_weights import hub_cache, randomize_norms

timm = pytest.importorskip("timm")
pytest.importorskip("transformers")

# (zoo name, build arguments, class names, Hub repository, timm architecture the folder names)
CASES = [
    ("res2net50_26w_4s", {"num_classes": 10}, [f"class{i}" for i in range(10)], "me/r2n50-ft", "res2net50_26w_4s"),
    ("res2net17_slim", {"num_classes": 4}, ["shirt", "bag", "boot", "coat"], "me/slim", "r2n_res2net17_slim"),
    ("res2net_dla60", {}, None, "me/dla", "dla60_res2net"),
]

SCRIPT = textwrap.dedent('''
    import sys, torch
    import timm
    repos, needs_res2net, x_path = sys.argv[1].split(","), set(sys.argv[2].split(",")), sys.argv[3]
    x, out = torch.load(x_path), {}
    with torch.no_grad():
        for repo in repos:
            if repo in needs_res2net:  # before res2net registers its models, timm does not know them
                try:
                    timm.create_model("hf-hub:" + repo, pretrained=True)
                except RuntimeError as exc:
                    out["unknown:" + repo] = str(exc)
            else:
                out["timm:" + repo] = timm.create_model("hf-hub:" + repo, pretrained=True).eval()(x)
        out["res2net imported by plain timm"] = "res2net" in sys.modules
        import res2net
        res2net.register_timm_models()
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        for repo in repos:
            if repo in needs_res2net:
                out["timm:" + repo] = timm.create_model("hf-hub:" + repo, pretrained=True).eval()(x)
            model = AutoModelForImageClassification.from_pretrained(repo).eval()
            out["transformers:" + repo] = model(x).logits
            out["labels:" + repo] = [model.config.id2label[i] for i in range(model.config.num_labels)]
            out["data:" + repo] = AutoImageProcessor.from_pretrained(repo).data_config
    torch.save(out, x_path + ".out")
''')


def test_save_pretrained_folder_loads_in_timm_and_transformers(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    ours, folders = {}, {}
    for name, kwargs, classes, repo, architecture in CASES:
        model = randomize_norms(res2net.create_model(name, **kwargs))
        folder = save_pretrained(model, tmp_path / name, classes=classes, metrics={"top1": 0.9})
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == architecture and config["num_classes"] == model.num_classes
        assert config.get("label_names") == classes and config["res2net"]["classes"] == classes
        assert config["res2net"]["metrics"] == {"top1": 0.9} and config["res2net"]["model"] == name
        hub_cache(tmp_path / "hf" / "hub", repo, {f.name: f.read_bytes() for f in folder.iterdir()})
        with torch.no_grad():
            ours[repo] = model(x)
        folders[name] = folder
    # the layouts: timm's keys (DLA without the 18 unused project keys); our official keys under an r2n_ name
    dla_keys = set(load_file(str(folders["res2net_dla60"] / "model.safetensors")))
    assert dla_keys == set(timm.create_model("dla60_res2net").state_dict())
    card = (folders["res2net17_slim"] / "README.md").read_text()
    assert "pip install res2net" in card and "res2net.register_timm_models()" in card
    assert "library_name: timm" in (folders["res2net_dla60"] / "README.md").read_text()
    # our own loader reads every folder back: head, classes, same function
    for name, _, classes, repo, _ in CASES:
        back = res2net.create_model(name, pretrained=str(folders[name])).eval()
        assert getattr(back, "class_names", None) == classes
        with torch.no_grad():
            torch.testing.assert_close(back(x), ours[repo], rtol=0, atol=0)

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_VERBOSITY="error")
    repos = [c[3] for c in CASES]
    needs = [c[3] for c in CASES if c[4].startswith("r2n_")]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(repos), ",".join(needs), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "x.pt.out")
    assert out["res2net imported by plain timm"] is False  # timm's own models, no res2net installed or imported
    assert "Unknown model (r2n_res2net17_slim)" in out["unknown:me/slim"]
    for name, _, classes, repo, _ in CASES:
        torch.testing.assert_close(out["timm:" + repo], ours[repo], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["transformers:" + repo], ours[repo], rtol=1e-5, atol=1e-5)
        if classes:
            assert out["labels:" + repo] == classes
        card = res2net.model_card(name, with_complexity=False)
        assert out["data:" + repo]["input_size"] == (3, card["input_size"], card["input_size"])
        assert out["data:" + repo]["mean"] == tuple(card["mean"])


def test_scale1_baseline_folder_is_timms_layout(tmp_path: Path) -> None:
    """A ResNet-50 folder (scale 1: our convs.0/bns.0 are timm's and torchvision's conv2/bn2) names timm's
    resnet50 and holds its keys: timm loads it strictly (``local-dir:``), and so do we."""
    model = randomize_norms(res2net.create_model("resnet50", num_classes=3))
    folder = save_pretrained(model, tmp_path / "r50", classes=["a", "b", "c"])
    assert json.loads((folder / "config.json").read_text())["architecture"] == "resnet50"
    keys = set(load_file(str(folder / "model.safetensors")))
    assert keys == set(timm.create_model("resnet50", num_classes=3).state_dict())
    x = torch.randn(1, 3, 64, 64)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    back = res2net.load_model(str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert back.class_names == ["a", "b", "c"]
