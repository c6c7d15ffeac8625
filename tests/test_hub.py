"""hubconf.py through torch.hub (source="local": nothing is downloaded)."""

import importlib.util
import sys
from pathlib import Path

import torch

import res2net
from res2net.models import MODELS

REPO = str(Path(__file__).resolve().parents[1])


def load_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_lists_every_zoo_model_with_a_docstring():
    hubconf = load_hubconf()
    # what torch.hub.list / help read: the public callables of hubconf and their docstrings
    entries = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert set(entries) == {s.name for s in MODELS}
    assert hubconf.dependencies == ["torch", "torchvision"]
    doc = hubconf.res2net50_v1b_26w_4s.__doc__
    assert "Res2Net-50 v1b" in doc and "CC BY-NC-SA 4.0" in doc
    assert "no weights are published" in hubconf.res2net17_slim.__doc__
    assert str(Path(REPO) / "src") in sys.path  # hubconf makes src/ importable without an install


def test_hub_load_builds_the_zoo_model():
    model = torch.hub.load(REPO, "res2net17_slim", source="local", num_classes=3, in_chans=1).eval()
    ours = res2net.create_model("res2net17_slim", num_classes=3, in_chans=1).eval()
    ours.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))
    feats = torch.hub.load(REPO, "res2net_dla60", source="local", features_only=True, out_indices=(2, 4))
    assert feats.feature_info.channels() == [256, 1024]
