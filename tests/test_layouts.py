"""Key layouts (res2net.weights.layouts): renaming rules against the real timm/torchvision models and against the key/shape
fixtures derived by hand from mmdetection, mmpretrain and the detectron2 port (tests/fixtures/layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from res2net import create_model
from res2net.weights import layouts as L
from res2net.errors import CheckpointError
from res2net.models import MODELS, get_spec

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "layouts").glob("*.json"))
V1_V1B = ("res2net50_26w_4s", "res2net50_v1b_26w_4s")


def _random_state(name: str) -> dict:
    """The model's state dict with every tensor perturbed by random values (buffers too; running_var > 0)."""
    torch.manual_seed(0)
    state = create_model(name).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif value.dtype.is_floating_point:
            value.add_(torch.randn_like(value), alpha=0.01)
        else:
            value.fill_(int(torch.randint(1, 10_000, ())))
    return state


def _meta_state(shapes: dict) -> dict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize("name", V1_V1B)
def test_round_trip_every_layout_bit_identical(name):
    state = _random_state(name)
    layouts = L.layouts_for(name)
    assert layouts == (("official", "timm", "mmpretrain") if "v1b" not in name else
                       ("official", "timm", "mmdet", "mmpretrain", "detectron2"))
    for layout in layouts:
        converted = L.from_official(state, name, layout)
        assert L.detect_layout(converted, name).layout in (layout, "official")  # official == timm keys
        back = L.to_official(converted, name, layout)
        dropped = L.dropped_keys(name, layout)
        assert list(back) == [k for k in state if k not in dropped]
        for key, value in back.items():
            assert value.dtype == state[key].dtype and torch.equal(value, state[key]), (layout, key)
        assert dropped == ([k for k in state if k.startswith("fc.")] if layout in ("mmdet", "detectron2") else [])


@pytest.mark.parametrize("name", ["res2net101_26w_4s", "res2net101_v1b_26w_4s"])
def test_round_trip_101_on_meta(name):
    state = _meta_state(L.official_shapes(name))
    for layout in L.layouts_for(name):
        converted = L.from_official(state, name, layout)
        assert L.detect_layout(converted, name).layout in (layout, "official")
        back = L.to_official(converted, name)
        assert all(back[k] is state[k] for k in back)
        assert set(state) - set(back) == set(L.dropped_keys(name, layout))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_layout_equals_hand_derived_fixture(path):
    doc = json.loads(path.read_text())
    header = doc["header"]
    assert header["read_from"]["repository"] and all(len(f["commit"]) == 40 for f in header["read_from"]["files"])
    expected = {k: tuple(v) for k, v in doc["state_dict"].items()}
    assert L.layout_shapes(header["model"], header["layout"]) == expected
    assert L.detect_layout(_meta_state(expected), header["model"]).layout == header["layout"]


def test_fixtures_cover_the_brief():
    have = {(p.stem.split("__")[0], p.stem.split("__")[1]) for p in FIXTURES}
    for layout in ("mmdet", "mmpretrain", "detectron2"):
        assert (layout, "res2net50_v1b_26w_4s") in have
    assert ("mmpretrain", "res2net50_26w_4s") in have


@pytest.mark.parametrize("layout", ["mmdet", "detectron2"])
def test_v1_not_held_by_deep_stem_only_backbones(layout):
    with pytest.raises(ValueError, match="deep stem"):
        L.key_map("res2net50_26w_4s", layout)
    with pytest.raises(ValueError, match="torchvision has only"):
        L.key_map("res2net50_26w_4s", "torchvision")
    with pytest.raises(ValueError, match="unknown layout"):
        L.key_map("res2net50_26w_4s", "keras")


def test_timm_layout_is_timm_models_state_dict():
    timm = pytest.importorskip("timm")
    for spec in MODELS:
        if not spec.timm_name:
            continue
        with torch.device("meta"):
            reference = timm.create_model(spec.timm_name)
        assert L.layout_shapes(spec.name, "timm") == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(L.dropped_keys("res2net_dla60", "timm")) == 18


@pytest.mark.parametrize("name,timm_name", [("res2net50_26w_4s", "res2net50_26w_4s"),
                                            ("res2net50_v1b_26w_4s", "res2net50d"), ("resnet50", "resnet50")])
