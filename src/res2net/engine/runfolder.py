"""Run folders: one run at a time per folder (an ``fcntl`` lock), and the writability check that comes with it.

The lock is ``<folder>/.res2net.lock``, held with ``flock`` for as long as a run writes into the folder. The
kernel drops it when the holding process dies (SIGKILL included), so a crashed or preempted run never leaves
a stale lock behind, and a restarted ``torchrun`` group can take it again at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Optional, Type, Union

from ..errors import Res2NetError
from ..files import RUN_LOCK_NAME, claim_folder, live_run

LOCK_NAME = RUN_LOCK_NAME


class FolderInUse(Res2NetError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """Exclusive, non-blocking lock on a run folder (use as a context manager or :meth:`acquire`/:meth:`release`).

    A second run into the same folder raises :class:`FolderInUse` naming the folder and the holder's pid.
    Acquiring also proves the folder writable (the lock file is created in it)."""

    def __init__(self, folder: Union[str, os.PathLike]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the folder); raises at once when another process holds it."""
        if self.fd is not None:
            return self
        for parent in self.folder.resolve().parents:
            holder = live_run(parent)
            if holder is not None and holder != str(os.getpid()):  # this process's own run folder is fine
                raise FolderInUse(f"output folder {self.folder} is inside {parent}, a run still in progress (pid "
                                  f"{holder}); choose an --out outside it")
        try:
            claim_folder(self.folder)
        except OSError as exc:  # claim_folder's own refusals carry no errno; the file system's do
            raise Res2NetError(f"cannot create output folder {self.folder}: {exc.strerror}" if exc.errno
                               else str(exc)) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Res2NetError(f"cannot write to output folder {self.folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(f"output folder {self.folder} is in use by another run "
                                  f"({'pid ' + holder if holder else 'lock ' + str(self.path)}); wait for it "
                                  "to finish or choose another --out") from None
            raise Res2NetError(f"cannot lock output folder {self.folder}: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # e.g. a full disk: the lock holds anyway, only the pid note is missing
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise Res2NetError(f"cannot write to output folder {self.folder}: {exc.strerror or exc}") from None
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the lock file stays: deleting it would race with a waiting process)."""
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()
