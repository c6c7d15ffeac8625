"""mmdetection's Res2Net against ours, with the real mmdet 3.3.0 (installed from PyPI with mmengine and
mmcv-lite: wheels, no compiler, torch unchanged).

mmcv-lite has no compiled ops, and ``mmdet/models/__init__.py`` imports every model (some need them), so the test
loads mmdet's own backbone files (``layers/res_layer.py``, ``backbones/resnet.py``, ``backbones/res2net.py``)
unmodified under empty parent packages; they need only ``mmcv.cnn``, ``mmengine`` and ``mmdet.registry``.

The fact pinned: mmdet's ``Bottle2neck`` skips the 3x3 average pool of the untouched split in a stride-1 stage
block (``layer1.0``), where the official code, timm, mmpretrain and ours apply it. Converted weights load strictly,
but the stage maps differ; with ``layer1.0``'s pool removed from ours, the maps are equal.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from res2net import create_model
from res2net.weights import layouts
from test_weights import randomize_norms

mmdet = pytest.importorskip("mmdet")
pytest.importorskip("mmengine")
pytest.importorskip("mmcv.cnn")

V1B = "res2net50_v1b_26w_4s"


def mmdet_res2net_class() -> type:
    """mmdet's ``Res2Net`` backbone class, from its installed source files."""
    if "mmdet.models.backbones.res2net" in sys.modules:
        return sys.modules["mmdet.models.backbones.res2net"].Res2Net
    root = Path(mmdet.__file__).parent / "models"
    for package, folder in (("mmdet.models", root), ("mmdet.models.layers", root / "layers"),
                            ("mmdet.models.backbones", root / "backbones")):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(folder)]
            sys.modules[package] = module
    for name, file in (("mmdet.models.layers.res_layer", "layers/res_layer.py"),
                       ("mmdet.models.backbones.resnet", "backbones/resnet.py"),
                       ("mmdet.models.backbones.res2net", "backbones/res2net.py")):
        spec = importlib.util.spec_from_file_location(name, root / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if name.endswith("res_layer"):
            sys.modules["mmdet.models.layers"].ResLayer = module.ResLayer
    return sys.modules["mmdet.models.backbones.res2net"].Res2Net


def test_mmdet_res2net_skips_the_stride_1_stage_pool():
    torch.manual_seed(0)
    ours = randomize_norms(create_model(V1B, features_only=True, out_indices=(1, 2, 3, 4)))
    theirs = mmdet_res2net_class()(depth=50, scales=4, base_width=26, out_indices=(0, 1, 2, 3))
    theirs.eval()  # mmdet's ResNet.train returns None
    converted = layouts.from_official(ours.state_dict(), V1B, "mmdet")
    assert set(converted) == set(theirs.state_dict())
    theirs.load_state_dict(converted, strict=True)  # the layout is right: every key and shape
    # a smooth ImageNet-normalised image (a photo's scale: neighbouring pixels close)
    x = nn.functional.interpolate(torch.rand(1, 3, 14, 14), size=128, mode="bilinear", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want, got = ours(x), theirs(x)
        assert [tuple(f.shape) for f in want] == [tuple(f.shape) for f in got]
        relative = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(want, got)]
        assert all(r > 1e-3 for r in relative), relative  # every stage map differs (C2 first, then carried on)
        assert ours.layer1[0].pool is not None and not hasattr(theirs.layer1[0], "pool")  # mmdet makes none
        assert hasattr(theirs.layer2[0], "pool")  # ... only for strided stage blocks
        ours.layer1[0].pool = None  # mmdet's block: the untouched split of layer1.0 passes unpooled
        for a, b in zip(ours(x), got):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_convert_to_mmdet_says_so(tmp_path, capsys):
    from res2net.cli import main

    torch.save(create_model(V1B).state_dict(), tmp_path / "official.pth")
    assert main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "mmdet.pth"), "--to", "mmdet"]) == 0
    out = capsys.readouterr().out
    assert "note: mmdet 3.3.0's Res2Net is not the official network" in out and "layer1.0" in out
