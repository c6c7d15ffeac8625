"""The model zoo against real references: official checkpoint layouts, timm, torchvision."""

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import res2net
import res2net.weights
from res2net.weights import load_state_dict_strict, to_our_layout
from res2net.errors import CheckpointError
from res2net.models import DLA, MODELS, FeatureExtractor, ResNet, UnknownModelError, get_spec, model_complexity
from res2net.models.common import UnusedWeights
from res2net.models.registry import count_params

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dicts.json"
OFFICIAL = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
needs_reference = pytest.mark.skipif(not OFFICIAL, reason=f"{REFERENCE} not present")

# Counted from the code (not the paper) for the rows without an official checkpoint; the official ones come from
# the reference file and torchvision/timm below.
PINNED_PARAMS = {
    "res2net50_18w_4s": 18_095_104, "se_res2net50_26w_4s": 28_230_112, "res2net152_26w_4s": 61_275_248,
    "res2net152_v1b_26w_4s": 61_294_480, "se_resnet50": 28_088_024,  # = timm seresnet50
    "resnext29_8x64d": 34_518_948, "resnext29_16x64d": 68_247_460, "res2next29_6cx24wx4s": 23_705_732,
    "res2next29_8cx25wx4s": 32_957_436, "res2next29_6cx24wx6s": 36_146_180,
}


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return res2net.create_model(name, **kw)


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics so parity tests exercise every normalisation."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@needs_reference
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_state_dict_layout_and_params(name):
    model = meta_model(name)
    ref = OFFICIAL[name]
    assert count_params(model) == ref["params"]
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(ref["state_dict"].items())  # same keys, same order, same shapes


def test_issue_table_params():
    expected = {"res2net50_26w_4s": 25_699_120, "res2net50_48w_2s": 25_287_304, "res2net50_14w_8s": 25_059_816,
                "res2net50_26w_6s": 37_051_448, "res2net50_26w_8s": 48_403_776, "res2net101_26w_4s": 45_206_688,
                "res2next50": 24_671_464, "res2net50_v1b_26w_4s": 25_718_352, "res2net101_v1b_26w_4s": 45_225_920,
                "res2net_dla60": 21_145_544, "res2next_dla60": 17_330_456, **PINNED_PARAMS}
    for name, params in expected.items():
        assert count_params(meta_model(name)) == params, name


@pytest.mark.parametrize("ours,theirs", [("resnet50", "resnet50"), ("resnext50_32x4d", "resnext50_32x4d"),
                                         ("resnet101", "resnet101"), ("resnet152", "resnet152")])
def test_baselines_match_torchvision(ours, theirs):
    peer = getattr(torchvision.models, theirs)().eval()
    model = res2net.create_model(ours).eval()
    assert count_params(model) == count_params(peer)
    if ours == "resnet50":  # torchvision's weights load through the key adapter and give the same function
        randomize_norms(peer)
        load_state_dict_strict(model, to_our_layout(peer.state_dict(), ours, model), "torchvision resnet50")
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), peer(x), rtol=1e-5, atol=1e-5)


def test_small_models_pair_with_same_budget_baselines():
    small = [s for s in MODELS if {"small", "lite"} & set(s.tags) and s.baseline]
    assert len(small) >= 5
    for spec in small:
        ours, base = count_params(meta_model(spec.name)), count_params(meta_model(spec.baseline))
        assert abs(ours - base) / base < 0.02, (spec.name, ours, spec.baseline, base)
        assert get_spec(spec.baseline).arch.scale == 1 and spec.arch.scale > 1


def test_macs_paper_convention():
    params, macs = model_complexity("res2net50_26w_4s")
    assert params == 25_699_120
    assert abs(macs - 4.26e9) / 4.26e9 < 0.01
    for name in ("res2net50_48w_2s", "res2net50_14w_8s", "res2next50", "res2net_dla60"):
        assert 4.1e9 < model_complexity(name)[1] < 4.3e9, name  # the "4.2G" models of the paper
    assert abs(model_complexity("res2net50_18w_4s")[1] - 2.9e9) < 0.05e9  # Res2Net-50-L, Table 3


TIMM_ROWS = [s for s in MODELS if s.timm_name]


