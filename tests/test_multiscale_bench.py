"""benchmarks/multiscale.py (issue 24): its paired statistics against scipy, the results store (finished runs
skipped, another configuration refused), the docs section, and --quick end to end."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from scipy import stats

from res2net.data import fashion_mnist as fm

REPO = Path(__file__).resolve().parent.parent
HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)
QUICK = ["--quick", "--budget-tolerance", "0.06"]  # the registry pair's MACs differ by 5.54% (see the script)


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("multiscale_bench", REPO / "benchmarks" / "multiscale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


ms = _load_script()


def _strict_json(path: Path) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} in strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_paired_interval_matches_scipy() -> None:
    rng = random.Random(0)
    for n in (2, 3, 8, 10):
        a = {s: rng.uniform(0.85, 0.92) for s in range(n)}
        b = {s: a[s] - rng.gauss(0.004, 0.005) for s in range(n)}
        b[n + 5] = 0.9  # a seed only one model has is left out
        got = ms.paired_difference(a, b)
        diffs = [100 * (a[s] - b[s]) for s in range(n)]
        mean = sum(diffs) / n
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(diffs))
        assert got["n_seeds"] == n and got["seeds"] == list(range(n))
        assert got["mean"] == pytest.approx(mean, abs=1e-3)
        assert got["ci95"][0] == pytest.approx(lo, rel=1e-3, abs=1e-3)  # the project's t table has 3 decimals
        assert got["ci95"][1] == pytest.approx(hi, rel=1e-3, abs=1e-3)
    one = ms.paired_difference({0: 0.9}, {0: 0.8, 1: 0.7})
    assert one["n_seeds"] == 1 and one["mean"] == pytest.approx(10.0) and one["ci95"] is None and one["std"] is None
    assert ms.paired_difference({}, {0: 0.8})["mean"] is None


def _fake_train(calls: List[str]) -> Any:
    def train(run: Any, plan: Any, folder: Path) -> Dict[str, Any]:
        calls.append(run.run_id)
        top1 = 0.8 + 0.01 * run.seed + (0.005 if run.model.startswith("res2net") else 0.0)
        return {"run_id": run.run_id, "part": run.part, "model": run.model, "seed": run.seed,
                "scale_range": list(run.scale_range) if run.scale_range else None, "top1": top1, "params": 1,
                "macs": 1, "train_seconds": 1.0, "wall_seconds": 1.0, "train_images": 1, "test_images": 1,
                "cpu": "test CPU", "finished": "now"}

    return train


def test_finished_runs_are_skipped_and_another_configuration_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: List[str] = []
    monkeypatch.setattr(ms, "train_run", _fake_train(calls))
    out = tmp_path / "ms"
    common = [*QUICK, "--out", str(out), "--parts", "scales"]
    assert ms.main(common) == 0
    assert len(calls) == 12 and len(set(calls)) == 12  # 3 ranges x 2 seeds x 2 models
    assert ms.main(common) == 0 and len(calls) == 12  # all finished: nothing trained again
    assert ms.main([*common, "--seeds", "3"]) == 0 and len(calls) == 18  # more seeds extend the folder
    summary = _strict_json(out / "multiscale.json")
    assert [r["difference"]["n_seeds"] for r in summary["scales"]] == [3, 3, 3]
    assert summary["scales"][0]["difference"]["mean"] == pytest.approx(0.5)
    assert summary["ablation"]["rows"][0]["top1"]["ci95"] is None  # no run: null, not NaN
    store = (out / "results.jsonl").read_text()
    capsys.readouterr()
    for refused in ([*common, "--set", "optim.lr=0.1"], ["--budget-tolerance", "0.06", "--out", str(out)]):
        assert ms.main(refused) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("multiscale: ") and "another configuration" in err[-1]
    assert (out / "results.jsonl").read_text() == store and len(calls) == 18
    assert ms.main(["--quick", "--out", str(tmp_path / "other")]) == 2  # the pair's MACs: 5.54% > 5%
    assert "MACs +5.54%" in capsys.readouterr().err
    assert ms.main(["--report-only", "--out", str(out)]) == 0 and len(calls) == 18


def test_docs_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "ANALYSES.md"
    doc.write_text("# Analyses\n\n## 4. Receptive fields\n\ntext\n")
    ms.update_docs_section(doc, ["first"])
    assert doc.read_text() == f"# Analyses\n\n## 4. Receptive fields\n\ntext\n\n{ms.DOCS_HEADING}\n\nfirst\n"
    doc.write_text(doc.read_text() + "\n## 6. Later\n\nkept\n")
    ms.update_docs_section(doc, ["second", "", "### sub"])
    text = doc.read_text()
    assert "first" not in text and f"{ms.DOCS_HEADING}\n\nsecond\n\n### sub\n\n## 6. Later\n\nkept\n" in text
    assert text.startswith("# Analyses\n\n## 4. Receptive fields\n\ntext\n\n")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    docs = tmp_path / "ANALYSES.md"
    assert ms.main([*QUICK, "--out", str(out), "--docs", str(docs)]) == 0
    summary = _strict_json(out / "multiscale.json")
    assert summary["runs_finished"] == summary["runs_planned"] == 20
    assert all(r["difference"]["n_seeds"] == 2 and r["difference"]["ci95"] for r in summary["scales"])
    assert summary["default_pair"]["difference"]["n_seeds"] == 2 and summary["cam"] == "cam/cam.png"
    for name in ("multiscale.md", "scales.png", "ablation.png", "cam/cam.png"):
        assert (out / name).is_file(), name
    assert ms.DOCS_HEADING in docs.read_text()
