"""The allocator setting the ``res2net`` command applies at start (res2net.allocator)."""

import ctypes
import sys

import pytest

import res2net.allocator as runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_applies_glibc_thresholds(monkeypatch):
    calls = []
    real = ctypes.CDLL

    class Recorder:
        def __init__(self, name):
            self.lib = real(name)

        @property
        def mallopt(self):
            fn = self.lib.mallopt

            def record(param, value):
                calls.append((param, value))
                return fn(param, value)

            record.argtypes = record.restype = None
            return record

    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime.ctypes, "CDLL", Recorder)
    assert runtime.keep_freed_memory() is True
    assert calls == [(-3, 32 * 2**20), (-1, 2**30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    calls.clear()
    assert runtime.keep_freed_memory() is True and calls == []  # applied once per process


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setenv("RES2NET_MALLOC_TUNING", "0")
    assert runtime.keep_freed_memory() is False
    assert runtime._applied is False


def test_allocator_tuned_by_the_console_script_not_by_a_library_call_of_main(monkeypatch, capsys):
    """``res2net`` (cli.run, also ``python -m res2net.cli``) tunes its own process's allocator; a program that
    calls ``cli.main`` keeps its allocator untouched."""
    from res2net import cli

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["models", "res2net50_26w_4s"]) == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["res2net", "models", "res2net50_26w_4s"])
    assert cli.run() == 0
    assert calls == [1]
    assert "res2net50_26w_4s" in capsys.readouterr().out
