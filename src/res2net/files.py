"""Writing files so that no reader ever sees half of one: the package's one atomic writer.

Every file or folder the package writes (checkpoints, converted weights, exported models, ``save_pretrained``
folders, JSON reports, the backend cache) is first written to a temporary path beside its destination and then
renamed over it by :func:`publish`, the only place that calls :func:`os.replace`. An interrupted write leaves the
previous file intact and no temporary behind. Published files get the usual mode (``0o666 & ~umask``; folders
``0o777 & ~umask``), not the 0600 of a temporary file, so a folder meant to be shared can be read by others.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

__all__ = ["RUN_LOCK_NAME", "atomic_write", "check_destination", "claim_folder", "live_run", "publish",
           "save_torch", "scratch_folder", "torch_bytes", "usual_mode", "write_text"]

# held with flock by a run writing into its folder (res2net.engine.runfolder); its presence also marks a folder
# as an output folder of res2net, whose report files a later command may replace
RUN_LOCK_NAME = ".res2net.lock"


def claim_folder(folder: PathLike, what: str = "--out") -> Path:
    """Make ``folder`` an output folder of res2net: created when missing, marked with :data:`RUN_LOCK_NAME`.

    Args:
        folder: the folder a command writes its files into.
        what: how the user named it, for the message.

    Returns:
        ``folder`` as a Path.

    Raises:
        FileExistsError: the folder holds files and res2net never wrote into it (the user's own folder: its
            files are never replaced); NotADirectoryError: it is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} exists and is not a folder")
    marker = folder / RUN_LOCK_NAME
    if folder.is_dir() and not marker.exists():
        found = sorted(p.name for p in folder.iterdir()  # a run's own sub-folder (out/<model>/) is res2net's
                       if not (p.is_dir() and (p / RUN_LOCK_NAME).exists()))
        if found:
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            raise FileExistsError(f"{what} {folder} holds files res2net did not write ({', '.join(found[:3])}{more});"
                                  " choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return folder


def live_run(folder: PathLike) -> Optional[str]:
    """Whether a live process holds ``folder``'s run lock: its pid (or ``"?"``) if so, else None."""
    path = Path(folder) / RUN_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_destination(dest: PathLike, inputs: Sequence[PathLike] = (), overwrite: bool = False,
                      what: str = "--out") -> Path:
    """Refuse a destination that would lose the user's data, before any work is done.

    Args:
        dest: the file the command is about to write.
        inputs: the files the command reads; ``dest`` may never be one of them (``--overwrite`` or not).
        overwrite: whether an existing file at ``dest`` may be replaced (the user said ``--overwrite``).
        what: how the user named ``dest`` (the flag or argument), for the message.

    Returns:
        ``dest`` as a Path.

    Raises:
        FileExistsError: one line naming ``what``, the path and the way out.
    """
    dest = Path(dest)
    for source in inputs:
        source = Path(source)
        if source.exists() and (dest.resolve() == source.resolve()
                                or dest.exists() and os.path.samefile(dest, source)):
            raise FileExistsError(f"{what} {str(dest)!r} is the command's own input {str(source)!r}; write the "
                                  f"result elsewhere")
    if dest.is_dir() and not dest.is_symlink():
        raise FileExistsError(f"{what} {str(dest)!r} is a folder; give the file to write")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise FileExistsError(f"{what} {str(dest)!r} exists; pass --overwrite to replace it")
    return dest


def usual_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or every file directly in a folder, and the folder) to the disk."""
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system that cannot fsync a folder is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: PathLike, dest: PathLike, keep_previous: Optional[PathLike] = None) -> Path:
    """Rename the finished temporary ``tmp`` (a file or a folder, in ``dest``'s folder) over ``dest``.

    Args:
        tmp: the written temporary; it is flushed to the disk and given the usual mode first.
        dest: the destination. An existing folder there is swapped out; the files in it that ``tmp`` does not
            replace (the user's own, e.g. an exported ``model.onnx``) are moved into the new folder, and only
            then is the rest of the old folder removed.
        keep_previous: where an existing ``dest`` file goes first (e.g. ``last.prev.pt``), so that a readable
            file exists at every moment.

    Returns:
        ``dest`` as a Path.
    """
    tmp, dest = Path(tmp), Path(dest)
    _fsync(tmp)
    os.chmod(tmp, usual_mode(tmp.is_dir()))
    if tmp.is_dir():
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, usual_mode())
    old: Optional[Path] = None
    if tmp.is_dir() and dest.is_dir():
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        os.replace(dest, old)
    elif keep_previous is not None and dest.exists():
        os.replace(dest, keep_previous)
    os.replace(tmp, dest)
    if old is not None:
        for entry in old.iterdir():
            if not (dest / entry.name).exists():
                os.replace(entry, dest / entry.name)  # never delete what this write did not replace
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(dest.parent)
    return dest


def _inside(path: object, folder: Path) -> bool:
    if path is None:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve())  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError):
        return False


def _naming(exc: OSError, dest: Path) -> OSError:
    """``exc`` (same type, errno and reason) naming ``dest`` instead of the file it named."""
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(dest))


@contextmanager
def _errors_name(tmp: Path, dest: Path) -> Iterator[None]:
    """Within the block, a file-system error about ``tmp`` (or a path inside it), or one that names no file, is
    re-raised naming ``dest``: the user sees the path they gave, never an internal temporary."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or not (exc.filename is None or _inside(exc.filename, tmp)):
            raise
        raise _naming(exc, dest) from exc


def _temporary(dest: Path, suffix: str = "", directory: bool = False) -> Path:
    """A new temporary file (or folder) beside ``dest``, named ``.<dest name>.<random><suffix>``; an error in making
    it (a name too long, a full disk, a read-only folder) names ``dest``, never the temporary."""
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise _naming(exc, dest) from exc
    os.close(fd)
    return Path(name)


@contextmanager
def scratch_folder(dest: PathLike) -> Iterator[Path]:
    """An empty temporary folder beside ``dest`` for work files of a write (removed when the block ends,
    whatever ends it); the finished files go to their places with :func:`publish`. Errors name ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest, ".tmp", directory=True)
    try:
        with _errors_name(tmp, dest):
            yield tmp
    finally:
        _remove(tmp)


@contextmanager
def atomic_write(dest: PathLike, suffix: str = "", directory: bool = False,
                 keep_previous: Optional[PathLike] = None) -> Iterator[Path]:
    """A temporary path beside ``dest`` to write to; published over ``dest`` when the block ends normally.

    Args:
        dest: the file (or folder) to produce; its parent folder is created when missing.
        suffix: the temporary's suffix (readers that choose by suffix, e.g. ``.safetensors``).
        directory: yield an empty temporary folder instead of a file path.
        keep_previous: passed to :func:`publish`.

    Yields:
        The temporary path. On any exception (Ctrl-C included) it is removed and ``dest`` is untouched; a
        file-system error about the temporary names ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest, ".tmp" if directory else f".tmp{suffix}", directory)
    try:
        with _errors_name(tmp, dest):
            yield tmp
            publish(tmp, dest, keep_previous)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def torch_bytes(obj: object) -> bytes:
    """``obj`` as :func:`torch.save` (a ScriptModule: :func:`torch.jit.save`) writes it, serialized in memory.

    Write these bytes with Python, never hand torch a path or a file: given a path, torch's C++ zip writer aborts
    the whole process (``terminate called ... unexpected pos``) when the disk fills, and given a file it reports
    the full disk as a RuntimeError; Python's write raises the OSError, which :func:`atomic_write` names."""
    import io

    import torch

    buffer = io.BytesIO()
    if isinstance(obj, torch.jit.ScriptModule):
        torch.jit.save(obj, buffer)
    else:
        torch.save(obj, buffer)
    return buffer.getvalue()


def write_text(dest: PathLike, text: str) -> Path:
    """Write ``text`` to ``dest`` through :func:`atomic_write` (reports, listings, small JSON files)."""
    with atomic_write(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def save_torch(obj: object, dest: PathLike, keep_previous: Optional[PathLike] = None) -> Path:
    """Write :func:`torch_bytes` of ``obj`` to ``dest`` through :func:`atomic_write`."""
    data = torch_bytes(obj)
    with atomic_write(dest, keep_previous=keep_previous) as tmp:
        tmp.write_bytes(data)
    return Path(dest)
