"""Two nodes for real: two Linux network namespaces joined by a veth pair, one ``torchrun`` node in each (one
process per node, c10d rendezvous on the first namespace's address, gloo over the veth link). Both processes
end with identical weights, equal to the checkpoint global rank 0 wrote, and only global rank 0 writes files.
Needs root (``ip netns``); skipped with the reason elsewhere. The namespaces are always removed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest
import torch

from res2net.data import fashion_mnist as fm

HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)
MODEL = "res2net17_slim"
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"

# runs `res2net train` as the CLI does, and saves this rank's final weights where the test can compare them
WORKER = textwrap.dedent('''
    import os, sys
    import torch
    from res2net.engine import trainer

    original_fit = trainer.Trainer.fit

    def fit(self):
        result = original_fit(self)
        torch.save(result.model.state_dict(), os.path.join(os.environ["REPORT_DIR"], f"weights{self.dist.rank}.pt"))
        return result

    trainer.Trainer.fit = fit
    from res2net.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_namespaces():
    """(ns0, ns1, addr0, addr1, ifname0, ifname1): namespaces joined by a veth pair, removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (apt-get install -y iproute2)")
    tag = f"{os.getpid() % 10000}{random.randint(0, 99)}"
    ns = [f"r2n{tag}a", f"r2n{tag}b"]
    ifs = [f"r2v{tag}a", f"r2v{tag}b"]
    net = f"10.{random.randint(100, 250)}.{random.randint(0, 250)}"
    addrs = [f"{net}.1", f"{net}.2"]
    made: List[str] = []
    try:
        for name in ns:
            r = _ip("netns", "add", name)
            if r.returncode != 0:
                pytest.skip(f"cannot create network namespaces here: {r.stderr.strip()}")
            made.append(name)
        steps = [("link", "add", ifs[0], "type", "veth", "peer", "name", ifs[1])]
        for i in range(2):
            steps += [("link", "set", ifs[i], "netns", ns[i]),
                      ("-n", ns[i], "addr", "add", f"{addrs[i]}/24", "dev", ifs[i]),
                      ("-n", ns[i], "link", "set", ifs[i], "up"), ("-n", ns[i], "link", "set", "lo", "up")]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot join the namespaces with a veth pair: ip {' '.join(step)}: {r.stderr.strip()}")
        yield ns[0], ns[1], addrs[0], addrs[1], ifs[0], ifs[1]
    finally:
        for name in made:
            _ip("netns", "del", name)  # deleting a namespace deletes its end of the veth pair, and so the pair


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_two_nodes_in_network_namespaces_train_to_identical_weights(tmp_path: Path, two_namespaces) -> None:
    ns0, ns1, addr0, addr1, if0, if1 = two_namespaces
    (tmp_path / "worker.py").write_text(WORKER)
    port = random.randint(29500, 29999)
    procs = []
    for node, (ns, addr, ifname) in enumerate(((ns0, addr0, if0), (ns1, addr1, if1))):
        report = tmp_path / f"report{node}"
        report.mkdir()
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=ifname, REPORT_DIR=str(report),
                   RES2NET_DIST_INIT_TIMEOUT="120")
        cmd = ["ip", "netns", "exec", ns, TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node",
               "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{addr0}:{port}", "--rdzv-id", f"test{port}",
               "--rdzv-conf", f"is_host={int(node == 0)}",  # the namespaces share the host's name
               "--local-addr", addr, str(tmp_path / "worker.py"), "train", "--model", MODEL, "--dataset",
               "fashion-mnist", "--train-subset", "64", "--epochs", "1", "--batch-size", "16", "--set",
               "data.test_subset=32", "--deterministic", "--workers", "0", "--quiet",
               "--out", str(tmp_path / f"out{node}")]  # each node its own folder: no shared storage
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    w0 = torch.load(tmp_path / "report0" / "weights0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "report1" / "weights1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    state = torch.load(tmp_path / "out0" / MODEL / "last.pt", weights_only=True)
    assert state["sampler"]["world_size"] == 2 and state["global_step"] == 2  # 64 images / (2 x 16)
    assert all(torch.equal(state["model"][k], w0[k]) for k in w0)
    assert not (tmp_path / "out1").exists()  # only global rank 0 writes files
