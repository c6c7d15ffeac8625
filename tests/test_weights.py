"""Weight sources, sharing a model (save_pretrained) and fine-tuning from each kind of source, all offline: the
Hugging Face cache is laid out on disk by the tests with files they write, read with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest
import torch
from torch import nn

import res2net
from res2net.cli import main
from res2net.data import fashion_mnist as fm
from res2net.errors import CheckpointError
from res2net.weights import adapt_input_channels, save_pretrained

HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
MODEL = "res2net17_slim"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrong key mapping changes the output."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model.eval()


def hub_cache(root: Path, repo: str, files: Dict[str, bytes]) -> Path:
    """A Hugging Face Hub cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>/<file>)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def safetensors_bytes(state: Dict[str, torch.Tensor], tmp: Path) -> bytes:
    from safetensors.torch import save_file

    path = tmp / "tmp.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


HUB_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    import res2net, res2net.models.registry as registry
    registry.OFFICIAL_URL = "file:///nonexistent/res2net/"   # the official host is unreachable here
    name, pretrained, x_path = sys.argv[1], sys.argv[2], sys.argv[3]
    model = res2net.create_model(name, pretrained=True if pretrained == "True" else pretrained).eval()
    with torch.no_grad():
        torch.save(model(torch.load(x_path)), x_path + ".out")
