"""The zoo inside timm: registration, data config, and timm's own tests/test_models.py run on our models.

timm's test file is not part of this repository: it is fetched from timm's source distribution on PyPI (the
installed version) with pip at test time, and run unmodified; a conftest.py written next to it registers our
models (before the file is imported: its parametrisations are computed at import) and deselects every other
model and the tests that need a download.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

import res2net
from res2net.models import MODELS, build_model

timm = pytest.importorskip("timm")

# timm's per-model tests that need no download (test_model_load_pretrained / _features_pretrained download
# weights); the slow unmarked test_prune_intermediate_layers_contract runs with R2N_TIMM_MODELS=all
TIMM_TESTS = ["test_model_forward", "test_model_backward", "test_model_default_cfgs",
              "test_model_forward_torchscript", "test_model_forward_features", "test_model_forward_intermediates",
              "test_model_forward_intermediates_features", "test_model_forward_fx", "test_model_backward_fx",
              "test_model_forward_fx_torchscript"]
# CI: one model per code path (default / deep stem, DLA, grouped + SE + CIFAR stem, small, scale 1);
# R2N_TIMM_MODELS=all (or a comma-separated list) runs other models; docs/MODELS.md records a 10-model run
CI_MODELS = ["res2net50_26w_4s", "res2net50_v1b_26w_4s", "res2next_dla60", "se_res2next29_6cx24wx4s",
             "res2net17_slim", "resnet17_slim"]

CONFTEST = '''
import os

import res2net

MODELS = os.environ["R2N_TIMM_MODELS"].split(",")
TESTS = set(os.environ["R2N_TIMM_TESTS"].split(","))
NAMES = set(res2net.register_timm_models(MODELS).values())


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (keep if params.get("model_name") in NAMES and item.originalname in TESTS else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
'''


def test_register_timm_models_names_and_cfgs():
    names = res2net.register_timm_models()
    assert list(names) == [s.name for s in MODELS]
    assert all(t == "r2n_" + n for n, t in names.items())
    assert set(names.values()) <= set(timm.list_models("r2n_*"))
    assert res2net.register_timm_models(["res2net50d"]) == {"res2net50_v1b_26w_4s": "r2n_res2net50_v1b_26w_4s"}
    by_module = {m: set(timm.list_models(module=m)) for m in ("resnet", "dla")}
    for spec in MODELS:
        tname = names[spec.name]
        assert tname in by_module[spec.family]  # timm selects forward_intermediates models by module
        cfg = timm.models.get_pretrained_cfg(tname)
        assert cfg.input_size == (3, spec.input_size, spec.input_size)
        assert (cfg.mean, cfg.std, cfg.crop_pct, cfg.interpolation) == (spec.mean, spec.std, spec.crop_pct,
                                                                      spec.interpolation)
        if spec.weights_file:  # timm's copy of the official weights, and their licence
            assert cfg.url == spec.url and cfg.hf_hub_id == f"timm/{spec.timm_name}.in1k"
            assert cfg.license == "cc-by-nc-sa-4.0"
        else:
            assert not cfg.has_weights


@pytest.mark.parametrize("name", ["res2net17_slim", "res2next29_6cx24wx4s", "res2net50_26w_4s_299",
                                  "res2net_dla60", "res2net26_lite"])
def test_timm_data_config_is_the_card(name):
    tname = res2net.register_timm_models([name])[name]
    with torch.device("meta"):
        model = timm.create_model(tname)
    card = res2net.model_card(name, with_complexity=False)
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, card["input_size"], card["input_size"])
    assert (data["mean"], data["std"], data["crop_pct"]) == (card["mean"], card["std"], card["crop_pct"])
    assert data["interpolation"] == card["interpolation"]


def test_timm_create_model_builds_ours():
    tname = res2net.register_timm_models(["res2net_dla60"])["res2net_dla60"]
    model = timm.create_model(tname, num_classes=7, in_chans=1).eval()
    ours = build_model("res2net_dla60", num_classes=7, in_chans=1).eval()
    assert type(model) is type(ours) and list(model.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x))
    assert model.pretrained_cfg["input_size"] == (1, 224, 224) and model.pretrained_cfg["architecture"] == tname
    feats = timm.create_model(tname, features_only=True, out_indices=(1, 3))
    assert feats.feature_info.channels() == [128, 512] and feats.feature_info.reduction() == [4, 16]
    with pytest.raises(ValueError, match="feature_cls 'fx'"):
        timm.create_model(tname, features_only=True, feature_cls="fx")
    with pytest.raises(TypeError):
        timm.create_model(tname, drop_block_rate=0.1)  # an argument we do not implement is refused, not dropped


@pytest.mark.parametrize("name", ["res2net17_slim", "res2net_dla60"])
def test_timm_drop_rate_is_dropout_before_the_classifier(name):
    """timm's drop_rate: dropout on the pooled features in training; in eval the model is the plain one."""
    tname = res2net.register_timm_models([name])[name]
    torch.manual_seed(0)
    model = timm.create_model(tname, drop_rate=0.5, num_classes=5)
    plain = timm.create_model(tname, num_classes=5)
    plain.load_state_dict(model.state_dict())
    assert model.drop_rate == 0.5 and plain.drop_rate == 0.0
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        features = model.forward_features(x)
        model.train()
        pooled = model.forward_head(features, pre_logits=True)
        kept = plain.forward_head(features, pre_logits=True)
        live = kept != 0
        zeros = (pooled == 0) & live
        assert 0.3 < zeros[live].float().mean() < 0.7  # about half the features dropped ...
        torch.testing.assert_close(pooled[~zeros], kept[~zeros] * 2)  # ... the rest scaled by 1 / (1 - p)
        assert not torch.equal(model.forward_head(features), plain.forward_head(features))
    with pytest.raises(ValueError, match="drop_rate"):
        timm.create_model(tname, drop_rate=1.5)


