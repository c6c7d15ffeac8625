"""The one atomic writer (res2net.files): published files follow the umask, an interrupted write leaves the
previous file and no temporary, a folder is swapped whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from res2net.files import atomic_write, publish, usual_mode


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_published_file_has_the_umask_mode_not_the_temporary_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.json") as tmp:
            assert _mode(tmp) == 0o600  # what mkstemp gives
            tmp.write_text("{}")
        assert _mode(tmp_path / "a.json") == 0o644 == usual_mode()
        with atomic_write(tmp_path / "folder", directory=True) as tmp:
            (tmp / "x.bin").write_bytes(b"1")
        assert _mode(tmp_path / "folder") == 0o755
        assert _mode(tmp_path / "folder" / "x.bin") == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path, error: type) -> None:
    dest = tmp_path / "model.pth"
    dest.write_text("previous")
    with pytest.raises(error):
        with atomic_write(dest, suffix=".pth") as tmp:
            assert tmp.suffix == ".pth" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise error("cut")
    assert dest.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_keep_previous_and_folder_swap(tmp_path: Path) -> None:
    dest = tmp_path / "last.pt"
    dest.write_text("epoch 1")
    with atomic_write(dest, keep_previous=tmp_path / "last.prev.pt") as tmp:
        tmp.write_text("epoch 2")
    assert dest.read_text() == "epoch 2" and (tmp_path / "last.prev.pt").read_text() == "epoch 1"

    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    new = tmp_path / ".new"
    new.mkdir()
    (new / "config.json").write_text("{}")
    publish(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    assert not new.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
