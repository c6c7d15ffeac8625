"""A plain install (no extras) works, and each optional feature names the extra that installs it.

The optional packages are left out of a subprocess's view of site-packages (what a venv without the extras
sees); the commands must end in one line naming ``res2net[<extra>]`` and exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "skimage", "scikit_image", "timm", "openvino", "nncf",
            "segmentation_models_pytorch", "pytorch_grad_cam", "grad_cam", "py_sod_metrics", "pysodmetrics")
SRC = Path(__file__).resolve().parents[1] / "src"


def plain_site(root: Path) -> Path:
    """A site-packages view without the optional packages: every entry of this interpreter's site-packages
    linked, except the optional packages and their metadata (what a venv without the extras holds)."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    view = root / "site"
    view.mkdir()
    for entry in site.iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower().replace("-", "_")
        if top in OPTIONAL or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)
    return view


def run_without_extras(argv: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """``res2net ARGV`` in a fresh interpreter that sees no optional package (no site-packages processing:
    ``-S``; the linked view and src/ on the path)."""
    code = (f"import sys; sys.path[:0] = [{str(plain_site(cwd))!r}, {str(SRC)!r}]; "
            f"from res2net.cli import main; sys.exit(main({argv!r}))")
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_plain_install_lists_and_describes_models(tmp_path: Path) -> None:
    for i, argv in enumerate((["models", "res2net50*"], ["info", "res2net17_slim"])):
        (tmp_path / str(i)).mkdir()
        proc = run_without_extras(argv, tmp_path / str(i))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "res2net" in proc.stdout


@pytest.mark.parametrize("argv, extra", [
    (["export", "--model", "res2net17_slim", "--format", "onnx", "--out", "m.onnx"], "export"),
    (["cam", "--model", "res2net17_slim", "--out", "cam"], "analysis"),
    (["bench", "--models", "res2net50_26w_4s", "--input-size", "32", "--batch-sizes", "1", "--repeats", "1",
      "--no-memory"], "bench"),  # timm is the peer of this model
])
def test_missing_optional_package_names_its_extra(tmp_path: Path, argv: List[str], extra: str) -> None:
    proc = run_without_extras(argv, tmp_path)
    assert proc.returncode == 2, (proc.stdout[-1000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert f"res2net[{extra}]" in lines[-1], proc.stderr[-2000:]
    assert not (tmp_path / "m.onnx").exists()
