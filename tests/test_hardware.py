"""res2net.hardware: the CPU class and its caps read from real cpuinfo layouts, the cgroup CPU quota, the defaults
derived from them, device parsing, and ``res2net env`` (here and under the AVX2 emulation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from res2net import hardware
from res2net.errors import ConfigError
from res2net.hardware import (ISA_CLASSES, bf16_native, check_dtype, default_amp, default_dtype, read_cpu,
                              select_device, usable_cores)

# the "flags" lines of real CPUs (/proc/cpuinfo, trimmed to what the class depends on and some noise)
BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 popcnt aes xsave avx f16c"
CPUS: Dict[str, str] = {
    "zen3": BASE + " fma avx2 bmi1 bmi2 sha_ni vaes",  # EPYC 7003: AVX2 only
    "alder_lake": BASE + " fma avx2 avx_vnni sha_ni",  # Core 12th gen: AVX2 + AVX-VNNI
    "skylake_x": BASE + " fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl",
    "cascade_lake": BASE + " fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni",
    "zen4": BASE + " fma avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
                   "avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq",
    "sapphire_rapids": BASE + " fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512_vnni "
                              "amx_bf16 amx_tile amx_int8 avx512_fp16",
}
GRAVITON3 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc " \
            "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm " \
            "svebf16 i8mm bf16 dgh rng"
EXPECTED = {  # class, native bf16, int8 dot product
    "zen3": ("avx2", False, False), "alder_lake": ("avx2", False, True), "skylake_x": ("avx512", False, False),
    "cascade_lake": ("avx512", False, True), "zen4": ("avx512_bf16", True, True),
    "sapphire_rapids": ("amx", True, True),
}


def _root(tmp_path: Path, flags: str, arm: bool = False) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    key = "Features" if arm else "flags"
    text = "".join(f"processor\t: {i}\nmodel name\t: Test CPU\n{key}\t\t: {flags}\n\n" for i in range(2))
    (proc / "cpuinfo").write_text(text)
    return tmp_path


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_cpu_class_from_real_flag_sets(tmp_path: Path, cpu: str) -> None:
    got = read_cpu(_root(tmp_path, CPUS[cpu]), env={})
    assert (got.isa, got.bf16, got.int8_dot) == EXPECTED[cpu]
    assert got.native_isa == got.isa and not got.emulated and got.name == "Test CPU"


def test_arm_with_bf16(tmp_path: Path) -> None:
    got = read_cpu(_root(tmp_path, GRAVITON3, arm=True), env={})
    assert got.arch == "aarch64" and got.isa == "arm_bf16" and got.bf16 and got.int8_dot


@pytest.mark.parametrize("cap,aten,isa,bf16,int8", [
    ("AVX2", None, "avx2", False, False),  # the AVX2 emulation of a Zen 4
    ("avx512_core", None, "avx512", False, False),  # Skylake-X emulation: bf16 emulated, not native
    ("AVX512_CORE_VNNI", None, "avx512", False, True),
    ("AVX512_CORE_BF16", None, "avx512_bf16", True, True),
    (None, "AVX2", "avx2", False, True),  # ATen's cap alone lowers the class too
    (None, "AVX512", "avx512_bf16", True, True),
])
def test_emulation_switches_lower_the_class(tmp_path: Path, cap: Optional[str], aten: Optional[str], isa: str,
                                            bf16: bool, int8: bool) -> None:
    env = {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}
    got = read_cpu(_root(tmp_path, CPUS["zen4"]), env=env, aten_capability=aten)
    assert (got.isa, got.bf16, got.int8_dot) == (isa, bf16, int8)
    assert got.native_isa == "avx512_bf16" and got.emulated == (isa != "avx512_bf16")


def test_a_cap_never_raises_the_class(tmp_path: Path) -> None:
    got = read_cpu(_root(tmp_path, CPUS["zen3"]), env={"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert got.isa == "avx2" and not got.bf16


def test_unknown_onednn_isa_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA='AVX3'.*AVX2"):
        read_cpu(_root(tmp_path, CPUS["zen4"]), env={"ONEDNN_MAX_CPU_ISA": "AVX3"})


def _cgroup(root: Path, lines: str, files: Dict[str, str]) -> Path:
    (root / "proc" / "self").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "self" / "cgroup").write_text(lines)
    for rel, text in files.items():
        path = root / "sys" / "fs" / "cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cgroup_v2_quota_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, "0::/kubepods/pod1/ctr\n", {"kubepods/pod1/ctr/cpu.max": "max 100000\n",
                                                         "kubepods/pod1/cpu.max": "50000 100000\n",
                                                         "kubepods/cpu.max": "400000 100000\n"})
    cores, why = hardware._cgroup_quota(root)
    assert cores == pytest.approx(0.5) and "kubepods/pod1" in why
    assert usable_cores(root) == (1, usable_cores(root)[1]) and "cgroup v2" in usable_cores(root)[1]


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
                   {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n",
                    "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    cores, why = hardware._cgroup_quota(root)
    assert cores == pytest.approx(1.5) and "cgroup v1" in why


def test_no_quota(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert hardware._cgroup_quota(root) is None
    assert hardware._cgroup_quota(tmp_path / "nowhere") is None


def test_this_machine_is_consistent_with_torch() -> None:
    hw = hardware.detect()
    assert hw.cpu.isa in ISA_CLASSES + ("arm", "arm_bf16")
    assert 1 <= hw.cores <= (os.cpu_count() or 1)
    if hw.cpu.arch == "x86_64":  # torch's own ATen dispatch level bounds ours
        aten = torch.backends.cpu.get_cpu_capability()
        assert aten != "AVX2" or hw.cpu.isa in ("sse", "avx2")
    # native bf16 by our reading implies oneDNN's bf16 support; oneDNN's answer alone does not imply ours
    assert not bf16_native("cpu") or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    amp, why = default_amp(torch.device("cpu"))
    assert (amp == torch.bfloat16) == bf16_native("cpu") and why
    assert default_dtype("cpu")[0] == ("bf16" if bf16_native("cpu") else "fp32")


def test_bf16_where_not_native_warns_and_fp16_on_cpu_is_refused() -> None:
    from res2net.engine import select_amp

    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        select_amp("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        check_dtype("fp16", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_amp("bf16", torch.device("cpu")) == torch.bfloat16
    slow = [w for w in caught if "no native bf16" in str(w.message)]
    assert bool(slow) == (not bf16_native("cpu"))
    assert select_amp("off", torch.device("cpu")) is None


def test_devices_parse_and_missing_ones_are_named() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                          "mps" if hardware.detect().mps else "cpu")
    for bad in ("tpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="must be auto, cpu, cuda, cuda:N or mps"):
            select_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device='cuda' but CUDA is not available"):
            select_device("cuda", what="--device")
    if not hardware.detect().mps:
        with pytest.raises(ConfigError, match="no MPS device"):
            select_device("mps")


def test_threads_and_workers_follow_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    hw = hardware.detect()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert hardware.default_threads(hw) == hw.cores
    assert hardware.default_workers(hw) == min(8, hw.cores - 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(hw.cores))  # one process per core: one thread, no workers
    assert hardware.default_threads(hw) == 1 and hardware.default_workers(hw) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.default_threads(hw) == 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert hardware.limit_threads(hw) == 1  # a lower count set by the caller stays
    finally:
        torch.set_num_threads(before)


def _env_json(extra: Dict[str, str]) -> Dict[str, object]:
    env = {**os.environ, **extra}
    out = subprocess.run([sys.executable, "-m", "res2net.cli", "env", "--json"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_env_command_reports_the_avx2_emulation() -> None:
    """Under ONEDNN_MAX_CPU_ISA=AVX2 + ATEN_CPU_CAPABILITY=avx2 the hardware model sees an AVX2 CPU on any x86
    machine that has AVX2, and training falls back to fp32."""
    if hardware.detect().cpu.native_isa not in ISA_CLASSES[1:]:
        pytest.skip(f"this CPU ({hardware.detect().cpu.native_isa}) has no AVX2 to emulate")
    report = _env_json({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    cpu = report["hardware"]["cpu"]  # type: ignore[index]
    assert cpu["isa"] == "avx2" and cpu["bf16"] is False
    assert cpu["emulated"] == (cpu["native_isa"] != "avx2")
    plan = report["plan"]  # type: ignore[index]
    assert plan["train"]["amp"] == "off (fp32)" and plan["predict"]["dtype_auto"] == "fp32"


def test_env_command_prints_lines(capsys: pytest.CaptureFixture) -> None:
    from res2net.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    hw = hardware.detect()
    assert f"cpu class: {hw.cpu.isa}" in out and f"cores usable: {hw.cores}" in out
    amp = "bf16" if bf16_native("cpu") else "off (fp32)"
    assert f"autocast {amp}" in out and "predict --backend auto: dtype" in out


def test_predictor_device_and_dtype_are_checked_before_any_work() -> None:
    import res2net

    model = res2net.create_model("res2net17_slim", num_classes=3)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available"):
            res2net.Predictor(model, name="res2net17_slim", device="cuda")
    with pytest.raises(ValueError, match="applies to a backend"):
        res2net.Predictor(model, name="res2net17_slim", dtype="bf16")
    with pytest.raises(ValueError, match="dtype must be auto, fp32 or bf16"):
        res2net.Predictor(model, name="res2net17_slim", backend="eager", dtype="fp16")
    fast = res2net.Predictor(model, name="res2net17_slim", backend="eager")  # dtype auto: the hardware's choice
    assert fast.model.dtype == (torch.bfloat16 if bf16_native("cpu") else torch.float32)