def test_timm_pretrained_cfg_overlay_names_the_weights(tmp_path, monkeypatch):
    """pretrained_cfg_overlay's file, url, hf_hub_id and state_dict are the weights timm's users pass; each loads
    exactly those weights (not the default ones), and the resolved cfg says where they came from."""
    from safetensors.torch import save_file

    name = "res2net17_slim"
    tname = res2net.register_timm_models([name])[name]
    torch.manual_seed(0)
    source = timm.create_model(tname, num_classes=3).eval()
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path / "cache"))
    from test_weights import hub_cache

    hub_cache(tmp_path / "cache" / "huggingface", "me/slim", {"model.safetensors": (tmp_path / "w.safetensors")
                                                                  .read_bytes()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = source(x)
        for overlay in (dict(file=str(tmp_path / "w.safetensors")), dict(file=str(tmp_path / "w.pth")),
                        dict(url=(tmp_path / "w.pth").as_uri()), dict(hf_hub_id="me/slim"),
                        dict(state_dict=state)):
            model = timm.create_model(tname, pretrained=True, pretrained_cfg_overlay=overlay).eval()
            torch.testing.assert_close(model(x), want, rtol=0, atol=0, msg=str(list(overlay)))
            assert model.num_classes == 3 and "state_dict" not in model.pretrained_cfg
            key = next(iter(overlay))
            if key != "state_dict":
                assert model.pretrained_cfg[key] == overlay[key]
    with pytest.raises(res2net.errors.CheckpointError, match="names no weights"):
        timm.create_model(res2net.register_timm_models(["res2net50_26w_4s"])["res2net50_26w_4s"], pretrained=True,
                          pretrained_cfg_overlay=dict(url="", hf_hub_id=None))


# ---- timm's own tests/test_models.py -----------------------------------------------------------------------

def timm_test_file() -> Path:
    """timm's tests/test_models.py of the installed version, from its sdist on PyPI (cached per version)."""
    version = timm.__version__
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "res2net" / f"timm-{version}-tests"
    target = cache / "test_models.py"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"timm=={version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob("timm-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            pytest.skip(f"pip could not fetch timm=={version}'s sdist from PyPI: "
                        f"{(done.stderr.strip().splitlines() or ['no file'])[-1]}")
        with tarfile.open(sdists[0]) as tar:
            member = tar.getmember(f"timm-{version}/tests/test_models.py")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
    cache.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_bytes(data)
    os.replace(tmp_target, target)
    return target


def run_timm_tests(models: List[str], tests: List[str], workdir: Path) -> Dict[Tuple[str, str], str]:
    """Run timm's test file on ``models``; {(test, timm model name): "passed" | "failed" | "skipped"}."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "test_models.py").write_bytes(timm_test_file().read_bytes())
    (workdir / "conftest.py").write_text(CONFTEST)
    (workdir / "pytest.ini").write_text("[pytest]\n")  # not the repository's configuration
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}  # timm trims its tests on GitHub
    env.update(R2N_TIMM_MODELS=",".join(models), R2N_TIMM_TESTS=",".join(tests))
    report = workdir / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-c",
           str(workdir / "pytest.ini"), "--rootdir", str(workdir), f"--junitxml={report}", "-W", "ignore",
           str(workdir / "test_models.py")]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if not report.exists():
        raise AssertionError(f"timm's tests did not run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test, _, params = case.get("name", "").partition("[")
        model = next(p for p in params.rstrip("]").split("-") if p.startswith("r2n_"))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[(test, model)] = outcome
    return results


@pytest.mark.slow
def test_timm_model_tests_pass(tmp_path):
    chosen = os.environ.get("R2N_TIMM_MODELS", "")  # "all", or comma-separated names: + the slow prune test
    models = [s.name for s in MODELS] if chosen == "all" else chosen.split(",") if chosen else CI_MODELS
    tests = TIMM_TESTS + ["test_prune_intermediate_layers_contract"] if chosen else TIMM_TESTS
    results = run_timm_tests(models, tests, tmp_path / "timm_tests")
    expected = {(t, "r2n_" + m) for t in tests for m in models}
    assert set(results) == expected, sorted(expected ^ set(results))[:10]
    failed = sorted(k for k, v in results.items() if v != "passed")
    assert not failed, failed


def test_segmentation_models_pytorch_unet_with_our_encoder():
    """A framework built on timm encoders takes ours by name: smp's ``tu-`` encoders (timm's features_only)."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    tname = res2net.register_timm_models(["res2net26_lite"])["res2net26_lite"]
    torch.manual_seed(0)
    net = smp.Unet(encoder_name="tu-" + tname, encoder_weights=None, classes=3)
    assert net.encoder.out_channels == [3, 32, 128, 256, 512, 1024]
    body = build_model("res2net26_lite", features_only=True)
    body.load_state_dict(net.encoder.model.state_dict())  # the encoder is our FeatureExtractor, same keys
    x = torch.randn(2, 3, 64, 64)
    net.eval(), body.eval()
    with torch.no_grad():
        for theirs, ours in zip(net.encoder(x)[1:], body(x)):
            torch.testing.assert_close(theirs, ours)
        assert net(x).shape == (2, 3, 64, 64)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    target = torch.randint(0, 3, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(net(x), target)
    loss.backward()
    assert all(p.grad is not None for p in net.encoder.parameters())
    opt.step()


def test_segmentation_models_pytorch_refuses_our_dla_in_one_line():
    """smp asks DLA encoders for timm's DLA indices (level0 = 0); ours start at level1: one line says what to use."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    tname = res2net.register_timm_models(["res2net_dla60"])["res2net_dla60"]
    with pytest.raises(ValueError) as info:
        smp.Unet(encoder_name="tu-" + tname, encoder_weights=None, classes=3)
    message = str(info.value)
    assert "\n" not in message and "segmentation_models_pytorch" in message and "r2n_res2net50_26w_4s" in message
    assert "(1, 2, 3, 4, 5)" in message
    assert timm.create_model(tname, features_only=True, out_indices=(0, 4)).feature_info.reduction() == [2, 32]
