"""res2net convert: file round trips through every layout (bit-identical), verification, atomic writes, the CLI."""

from __future__ import annotations

import os

import pytest
import torch

from res2net import create_model
from res2net.weights import layouts as L
from res2net.cli import main
from res2net.weights.convert import convert_checkpoint, read_state_dict
from res2net.errors import CheckpointError

V1B = "res2net50_v1b_26w_4s"


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    torch.manual_seed(1)
    state = create_model(V1B).state_dict()
    for key, value in state.items():
        if value.dtype.is_floating_point:
            value.add_(torch.randn_like(value), alpha=0.01)
        else:
            value.fill_(7)
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    torch.save({"state_dict": state}, path)
    return path, state


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("to,ext", [("timm", "safetensors"), ("mmdet", "pth"), ("mmpretrain", "safetensors"),
                                    ("detectron2", "pkl"), ("official", "safetensors")])
def test_file_round_trip_bit_identical(official_file, tmp_path, to, ext):
    src, state = official_file
    out = tmp_path / f"{to}.{ext}"
    report = convert_checkpoint(src, out, to)  # model inferred
    assert (report.model, report.source_layout, report.target_layout) == (V1B, "official", to)
    converted = read_state_dict(out)
    assert set(converted) == set(L.layout_shapes(V1B, to))
    back_file = tmp_path / "back.pth"
    back_report = convert_checkpoint(out, back_file, "official", model=V1B)
    assert back_report.source_layout in (to, "official")
    back = read_state_dict(back_file)
    dropped = set(L.dropped_keys(V1B, to))
    assert set(back) == set(state) - dropped
    assert all(_bits_equal(back[k], state[k]) for k in back)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_cli_pth_and_safetensors(official_file, tmp_path, capsys):
    src, state = official_file
    assert main(["convert", str(src), str(tmp_path / "m.safetensors"), "--to", "mmpretrain"]) == 0
    out = capsys.readouterr().out
    assert "official layout" in out and "mmpretrain layout, safetensors, 524 tensors" in out
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "d.bin"), "--to", "detectron2",
                 "--format", "pth", "--model", V1B]) == 0
    d2 = torch.load(tmp_path / "d.bin", weights_only=True)
    assert "res2.0.conv1.norm.weight" in d2 and "fc.weight" not in d2
    assert _bits_equal(d2["stem.bn1.running_var"], state["bn1.running_var"])