def test_timm_strict_load_same_output(name, timm_name):
    timm = pytest.importorskip("timm")
    ours = create_model(name).eval()
    ours.load_state_dict(_random_state(name))
    reference = timm.create_model(timm_name).eval()
    reference.load_state_dict(L.from_official(ours.state_dict(), name, "timm"), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), ours(x), rtol=1e-4, atol=1e-4)


def test_torchvision_strict_load():
    torchvision = pytest.importorskip("torchvision")
    for name in L.TORCHVISION_NAMES:
        with torch.device("meta"):
            reference = getattr(torchvision.models, L.TORCHVISION_NAMES[name])()
        assert L.layout_shapes(name, "torchvision") == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = create_model("resnet50").eval()
    reference = torchvision.models.resnet50().eval()
    reference.load_state_dict(L.from_official(ours.state_dict(), "resnet50", "torchvision"), strict=True)
    back = L.to_official(reference.state_dict(), "resnet50")
    ours.load_state_dict(back, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), ours(x))


def test_detect_wrappers_and_partial_sources():
    name = "res2net50_v1b_26w_4s"
    state = _meta_state(L.official_shapes(name))
    ddp = {"module." + k: v for k, v in state.items()}
    assert (L.detect_layout(ddp, name).layout, L.detect_layout(ddp, name).prefix) == ("official", "module.")
    # an mmdetection detector checkpoint: backbone + neck + heads
    detector = {"backbone." + k: v for k, v in L.from_official(state, name, "mmdet").items()}
    detector["neck.lateral_convs.0.conv.weight"] = torch.empty(256, 256, 1, 1, device="meta")
    match = L.detect_layout(detector, name)
    assert (match.layout, match.prefix) == ("mmdet", "backbone.")
    assert set(L.to_official(detector, name)) == set(state) - {"fc.weight", "fc.bias"}
    # a detectron2 FPN model (backbone.bottom_up.) with FrozenBatchNorm (no num_batches_tracked)
    d2 = {"backbone.bottom_up." + k: v for k, v in L.from_official(state, name, "detectron2").items()
          if not k.endswith("num_batches_tracked")}
    d2["proposal_generator.rpn_head.conv.weight"] = torch.empty(256, 256, 3, 3, device="meta")
    assert L.detect_layout(d2, name).layout == "detectron2"
    back = L.to_official(d2, name)
    assert back["bn1.num_batches_tracked"].item() == 0 and "fc.weight" not in back
    # mmpretrain without its head, a timm model saved with num_classes=0
    headless = {k: v for k, v in L.from_official(state, name, "mmpretrain").items() if not k.startswith("head.")}
    match = L.detect_layout(headless, name)
    assert match.layout == "mmpretrain" and match.classifier_absent
    # a half classifier is not a missing classifier
    half = {k: v for k, v in state.items() if k != "fc.bias"}
    assert L.detect_layout(half, name).layout is None


def test_detect_report_for_foreign_keys():
    name = "res2net50_v1b_26w_4s"
    state = L.from_official(_meta_state(L.official_shapes(name)), name, "detectron2")
    foreign = {("foo." + k if i % 5 == 0 else k): v for i, (k, v) in enumerate(state.items())}
    match = L.detect_layout(foreign, name)
    assert match.layout is None and match.scores[0].layout == "detectron2"
    assert match.scores[0].unexpected == len([k for k in foreign if k.startswith("foo.")])
    text = match.describe()
    assert "fit no known layout" in text and "detectron2:" in text and "missing" in text and "unexpected" in text
    with pytest.raises(CheckpointError, match="nearest: detectron2"):
        L.to_official(foreign, name)
    wrong_shape = dict(L.official_shapes(name))
    wrong_shape["fc.weight"] = (10, 2048)
    match = L.detect_layout(_meta_state(wrong_shape), name)
    assert match.layout is None and match.scores[0].mismatched == 1


def test_infer_model():
    mmdet101 = _meta_state(L.layout_shapes("res2net101_v1b_26w_4s", "mmdet"))
    assert [(m.model, m.layout) for m in L.infer_model(mmdet101)] == [("res2net101_v1b_26w_4s", "mmdet")]
    official50 = _meta_state(L.official_shapes("res2net50_26w_4s"))
    assert [m.model for m in L.infer_model(official50)] == ["res2net50_26w_4s", "res2net50_26w_4s_299"]
    assert L.infer_model({"x.weight": torch.empty(3, device="meta")}) == []
    assert get_spec("res2net50d").name in L.convertible_models()
