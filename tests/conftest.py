"""Session hooks. When a pytest-xdist worker dies mid-test ("node down: Not properly terminated"), xdist says
only that; this prints how the worker process ended (exit code or signal) and the kernel's lines about killed
processes (OOM killer, segfaults) when ``dmesg`` is readable, so a crash in CI names its cause."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any, List, Optional

import pytest


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
    sys.stderr.write(f"\n[conftest] worker {node.gateway.id} went down ({error}): {how}\n"
                     + "".join(f"[conftest] dmesg: {line}\n" for line in lines))
