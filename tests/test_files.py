"""The one atomic writer (res2net.files): published files follow the umask, an interrupted write leaves the
previous file and no temporary, a folder is swapped whole."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from res2net.files import (atomic_write, check_destination, claim_folder, publish, scratch_folder, usual_mode,
                          write_text)


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


def test_errors_about_a_temporary_name_the_destination(tmp_path: Path) -> None:
    """A file-system error about the temporary (or one naming no file) names the user's path; an error about
    another file keeps its own name; the scratch folder is gone either way."""
    dest = tmp_path / "model.onnx"
    with pytest.raises(OSError) as info:
        with atomic_write(dest) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dest)
    with pytest.raises(OSError) as info:
        with scratch_folder(dest) as work:
            (work / "inner.bin").write_bytes(b"1")
            raise OSError(errno.EIO, "Input/output error", str(work / "inner.bin"))
    assert info.value.filename == str(dest)
    with pytest.raises(OSError) as info:
        with scratch_folder(dest):
            raise OSError(errno.ENOSPC, "No space left on device")  # e.g. a C library's write that names nothing
    assert info.value.filename == str(dest)
    with pytest.raises(FileNotFoundError) as info:
        with atomic_write(dest):
            open(tmp_path / "calibration" / "x.png", "rb")
    assert info.value.filename == str(tmp_path / "calibration" / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    write_text(dest, "text")
    assert dest.read_text() == "text" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_keep_previous_and_folder_swap(tmp_path: Path) -> None:
    dest = tmp_path / "last.pt"
    dest.write_text("epoch 1")
    with atomic_write(dest, keep_previous=tmp_path / "last.prev.pt") as tmp:
        tmp.write_text("epoch 2")
    assert dest.read_text() == "epoch 2" and (tmp_path / "last.prev.pt").read_text() == "epoch 1"

    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text("old")
    new = tmp_path / ".new"
    new.mkdir()
    (new / "config.json").write_text("{}")
    publish(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    assert (folder / "config.json").read_text() == "{}"
    assert not new.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_folder_write_keeps_the_users_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text("old")
    (folder / "model.onnx").write_text("the user's export")
    with atomic_write(folder, directory=True) as tmp:
        (tmp / "config.json").write_text("new")
    assert (folder / "config.json").read_text() == "new"
    assert (folder / "model.onnx").read_text() == "the user's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained"]


def test_check_destination_refuses_an_input_and_an_existing_file_without_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "a.pth"
    src.write_text("weights")
    with pytest.raises(FileExistsError, match="is the command's own input"):
        check_destination(tmp_path / "." / "a.pth", [src], overwrite=True, what="DST")
    link = tmp_path / "link.pth"
    link.symlink_to(src)
    with pytest.raises(FileExistsError, match="is the command's own input"):
        check_destination(link, [src], overwrite=True)
    other = tmp_path / "b.pth"
    other.write_text("someone's")
    with pytest.raises(FileExistsError, match="exists; pass --overwrite to replace it"):
        check_destination(other, [src])
    assert check_destination(other, [src], overwrite=True) == other
    with pytest.raises(FileExistsError, match="is a folder"):
        check_destination(tmp_path, [src], overwrite=True)
    assert check_destination(tmp_path / "new.pth", [src]) == tmp_path / "new.pth"


def test_live_runs_are_seen_nested_outs_refused_and_predict_warned(tmp_path: Path) -> None:
    """A run lock held by a live process: live_run names its pid, a new run's --out inside it is refused, and a
    Predictor reading from it warns that the run is still training."""
    from res2net.engine.runfolder import FolderInUse, RunLock
    from res2net.files import live_run
    from res2net.predict import warn_if_training

    run = tmp_path / "run"
    assert live_run(run) is None
    with RunLock(run):
        assert live_run(run) == str(os.getpid())
        with RunLock(run / "model"):  # this process's own run folder (train's out/, then out/<model>/)
            pass
    code = ("import sys, time; from res2net.engine.runfolder import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        assert live_run(run) == str(other.pid)
        with pytest.raises(FolderInUse, match="is inside .*run, a run still in progress"):
            RunLock(run / "model" / "inner").acquire()
        (run / "model").mkdir(exist_ok=True)
        with pytest.warns(UserWarning, match="which is still training"):
            warn_if_training(run / "model" / "best.pt")
    finally:
        other.kill()
        other.wait()
    assert live_run(run) is None  # released: the lock file stays, the lock does not
    with RunLock(run / "model" / "inner"):
        pass


def test_a_users_folder_with_files_is_never_an_output_folder(tmp_path: Path) -> None:
    """`res2net train --out` into a folder of the user's replaced their report.md and metrics.json; a folder
    res2net never wrote into is now refused when it holds files, and one it did write into is reused."""
    from res2net.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    assert main(["train", "--model", "res2net17_slim", "--epochs", "1", "--out", str(mine)]) == 2
    assert main(["receptive-field", "--model", "res2net20_cifar", "--images", "1", "--out", str(mine)]) == 2
    assert (mine / "report.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["report.md"]
    ours = tmp_path / "ours"
    with pytest.raises(FileExistsError, match="holds files res2net did not write"):
        claim_folder(mine)
    assert claim_folder(ours) == ours and claim_folder(ours) == ours  # created, marked, claimed again
    (ours / "report.md").write_text("ours")
    assert claim_folder(ours) == ours


def test_a_temporary_that_cannot_be_made_names_the_destination(tmp_path: Path) -> None:
    """Issue 22 probe: a DST name of 250 characters failed with "File name too long" naming the temporary
    (``.xxx....tmp``), not the user's path: the temporary's own name is longer than the destination's."""
    dest = tmp_path / ("x" * 250 + ".pth")
    for kwargs in ({}, {"directory": True}):
        with pytest.raises(OSError) as caught:
            with atomic_write(dest, **kwargs):
                pass
        assert caught.value.errno == errno.ENAMETOOLONG and caught.value.filename == str(dest)
    with pytest.raises(OSError) as caught:
        with scratch_folder(dest):
            pass
    assert caught.value.filename == str(dest) and list(tmp_path.iterdir()) == []
