"""Session hooks. When a pytest-xdist worker dies mid-test ("node down: Not properly terminated"), xdist says
only that; this prints how the worker process ended (exit code or signal), the Python stacks of all its threads
at a fatal signal (faulthandler, written by each worker to a file of its own) and the kernel's lines about
killed processes (OOM killer, segfaults) when ``dmesg`` is readable, so a crash in CI names its cause."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional

import pytest


_FAULT_LOG: List[Any] = []  # the open file faulthandler writes to (kept open for the worker's lifetime)


def _fault_log(controller_pid: int, worker: str) -> Path:
    return Path(tempfile.gettempdir()) / f"res2net-pytest-{controller_pid}-{worker}.faulthandler"


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin, which writes to a stderr xdist loses
def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker:
        _FAULT_LOG.append(open(_fault_log(os.getppid(), worker), "w"))
        faulthandler.enable(file=_FAULT_LOG[0], all_threads=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FAULT_LOG:  # a worker that ends normally leaves no file behind
        faulthandler.disable()
        _FAULT_LOG.pop().close()
        _fault_log(os.getppid(), config.workerinput["workerid"]).unlink(missing_ok=True)  # type: ignore[attr-defined]


def _exit_status(node: Any) -> Optional[int]:
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    if popen is None:
        return None
    try:
        return popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def _kernel_kill_lines(last: int = 8) -> List[str]:
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    words = ("oom", "killed process", "segfault", "general protection", "traps:")
    return [line for line in text.splitlines() if any(w in line.lower() for w in words)][-last:]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Optional[object]) -> None:
    if error is None:
        return
    code = _exit_status(node)
    how = ("unknown" if code is None else
           f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
    lines = _kernel_kill_lines()
    log = _fault_log(os.getpid(), node.gateway.id)
    stacks = log.read_text(errors="replace").splitlines()[-60:] if log.is_file() else []
    log.unlink(missing_ok=True)
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    native = _core_backtrace(popen.pid) if popen is not None and code is not None and code < 0 else []
    sys.stderr.write(f"\n[conftest] worker {node.gateway.id} went down ({error}): {how}\n"
                     + "".join(f"[conftest] dmesg: {line}\n" for line in lines)
                     + "".join(f"[conftest] faulthandler: {line}\n" for line in stacks)
                     + "".join(f"[conftest] gdb: {line}\n" for line in native))


def _core_file(pid: int) -> Optional[Path]:
    """The core file the kernel wrote for process ``pid`` (core dumps are on in tools/pytest_parallel.sh), found
    through /proc/sys/kernel/core_pattern; None where cores go to a program (systemd-coredump, apport) or none
    was written."""
    try:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        return None
    if not pattern or pattern.startswith("|"):
        return None
    folder = Path(pattern).parent if "/" in pattern else Path.cwd()
    prefix = Path(pattern).name.split("%")[0]
    try:
        found = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.is_file()]
    except OSError:
        return None
    return next((p for p in sorted(found, key=lambda p: -p.stat().st_mtime) if str(pid) in p.name),
                found[0] if len(found) == 1 and found[0].name == prefix else None)


def _core_backtrace(pid: int) -> List[str]:
    """gdb's backtrace of the thread that crashed (the core's first thread) and the list of every thread, from
    the core file of the dead worker ``pid``; the core is removed afterwards (it is gigabytes)."""
    core = _core_file(pid)
    if core is None:
        return []
    try:
        proc = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt 40", "-ex", "info threads", sys.executable,
                               str(core)], capture_output=True, text=True, timeout=600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(("#", " ", "*", "Id", "Program"))]
    except (OSError, subprocess.SubprocessError) as exc:
        lines = [f"could not read {core} with gdb: {exc}"]
    core.unlink(missing_ok=True)
    return lines[:120]