''')


def run_offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RES2NET_CACHE=str(tmp_path / "cache"),
               TORCH_HOME=str(tmp_path / "torch"))
    return subprocess.run([sys.executable, "-c", HUB_SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("ours, timm_name", [("res2net50_26w_4s", "res2net50_26w_4s"),
                                              ("res2net_dla60", "dla60_res2net")])
def test_pretrained_true_falls_back_to_timms_hub_copy(tmp_path: Path, ours: str, timm_name: str) -> None:
    """pretrained=True: the official URL fails (named on stderr), timm's Hub copy (timm layout, safetensors
    preferred over a broken pytorch_model.bin) loads, and the model computes timm's function on those weights."""
    import timm

    peer = randomize_norms(timm.create_model(timm_name, pretrained=False))
    hub_cache(tmp_path / "cache" / "huggingface", f"timm/{timm_name}.in1k",
              {"model.safetensors": safetensors_bytes(peer.state_dict(), tmp_path),
               "pytorch_model.bin": b"broken: must not be read"})
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    proc = run_offline(tmp_path, ours, "True", str(tmp_path / "x.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nonexistent" in proc.stderr and f"used hf-hub:timm/{timm_name}.in1k instead" in proc.stderr
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "x.pt.out"), peer(x), rtol=1e-4, atol=1e-4)


def test_hf_hub_id_and_every_source_failing(tmp_path: Path) -> None:
    """An explicit hf-hub id with a revision reads the cache; pretrained=True with nothing reachable fails
    with one error naming each source, and leaves nothing in the caches."""
    source = randomize_norms(res2net.create_model(MODEL, num_classes=7))
    hub_cache(tmp_path / "cache" / "huggingface", "someone/slim",
              {"model.safetensors": safetensors_bytes(source.state_dict(), tmp_path)})
    x = torch.randn(1, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    proc = run_offline(tmp_path, MODEL, "hf-hub:someone/slim@main", str(tmp_path / "x.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "x.pt.out"), source(x), rtol=0, atol=0)

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    proc = run_offline(tmp_path, "res2next50", "True", str(tmp_path / "x.pt"))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "no weights for res2next50" in last and "res2next50_4s-6ef7e7bf.pth" in last
    assert "hf-hub:timm/res2next50.in1k" in last
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == before  # no partial file


def test_corrupt_safetensors_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*cannot be read"):
        res2net.create_model(MODEL, pretrained=str(bad))


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    """A folder with config.json, model.safetensors and a model card loads back with its head, classes and
    preprocessing; safetensors and .pth copies of the same weights give the same function."""
    from res2net.data.preprocessing import Preprocessing

    model = randomize_norms(res2net.create_model(MODEL, num_classes=3, in_chans=1))
    classes = ["cat", "dog", "bird"]
    prep = Preprocessing(28, (0.3,), (0.35,), 1.0, "bilinear")
    folder = save_pretrained(model, tmp_path / "shared", MODEL, classes=classes, preprocessing=prep,
                             metrics={"top1": 0.5}, command="res2net train ...", data="fashion-mnist")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    # timm's name for the folder's model: timm has no res2net17_slim, so our registered r2n_ name
    assert config["architecture"] == "r2n_" + MODEL and config["res2net"]["classes"] == classes
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert "Licence" in (folder / "README.md").read_text()
    loaded = res2net.create_model(MODEL, pretrained=str(folder)).eval()
    assert loaded.num_classes == 3 and loaded.class_names == classes and loaded.preprocessing == prep
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    save_pretrained(loaded, folder, MODEL)  # overwriting keeps one complete folder, no leftovers beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def test_load_model_writes_the_weights_preprocessing_into_pretrained_cfg(tmp_path: Path) -> None:
    """One loader, one preprocessing: a folder's preprocessing is in ``model.pretrained_cfg`` (timm's keys, what
    the runtimes and timm's data config read) and ``model.preprocessing`` alike; save_pretrained reads the
    model's name from the model; torch.compile's ``_orig_mod.`` prefix is taken off a state dict."""
    from res2net.data.preprocessing import Preprocessing
    from res2net.weights import parse_pretrained, unwrap_state_dict

    model = randomize_norms(res2net.create_model(MODEL, num_classes=3, in_chans=1))
    prep = Preprocessing(28, (0.3,), (0.35,), 1.0, "bicubic")
    folder = save_pretrained(model, tmp_path / "a", classes=["x", "y", "z"], preprocessing=prep)
    loaded = res2net.load_model(str(folder))
    cfg = loaded.pretrained_cfg
    assert loaded.preprocessing == prep and cfg["architecture"] == MODEL
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["crop_pct"], cfg["interpolation"]) == \
        ((1, 28, 28), (0.3,), (0.35,), 1.0, "bicubic")
    again = json.loads((save_pretrained(loaded, tmp_path / "b") / "config.json").read_text())
    assert again["architecture"] == "r2n_" + MODEL and again["res2net"]["preprocessing"] == prep.to_dict()
    assert again["res2net"]["classes"] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="give name="):
        save_pretrained(nn.Linear(2, 2), tmp_path / "c")
    assert [parse_pretrained(v) for v in (True, "official", "", None, False, "w.pth")] == \
        [True, True, False, False, False, "w.pth"]
    with pytest.raises(CheckpointError, match="give the model name"):
        res2net.load_model("official")
    weight = torch.ones(2)
    assert unwrap_state_dict({"module._orig_mod.fc.weight": weight}) == {"fc.weight": weight}
    assert unwrap_state_dict({"model": {"_orig_mod.fc.weight": weight}}) == {"fc.weight": weight}


def test_adapt_input_channels_follows_timms_convention() -> None:
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_input_channels(w, 1), w.sum(1, keepdim=True))
    grey = torch.rand(1, 1, 5, 5)
    # a 3-channel conv on a grey image (equal R, G, B) equals the adapted 1-channel conv on it
    torch.testing.assert_close(nn.functional.conv2d(grey.expand(1, 3, 5, 5), w),
                               nn.functional.conv2d(grey, adapt_input_channels(w, 1)))
    w1 = torch.randn(4, 1, 3, 3)
    torch.testing.assert_close(nn.functional.conv2d(grey.expand(1, 3, 5, 5), adapt_input_channels(w1, 3)),
                               nn.functional.conv2d(grey, w1))


# ---- fine-tuning and prediction through the CLI ---------------------------------------------------------
FT = ["--model", MODEL, "--set", "data.classes=[5,6,7,8,9]", "--set", "data.train_per_class=8",
      "--set", "data.test_subset=40", "--batch-size", "8", "--epochs", "1", "--quiet", "--workers", "0",
      "--amp", "off"]


def frozen_state(run: Path) -> Dict[str, torch.Tensor]:
    return torch.load(run / MODEL / "last.pt", weights_only=True)["model"]


@needs_fmnist
def test_linear_probe_from_each_kind_of_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A pretrained 3-channel 10-class model fine-tuned (linear probe: the backbone stays bit-identical) on
    5 Fashion-MNIST classes from a .pth, a safetensors file, an HF cache entry and one of our run folders:
    the first convolution is the channel sum, the classifier is re-initialised and says so."""
    from safetensors.torch import save_file

    source = randomize_norms(res2net.create_model(MODEL))
    state = source.state_dict()
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for tag, src in (("pth", tmp_path / "w.pth"), ("st", tmp_path / "w.safetensors")):
        out = tmp_path / tag
        assert main(["train", *FT, "--pretrained", str(src), "--linear-probe", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "conv1.weight adapted from 3 to 1" in err and "classifier re-initialised" in err
        got = frozen_state(out)
        torch.testing.assert_close(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
        for key in ("layer3.1.convs.2.weight", "layer3.1.bns.2.running_var", "bn1.running_mean"):
            assert torch.equal(got[key], state[key]), key
        assert got["fc.weight"].shape == (5, state["fc.weight"].shape[1])
    # our run folder (its pretrained/ folder, 1 channel, 5 classes of the same data): the classifier is kept
    assert main(["train", *FT, "--pretrained", str(tmp_path / "st" / MODEL), "--frozen-stages", "3",
                 "--out", str(tmp_path / "again")]) == 0
    assert "classifier kept" in capsys.readouterr().err
    # a file of another architecture: its missing/unexpected keys, exit 2
    torch.save(res2net.create_model("res2net20_cifar").state_dict(), tmp_path / "other.pth")
    assert main(["train", *FT, "--pretrained", str(tmp_path / "other.pth"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "other.pth does not fit res2net17_slim" in err and "shape mismatches" in err
    assert main(["train", *FT, "--frozen-stages", "7", "--out", str(tmp_path / "y")]) == 2
    assert "[-1, 3]" in capsys.readouterr().err


@needs_fmnist
def test_finetune_from_hf_cache_offline(tmp_path: Path) -> None:
    """`res2net train --pretrained hf-hub:...` in a fresh process that reads the Hub cache offline."""
    source = randomize_norms(res2net.create_model(MODEL))
    hub_cache(tmp_path / "cache" / "huggingface", "me/slim",
              {"model.safetensors": safetensors_bytes(source.state_dict(), tmp_path)})
    env = dict(os.environ, HF_HUB_OFFLINE="1", RES2NET_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "res2net.cli", "train", *FT, "--pretrained", "hf-hub:me/slim",
                           "--linear-probe", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = frozen_state(tmp_path / "run")
    assert torch.equal(got["layer2.0.conv3.weight"], source.state_dict()["layer2.0.conv3.weight"])


def test_weights_command_lists_sources_and_cache(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path))
    (tmp_path / "official").mkdir()
    (tmp_path / "official" / "res2net50_26w_4s-06e79181.pth").write_bytes(b"12345")
    assert main(["weights", "res2net50_26w_4s", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["license"] == "CC BY-NC-SA 4.0"
    official, hub = rows[0]["sources"]
    assert official["cached"] and official["bytes"] == 5 and official["sha256"].startswith("5994471a")
    assert hub["source"] == "hf-hub:timm/res2net50_26w_4s.in1k" and not hub["cached"]
    assert main(["weights", "nothing*"]) == 2


def test_fetched_weights_for_another_model_are_refused(tmp_path: Path) -> None:
    folder = save_pretrained(res2net.create_model(MODEL), tmp_path / "m", MODEL)
    with pytest.raises(CheckpointError, match=f"holds {MODEL}, not resnet17_slim"):
        res2net.create_model("resnet17_slim", pretrained=str(folder))


def test_a_cached_official_file_is_checked_on_use_and_repaired_by_download(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub checks the hash of a download only: a cached copy truncated later was loaded or failed with a
    pickle error naming nothing. Now its hash is checked on every use, the error names the file, and
    `res2net weights download` replaces it."""
    import dataclasses

    from res2net.models import registry
    from res2net.weights import sources
    from res2net.weights.io import sha256_of

    model = randomize_norms(res2net.create_model(MODEL))
    host = tmp_path / "host"
    host.mkdir()
    staged = host / "staged.pth"
    torch.save(model.state_dict(), staged)
    fname = f"{MODEL}-{sha256_of(staged)[:8]}.pth"
    staged.rename(host / fname)
    real_get_spec = registry.get_spec
    monkeypatch.setattr(registry, "OFFICIAL_URL", host.as_uri() + "/")
    monkeypatch.setattr(registry, "get_spec", lambda n: dataclasses.replace(real_get_spec(n), weights_file=fname))
    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(res2net.create_model(MODEL, pretrained=True).eval()(x), want)
    cached = sources.official_cache() / fname
    cached.write_bytes(cached.read_bytes()[:-100])  # truncated after the download
    with pytest.raises(CheckpointError, match=f"cached file {cached} does not match the hash in its name"):
        res2net.create_model(MODEL, pretrained=True)
    assert main(["weights", "download", MODEL]) == 0
    assert "does not match its hash; downloading it again" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.equal(res2net.create_model(MODEL, pretrained=True).eval()(x), want)


def test_integer_or_bool_tensors_are_refused_as_weights() -> None:
    from res2net.weights.load import load_state_dict_strict

    model = res2net.create_model(MODEL)
    state = model.state_dict()
    state["fc.weight"] = (state["fc.weight"] > 0)
    state["conv1.weight"] = state["conv1.weight"].round().to(torch.int64)
    with pytest.raises(CheckpointError, match="2 integer or bool tensors for real weights: conv1.weight: torch.int64"):
        load_state_dict_strict(model, state, "w.pt")


def test_a_hand_edited_config_json_is_validated(tmp_path: Path) -> None:
    """config.json's preprocessing and classes are checked when read: a std of 0 (NaN inputs), an input size of 0,
    classes that are not a list of names each get one line naming the file and the value."""
    from res2net.weights.hub import CONFIG_FILE, FORMAT_TAG

    folder = save_pretrained(randomize_norms(res2net.create_model(MODEL, num_classes=3)), tmp_path / "m",
                             classes=["a", "b", "c"])
    good = json.loads((folder / CONFIG_FILE).read_text())
    for edit, needle in ((lambda c: c["preprocessing"].update(std=[0.0, 0.2, 0.2]), "std [0.0, 0.2, 0.2]"),
                         (lambda c: c["preprocessing"].update(input_size=0), "input_size 0"),
                         (lambda c: c.update(classes="a,b,c"), "classes must be a list of names")):
        config = json.loads(json.dumps(good))
        edit(config[FORMAT_TAG])
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=f"config.json: .*{re.escape(needle)}"):
            res2net.load_model(folder)


def test_nan_weights_and_a_timm_copy_edited_alone_are_refused(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 probe: NaN weights loaded and predicted "prob nan"; config.json's timm copy (``num_classes``,
    ``pretrained_cfg.mean``: what timm and transformers read) edited by hand was ignored by res2net; a cache folder
    that is a file was listed as an empty cache. Each is refused, naming the file."""
    from res2net.weights.hub import CONFIG_FILE
    from res2net.weights.load import load_state_dict_strict
    from res2net.weights.sources import cache_root

    model = res2net.create_model(MODEL)
    state = model.state_dict()
    state["layer1.0.bn1.running_var"] = torch.full_like(state["layer1.0.bn1.running_var"], float("nan"))
    with pytest.raises(CheckpointError, match="w.pt .*1 tensors with NaN or infinite values: layer1.0.bn1"):
        load_state_dict_strict(model, state, "w.pt")

    folder = save_pretrained(randomize_norms(res2net.create_model(MODEL, num_classes=3)), tmp_path / "m",
                             classes=["a", "b", "c"])
    good = json.loads((folder / CONFIG_FILE).read_text())
    for edit, needle in ((lambda c: c.update(num_classes=7), "num_classes is 7"),
                         (lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5]), "pretrained_cfg.mean is [0.5, 0.5]")):
        config = json.loads(json.dumps(good))
        edit(config)
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=f"config.json: {re.escape(needle)}"):
            res2net.load_model(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(good))
    res2net.load_model(folder)  # the file as written loads

    (tmp_path / "c").write_text("x")
    with pytest.raises(CheckpointError, match="--cache-dir .* is a file"):
        cache_root(tmp_path / "c")
    monkeypatch.setenv("RES2NET_CACHE", str(tmp_path / "c"))
    with pytest.raises(CheckpointError, match=r"\$RES2NET_CACHE .* is a file"):
        cache_root()


def test_sources_that_all_fail_are_said_once_and_a_hub_error_names_the_repository(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 probe: a failing official file was printed as a warning and then again in the error (two lines);
    an unreachable hf-hub:ORG/REPO was reported as "model.safetensors: LocalEntryNotFoundError", no repository."""
    from res2net.weights import sources

    missing = [sources.Source("file", str(tmp_path / f"w{i}.pth")) for i in range(2)]
    monkeypatch.setattr(sources, "known_sources", lambda name: missing)
    with pytest.raises(CheckpointError, match="no weights for res2net17_slim: .*w0.pth.* | .*w1.pth"):
        sources.fetch_first(MODEL, True)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="^hf-hub:nobody/nothing: "):
        res2net.load_model("hf-hub:nobody/nothing", cache_dir=tmp_path / "cache")