def test_cli_bad_input(official_file, tmp_path, capsys):
    src, state = official_file
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(src), str(tmp_path / "x.pth"), "--to", "keras"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path), "--to", "timm"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "no" / "x.pth"), "--to", "timm"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # mmdet has no v1 Res2Net
    v1 = tmp_path / "v1.pth"
    torch.save(create_model("res2net50_26w_4s").state_dict(), v1)
    assert main(["convert", str(v1), str(tmp_path / "y.pth"), "--to", "mmdet"]) == 2
    assert "deep stem" in capsys.readouterr().err
    # keys of no known layout: the nearest layouts with their counts
    foreign = {("head." + k if i % 3 == 0 else k): v for i, (k, v) in enumerate(state.items())}
    torch.save(foreign, tmp_path / "foreign.pth")
    assert main(["convert", str(tmp_path / "foreign.pth"), str(tmp_path / "z.pth"), "--to", "timm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fit no known layout" in err and "missing" in err and "unexpected" in err
    assert main(["convert", str(tmp_path / "foreign.pth"), str(tmp_path / "z.pth"), "--to", "timm",
                 "--model", V1B]) == 2
    assert "nearest: official:" in capsys.readouterr().err
    assert not (tmp_path / "z.pth").exists()


def test_dst_untouched_when_verification_fails(official_file, tmp_path, monkeypatch):
    src, _ = official_file
    dst = tmp_path / "keep.pth"
    dst.write_bytes(b"previous content")
    import res2net.weights.convert as convert

    real_write = convert._write

    def corrupting_write(state_dict, path, fmt, meta):  # flips one value on its way to disk
        state_dict = dict(state_dict)
        key = "layer1.0.conv1.weight"
        state_dict[key] = state_dict[key].clone()
        state_dict[key].view(-1)[0] += 1
        real_write(state_dict, path, fmt, meta)

    monkeypatch.setattr(convert, "_write", corrupting_write)
    with pytest.raises(CheckpointError, match="bit|does not"):
        convert_checkpoint(src, dst, "timm", overwrite=True)
    assert dst.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["keep.pth"]


def test_pickle_reader_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": Evil()}}))
    with pytest.raises(CheckpointError, match="refusing"):
        read_state_dict(path)


def test_timm_checkpoint_to_official_loads_in_our_model(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("res2net50_26w_4s")
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    report = convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "ours.pth", "official")
    assert report.model == "res2net50_26w_4s" and "res2net50_26w_4s_299" in report.candidates
    ours = create_model("res2net50_26w_4s").eval()
    ours.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.eval()(x))


@pytest.mark.parametrize("timm_name, ours", [("dla60_res2net", "res2net_dla60"), ("dla60_res2next", "res2next_dla60"),
                                              ("dla60", "dla60")])
def test_dla_timm_to_official_and_back_bit_identical(tmp_path, capsys, timm_name, ours):
    """timm's DLA files lack the 18 unused official ``project`` keys: timm -> official -> timm through the CLI
    gives timm's tensors bit for bit, and the official file (complete without them) loads into our model."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model(timm_name).eval()
    for value in reference.state_dict().values():
        value.add_(torch.randn_like(value), alpha=0.01) if value.dtype.is_floating_point else value.fill_(3)
    source = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(source, str(tmp_path / f"{timm_name}.safetensors"))
    official, back = tmp_path / "official.pth", tmp_path / "back.safetensors"
    assert main(["convert", str(tmp_path / f"{timm_name}.safetensors"), str(official), "--to", "official",
                 "--model", ours]) == 0
    assert "timm layout" in capsys.readouterr().out
    assert main(["convert", str(official), str(back), "--to", "timm"]) == 0
    again = read_state_dict(back)
    assert set(again) == set(source) and all(_bits_equal(again[k], source[k]) for k in source)
    model = create_model(ours, pretrained=str(official)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_convert_never_writes_over_its_source_nor_an_existing_file_unasked(official_file, tmp_path, capsys):
    """`convert a.pth a.pth` replaced the source (and dropped its fc); an existing DST is replaced only with
    --overwrite; --format must agree with DST's suffix."""
    src, _ = official_file
    copy = tmp_path / "a.pth"
    copy.write_bytes(open(src, "rb").read())
    before = copy.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["convert", str(copy), str(copy), "--to", "mmdet", *extra]) == 2
        assert "is the command's own input" in capsys.readouterr().err
    other = tmp_path / "user.pth"
    other.write_bytes(b"the user's file")
    assert main(["convert", str(copy), str(other), "--to", "timm"]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert other.read_bytes() == b"the user's file" and copy.read_bytes() == before
    assert main(["convert", str(copy), str(tmp_path / "t.pth"), "--to", "timm", "--format", "safetensors"]) == 2
    assert "--format safetensors disagrees with DST 't.pth'" in capsys.readouterr().err
    assert main(["convert", str(copy), str(other), "--to", "timm", "--overwrite"]) == 0
    assert read_state_dict(other)
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "user.pth"]


def test_integer_or_nan_weights_are_refused_for_every_target(official_file, tmp_path, capsys):
    """Issue 22 probe: an int64 state_dict converted to mmpretrain (a layout checked by keys and shapes only) was
    written without a word; integer, bool and NaN tensors are refused naming SRC, whatever the target."""
    _, state = official_file
    for name, edit in (("int.pth", lambda s: {k: v.to(torch.int64) for k, v in s.items()}),
                       ("nan.pth", lambda s: {**s, "fc.weight": torch.full_like(s["fc.weight"], float("nan"))})):
        src = tmp_path / name
        torch.save(edit(state), src)
        assert main(["convert", str(src), str(tmp_path / f"o-{name}"), "--to", "mmpretrain"]) == 2
        err = capsys.readouterr().err
        assert str(src) in err and ("integer or bool" in err if name == "int.pth" else "NaN" in err), err
        assert not (tmp_path / f"o-{name}").exists()