@pytest.mark.parametrize("spec", TIMM_ROWS, ids=[s.name for s in TIMM_ROWS])
def test_parity_with_timm(spec):
    timm = pytest.importorskip("timm")
    model = randomize_norms(res2net.create_model(spec.name))
    peer = timm.create_model(spec.timm_name, pretrained=False).eval()
    peer_keys = set(peer.state_dict())
    state = {(k if k in peer_keys else k.replace(".convs.0.", ".conv2.").replace(".bns.0.", ".bn2.")): v
             for k, v in model.state_dict().items()}
    result = peer.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    if spec.family == "dla":  # timm drops the 18 never-used `project` keys of the official DLA checkpoints
        assert len(result.unexpected_keys) == 18 and all(".project." in k for k in result.unexpected_keys)
    else:
        assert result.unexpected_keys == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model(x), peer(x)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_aliases_and_unknown_names():
    assert get_spec("res2net50d").name == "res2net50_v1b_26w_4s"
    assert get_spec("dla60_res2next").name == "res2next_dla60"
    with pytest.raises(UnknownModelError, match="did you mean: res2net50_26w_4s"):
        res2net.create_model("res2net50_26w_4")
    assert "res2net50_26w_4s" in res2net.list_models("res2net50*")
    assert res2net.list_models("nothing*") == []


def test_model_card():
    card = res2net.model_card("res2net50_26w_4s")
    assert card["params"] == 25_699_120 and card["paper_top1_err"] == 22.01
    assert card["url"].endswith("res2net50_26w_4s-06e79181.pth") and card["sha256_prefix"] == "06e79181"
    assert card["input_size"] == 224 and card["mean"] == (0.485, 0.456, 0.406)
    assert res2net.model_card("res2net50_26w_4s_299")["input_size"] == 299


# --- features, dilation, freezing ---------------------------------------------------------------------------

@pytest.mark.parametrize("output_stride,strides", [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                   (8, [2, 4, 8, 8, 8])])
def test_features_and_output_stride(output_stride, strides):
    model = res2net.create_model("res2net50_26w_4s", features_only=True, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert [64 // f.shape[-1] for f in feats] == strides
    assert [i["reduction"] for i in model.feature_info] == strides
    # the stage block's AvgPool follows the stride change
    pool = model.layer4[0].pool
    assert pool.stride == (2 if output_stride == 32 else 1)
    assert model.layer4[1].convs[0].dilation == ((1, 1) if output_stride == 32 else (2, 2) if output_stride == 16
                                                 else (4, 4))


def test_features_out_indices_dla_and_cifar():
    dla = res2net.create_model("res2net_dla60", features_only=True, out_indices=(2, 4)).eval()
    with torch.no_grad():
        feats = dla(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 8, 8), (1024, 2, 2)]
    assert [i["num_chs"] for i in dla.feature_info] == [256, 1024]
    cifar = res2net.create_model("res2next29_6cx24wx4s", features_only=True)
    assert [i["reduction"] for i in cifar.feature_info] == [1, 1, 2, 4]


def test_frozen_stages_and_norm_eval():
    model = res2net.create_model("res2net50_26w_4s", num_classes=10, frozen_stages=2, norm_eval=False)
    model.train()
    frozen = [model.conv1, model.bn1, model.layer1, model.layer2]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.")):
            assert torch.equal(before[key], after[key]), key  # weights and running stats untouched
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    model = res2net.create_model("res2net_dla60", norm_eval=True).train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="frozen_stages"):
        res2net.create_model("res2net50_26w_4s", frozen_stages=5)


def test_drop_path_is_applied():
    torch.manual_seed(0)
    model = res2net.create_model("res2net20_cifar", drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))  # stochastic in training
    model.eval()
    assert torch.equal(model(x), model(x))
    rates = [b.drop_path.p for b in model.modules() if isinstance(b, res2net.Res2NetBlock) and b.drop_path]
    assert rates == sorted(rates) and max(rates) == pytest.approx(0.5)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = res2net.create_model("res2net20_cifar")
    b = res2net.create_model("res2net20_cifar", grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a(x).sum().backward()
    b(x).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net_dla60", "se_res2next29_6cx24wx4s"])
def test_torchscript(name):
    model = res2net.create_model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.slow
def test_torch_compile():
    model = res2net.create_model("res2net20_cifar").eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


# --- features wrapper, timm's model API, fx ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["res2net50_v1b_26w_4s", "res2net_dla60", "res2next29_6cx24wx4s"])
def test_features_only_is_a_wrapper_over_the_plain_model(name, tmp_path):
    plain = res2net.create_model(name).eval()
    feats = res2net.create_model(name, features_only=True).eval()
    assert type(feats) is FeatureExtractor and type(plain) in (ResNet, DLA)
    assert list(feats.state_dict()) == [k for k in plain.state_dict() if not k.startswith("fc.")]
    feats.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = feats(x)
        final, inter = plain.forward_intermediates(x)
        torch.testing.assert_close(final, plain.forward_features(x), rtol=0, atol=0)
        for a, b in zip(maps, inter):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert feats.feature_info.channels() == [m.shape[1] for m in maps] == plain.feature_info.channels()
        assert feats.feature_info.reduction() == [64 // m.shape[-1] for m in maps]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(feats)
        assert all(torch.equal(a, b) for a, b in zip(scripted(x), maps))
        torch.save(feats, tmp_path / "feats.pt")  # an ordinary module: pickles as itself
        again = torch.load(tmp_path / "feats.pt", weights_only=False)
        assert all(torch.equal(a, b) for a, b in zip(again(x), maps))
    body = FeatureExtractor(plain, out_indices=(1,))  # the wrapper shares (does not copy) the trunk's modules
    assert all(getattr(body, n) is getattr(plain, n) for n in plain.stage_names) and type(plain) in (ResNet, DLA)


def test_no_class_swapping_in_src():
    src = Path(res2net.__file__).parent
    assert not [p for p in src.rglob("*.py") if "__class__ =" in p.read_text()]


def test_forward_intermediates_indices_and_stop_early():
    model = res2net.create_model("res2net20_cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        assert [f.shape[1] for f in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [128, 256]
        last2 = model.forward_intermediates(x, indices=[-1, 1], intermediates_only=True)
        assert torch.equal(last2[0], full[-1]) and torch.equal(last2[1], full[1])
        final, maps = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(final, full[1]) and torch.equal(maps[0], full[1])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[7])
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([1]) == [1]
    assert pruned.num_features == pruned.head_hidden_size == 64 and pruned.num_classes == 0
    assert not any(k.startswith(("layer2.", "layer3.")) for k in pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_features(x), full[1], rtol=0, atol=0)


def test_head_api_and_global_pool():
    model = res2net.create_model("res2net20_cifar", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) and model.get_classifier() is model.fc
        model.reset_classifier(4, "")  # no pooling: the same linear classifier at every position
        model.fc.load_state_dict(res2net.create_model("res2net20_cifar", num_classes=4).fc.state_dict())
    model = res2net.create_model("res2net20_cifar", num_classes=4, global_pool="").eval()
    ref = res2net.create_model("res2net20_cifar", num_classes=4).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        dense = model(x)
        assert dense.shape == (2, 4, 8, 8)
        torch.testing.assert_close(dense.mean((2, 3)), ref(x))  # linear head: mean of dense logits = logits
    model.reset_classifier(0, "avg")
    assert model(x).shape == (2, 256) and isinstance(model.fc, nn.Identity)
    model.to(torch.float64).train()
    model.reset_classifier(9)
    assert model.fc.weight.dtype == torch.float64 and model.fc.training
    dla = res2net.create_model("res2net_dla60", num_classes=3, global_pool="max").eval()
    assert dla(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="global_pool"):
        res2net.create_model("res2net20_cifar", global_pool="catavgmax")
    groups = model.group_matcher()
    assert groups["stem"] and groups["blocks"] and model.no_weight_decay() == set()


def test_pretrained_cfg_on_the_model():
    model = meta_model("res2net50_26w_4s_299")
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["input_size"] == (3, 299, 299)
    with torch.no_grad():
        assert tuple(model.forward_features(torch.zeros(1, 3, 299, 299, device="meta")).shape[-2:]) == cfg["pool_size"]
    assert cfg["first_conv"] + ".weight" in model.state_dict() and cfg["classifier"] == "fc"
    assert meta_model("res2net50_v1b_26w_4s").pretrained_cfg["first_conv"] == "conv1.0"
    official = meta_model("res2net_dla60").pretrained_cfg
    assert official["hf_hub_id"] == "timm/dla60_res2net.in1k" and official["license"] == "cc-by-nc-sa-4.0"
    assert res2net.model_card("res2net17_slim")["input_size"] == 32  # the card keeps an int
    grey = meta_model("res2net17_slim", in_chans=1).pretrained_cfg
    assert grey["input_size"] == (1, 32, 32) and grey["mean"] == (0.5,)


def test_dla_unused_project_weights_are_buffers_and_every_parameter_learns():
    model = res2net.create_model("res2net_dla60", num_classes=5).train()
    unused = [n for n, m in model.named_modules() if isinstance(m, UnusedWeights) and n.endswith("project")]
    assert unused == ["level3.project", "level4.tree1.project", "level4.project"]
    keys = [k for k in model.state_dict() if k.startswith(tuple(n + "." for n in unused))]
    buffers = dict(model.named_buffers())
    assert len(keys) == 18 and all(k in buffers for k in keys)  # the 18 official keys forward never uses
    weights = [k for k in keys if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # timm's backward test
    assert count_params(model) == sum(p.numel() for p in model.parameters()) + sum(
        buffers[k].numel() for k in weights)


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2next_dla60", "se_res2next29_6cx24wx4s"])
def test_fx_and_torchvision_feature_extractor(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = res2net.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    traced = torch.fx.symbolic_trace(model)
    nodes = {info["module"]: f"C{i + 1}" for i, info in enumerate(model.feature_info)}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
        out = extractor(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert list(out) == list(nodes.values())
    for got, want in zip(out.values(), maps):
        torch.testing.assert_close(got, want, rtol=0, atol=0)



def test_fx_traces_a_training_model_with_drop_path():
    """create_feature_extractor traces train and eval mode: drop-path must trace too (same random mask)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = res2net.create_model("res2net17_slim", drop_path_rate=0.2).train()
    x = torch.randn(4, 3, 32, 32)
    traced = torch.fx.symbolic_trace(model)
    assert any(n.op == "call_function" and n.target is res2net.layers.drop_path for n in traced.graph.nodes)
    extractor = create_feature_extractor(model, return_nodes={"layer2": "C3"})
    torch.manual_seed(0)
    want = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(traced(x), want, rtol=0, atol=0)
    channels = {info["module"]: info["num_chs"] for info in model.feature_info}
    assert extractor(x)["C3"].shape[1] == channels["layer2"]

# --- checkpoints ----------------------------------------------------------------------------------------------

def write_checkpoint(tmp_path: Path, name: str, model: nn.Module, wrap: bool = False) -> Path:
    path = tmp_path / "tmp.pth"
    torch.save({"state_dict": model.state_dict()} if wrap else model.state_dict(), path)
    digest = res2net.weights.sha256_of(path)
    final = tmp_path / f"{name}-{digest[:8]}.pth"
    path.rename(final)
    return final


def test_pretrained_round_trip_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    source = randomize_norms(res2net.create_model("res2net_dla60"))
    path = write_checkpoint(tmp_path, "res2net_dla60", source, wrap=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        for pretrained in (str(path), path.as_uri()):
            loaded = res2net.create_model("res2net_dla60", pretrained=pretrained).eval()
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert (tmp_path / "hub" / "hub" / "checkpoints" / path.name).exists()  # cached by torch.hub
    # a new classifier: everything but fc loads, with a warning saying so
    with pytest.warns(UserWarning, match="classifier 'fc' not loaded"):
        res2net.create_model("res2net_dla60", pretrained=str(path), num_classes=7)


def test_hash_mismatch_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    model = res2net.create_model("res2net20_cifar")
    good = write_checkpoint(tmp_path, "res2net20_cifar", model)
    bad = good.with_name("res2net20_cifar-deadbeef.pth")
    good.rename(bad)
    with pytest.raises(CheckpointError, match="hash mismatch"):
        res2net.create_model("res2net20_cifar", pretrained=bad.as_uri())
    assert not (tmp_path / "hub" / "hub" / "checkpoints" / bad.name).exists()
    with pytest.raises(CheckpointError, match="SHA-256 does not start with deadbeef"):
        res2net.create_model("res2net20_cifar", pretrained=str(bad))


def test_wrong_keys_listed(tmp_path):
    state = res2net.create_model("res2net50_26w_4s").state_dict()
    del state["layer1.0.convs.0.weight"]
    state["layer9.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: layer1.0.convs.0.weight; 1 unexpected keys: "
                                              r"layer9.weight"):
        res2net.create_model("res2net50_26w_4s", pretrained=str(path))
    with pytest.raises(CheckpointError, match="shape mismatches: layer1.0.conv1.weight"):
        res2net.create_model("res2net50_14w_8s", pretrained=str(tmp_path / "wrong.pth"))


def test_corrupt_and_unsafe_checkpoints(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(res2net.create_model("res2net20_cifar").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    for path, message in ((tmp_path / "missing.pth", "does not exist"), (truncated, "cannot be read"),
                          (tmp_path / "empty.pth", "empty")):
        if path.name == "empty.pth":
            path.write_bytes(b"")
        with pytest.raises(CheckpointError, match=message):
            res2net.create_model("res2net20_cifar", pretrained=str(path))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": res2net.create_model("res2net20_cifar")}, unsafe)  # a pickled module: not weights-only
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        res2net.create_model("res2net20_cifar", pretrained=str(unsafe))
    # the reason, not torch's paragraph of advice to load it with weights_only=False
    assert "Unsupported global: GLOBAL res2net.models.resnet.ResNet" in str(info.value)
    assert "weights_only` set to `False`" not in str(info.value) and "\n" not in str(info.value)


def test_no_official_weights_for_unreleased_model():
    with pytest.raises(CheckpointError, match="no official weights"):
        res2net.create_model("res2net152_26w_4s", pretrained=True)


# --- bad input ---------------------------------------------------------------------------------------------

def test_input_checks():
    model = res2net.create_model("res2net50_26w_4s", num_classes=3).eval()
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 16, 16))
    gray = res2net.create_model("res2net20_cifar", in_chans=1)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(output_stride=12), "output_stride 12 is not possible"),
    (dict(features_only=True, out_indices=(0, 7)), "out_indices"),
    (dict(in_chans=0), "in_chans"),
    (dict(num_classes=-1), "num_classes"),
    (dict(drop_path_rate=1.5), "drop_path_rate"),
    (dict(drop_rate=1.5), "drop_rate"),
])
def test_invalid_create_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        res2net.create_model("res2net50_26w_4s", **kwargs)


def test_unknown_keyword_is_not_swallowed():
    with pytest.raises(TypeError):
        res2net.create_model("res2net50_26w_4s", drop_block_rate=0.1)  # timm's, not implemented here


@settings(max_examples=25, deadline=None)
@given(scale=st.integers(-1, 6), base_width=st.integers(-2, 40), cardinality=st.integers(0, 4),
       layers=st.lists(st.integers(1, 2), min_size=3, max_size=3), se=st.booleans())
def test_random_configurations(scale, base_width, cardinality, layers, se):
    kwargs = dict(planes=(8, 16, 32), stem="cifar", stem_width=8, scale=scale, base_width=base_width,
                  cardinality=cardinality, se_reduction=4 if se else 0, num_classes=5)
    valid = scale >= 1 and cardinality >= 1 and base_width * 8 >= 64
    if not valid:
        with pytest.raises(ValueError, match="scale|base_width|cardinality"):
            ResNet(layers, **kwargs)
        return
    model = ResNet(layers, **kwargs).eval()
    width = (8 * base_width // 64) * cardinality
    assert model.layer1[0].convs[0].in_channels == width and len(model.layer1[0].convs) == max(1, scale - 1)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_dla_rejects_dilation():
    with pytest.raises(ValueError, match="output_stride"):
        DLA(output_stride=16)


# --- CLI ------------------------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "res2net.cli", *args], capture_output=True, text=True)


def test_cli_models_and_info():
    out = run_cli("models", "res2net50_26w_4s")
    assert out.returncode == 0 and "25,699,120" in out.stdout and "22.01" in out.stdout and "4.26" in out.stdout
    out = run_cli("info", "res2net50d", "--json")
    card = json.loads(out.stdout)
    assert card["name"] == "res2net50_v1b_26w_4s"
    assert [f["shape"] for f in card["features"]][-1] == [2048, 7, 7]


def test_cli_errors_without_traceback():
    out = run_cli("info", "res2net50_26w_4ss")
    assert out.returncode == 2 and "did you mean" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("models", "zzz*")
    assert out.returncode == 2 and "no model matches" in out.stderr
