"""The scale / cardinality / depth ablation (paper Fig. 4) and the Table 3 width-scale trade, at small size.

Every variant is the ResNet trunk (:class:`~res2net.models.ResNet`, the zoo's block) with the small-image stem
and one common base: ``planes=(16, 32, 64)``, one block per stage, 16 stem channels. Fig. 4 grows capacity from
the plain bottleneck (s=1, width 16 per stage-1 split) along scale (s = 1..6, width per split kept), cardinality
(c groups of that width) and depth (blocks per stage). Table 3 keeps ``width x scale`` (nearly) constant
(48w x 2s, 26w x 4s, 14w x 8s, ``base_width`` as in the paper on the same ``planes``) and adds the increased
(26w x 6s, 26w x 8s) and reduced (18w x 4s) complexity rows.

Training goes through the shared engine (:func:`res2net.engine.fit`, :class:`ClassificationTask`) with the
``fashion_mnist`` recipe. The sweep is resumable: ``results.jsonl`` (one line per finished run) is the results
store; ``--resume`` skips finished runs and continues a killed one from its ``last.pt``.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..files import write_text
from ..jsonio import jsonl_line
from ..errors import ConfigError
from ..models import ResNet, count_macs, count_params

BASE: Dict[str, Any] = dict(layers=(1, 1, 1), planes=(16, 32, 64), stem="cifar", stem_width=16, scale=1,
                            base_width=64, cardinality=1)
DIMENSIONS = ("scale", "cardinality", "depth")


@dataclass(frozen=True)
class Variant:
    """One architecture of the sweep: a name, its changes to :data:`BASE`, and where it is plotted."""

    name: str
    changes: Tuple[Tuple[str, Any], ...]
    curves: Tuple[Tuple[str, str], ...] = ()  # (Fig. 4 dimension, point label)
    table3: str = ""  # Table 3 group: "preserved", "increased", "reduced", "" (not a row)

    @property
    def arch(self) -> Dict[str, Any]:
        return {**BASE, **dict(self.changes)}

    def build(self, num_classes: int, in_chans: int, input_pool: int = 1) -> nn.Module:
        """The model, from the zoo's trunk class (last BN of each block zero-initialised, so the deeper variants
        survive the one-cycle warm-up); ``input_pool > 1`` average-pools the images first."""
        net = ResNet(**self.arch, num_classes=num_classes, in_chans=in_chans, zero_init_last=True)
        return nn.Sequential(nn.AvgPool2d(input_pool), net) if input_pool > 1 else net


def _v(name: str, curves: Sequence[Tuple[str, str]] = (), table3: str = "", **changes: Any) -> Variant:
    return Variant(name, tuple(sorted(changes.items())), tuple(curves), table3)


BASE_CURVES = (("scale", "s=1"), ("cardinality", "c=1"), ("depth", "1 block/stage"))
VARIANTS: Dict[str, Variant] = {v.name: v for v in [
    _v("bottleneck", BASE_CURVES),
    *[_v(f"s{s}", [("scale", f"s={s}")], scale=s) for s in range(2, 7)],
    *[_v(f"c{c}", [("cardinality", f"c={c}")], cardinality=c) for c in (2, 4, 8)],
    *[_v(f"d{n}", [("depth", f"{n} blocks/stage")], layers=(n, n, n)) for n in (2, 3, 4, 6)],
    _v("48w2s", table3="preserved", base_width=48, scale=2),
    _v("26w4s", table3="preserved", base_width=26, scale=4),
    _v("14w8s", table3="preserved", base_width=14, scale=8),
    _v("26w6s", table3="increased", base_width=26, scale=6),
    _v("26w8s", table3="increased", base_width=26, scale=8),
    _v("18w4s", table3="reduced", base_width=18, scale=4),
]}


@dataclass(frozen=True)
class Budget:
    """How much of the sweep runs: variants, seeds, epochs and data subsets."""

    variants: Tuple[str, ...]
    seeds: int
    epochs: int
    train_subset: Optional[int]
    test_subset: Optional[int]
    input_pool: int = 1  # images average-pooled by this factor inside the model (28 px -> 14 px: 4x cheaper)
    batch_size: Optional[int] = None  # None: the recipe's
    note: str = ""


BUDGETS: Dict[str, Budget] = {
    "quick": Budget(("bottleneck", "s2", "s4", "s6", "c4", "d2", "d3", "48w2s", "26w4s", "14w8s"),
                    seeds=1, epochs=1, train_subset=4000, test_subset=1000, input_pool=2, batch_size=128,
                    note="CI-sized check of the whole pipeline (14 px images, 4000 of them, one epoch); "
                    "its accuracies are noisy"),
    "full": Budget(tuple(VARIANTS), seeds=3, epochs=3, train_subset=10000, test_subset=5000, input_pool=2,
                   batch_size=128, note="all 19 variants x 3 seeds, 3 epochs over 10,000 images at 14 px: the "
                   "CPU-sized sweep with spread over seeds (measured in docs/ANALYSES.md)"),
    "paper": Budget(tuple(VARIANTS), seeds=3, epochs=15, train_subset=None, test_subset=None,
                    note="all variants x 3 seeds, 15 epochs on the whole training set at full resolution "
                    "(a GPU job: about 28 h on 2 CPU cores)"),
}
DATA_CARDS = {"fashion-mnist": "res2net20_cifar", "fashion-mnist-scaled": "res2net20_cifar",
              "cifar100": "res2next29_6cx24wx4s"}


@dataclass
class Run:
    """One training run of the sweep."""

    variant: str
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.variant}-seed{self.seed}"


def plan(budget: Budget, seeds: Optional[int] = None, variants: Optional[Sequence[str]] = None) -> List[Run]:
    """The ordered run list of a budget (``seeds``/``variants`` override the budget's)."""
    names = list(variants) if variants else list(budget.variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    n_seeds = budget.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {n_seeds}")
    return [Run(name, seed) for seed in range(n_seeds) for name in names]


def read_results(path: Path) -> Dict[str, Dict[str, Any]]:
    """Finished runs of the results store (``results.jsonl``), by run id; a torn last line is ignored."""
    done: Dict[str, Dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["run_id"]] = rec
    return done


def train_run(run: Run, dataset: str, budget: Budget, run_dir: Path, overrides: Sequence[str] = (),
              data_dir: Optional[str] = None, device: str = "auto", resume: bool = True) -> Dict[str, Any]:
    """Train one variant with the shared engine; return its results record."""
    from ..engine import fit, load_config
    from ..tasks.classification import ClassificationConfig, ClassificationTask, load_data

    variant = VARIANTS[run.variant]
    values: Dict[str, Any] = {"data.dataset": dataset, "data.root": data_dir, "run.epochs": budget.epochs,
                              "data.train_subset": budget.train_subset, "data.test_subset": budget.test_subset,
                              "run.seed": run.seed, "run.quiet": True, "run.device": device,
                              "run.eval_every": budget.epochs,  # only the final accuracy is used
                              "model.name": [DATA_CARDS[dataset]]}
    if dataset == "cifar100":
        values["data.crop_padding"] = 4
    if budget.batch_size:
        values["optim.batch_size"] = budget.batch_size
    cfg = load_config(ClassificationConfig, "fashion_mnist", overrides, values)
    data = load_data(cfg.data, DATA_CARDS[dataset], seed=0)  # the same subset for every run

    class VariantTask(ClassificationTask):
        def build_model(self) -> nn.Module:
            return variant.build(len(self.data.classes), self.data.in_chans, budget.input_pool)

    result = fit(VariantTask(DATA_CARDS[dataset], cfg, data), cfg, run_dir, resume=resume)
    model = variant.build(len(data.classes), data.in_chans, budget.input_pool)
    return {"run_id": run.run_id, "variant": run.variant, "seed": run.seed, "arch": variant.arch,
            "params": count_params(model), "macs": count_macs(model, data.input_size, data.in_chans),
            "top1": result.metrics.get("top1"), "train_seconds": result.train_seconds, "epochs": result.epochs,
            "train_images": len(data.train), "test_images": len(data.test), "input_pool": budget.input_pool,
            "batch_size": cfg.optim.batch_size, "input_size": data.input_size, "in_chans": data.in_chans,
            "num_classes": len(data.classes)}


def sweep(runs: Sequence[Run], out: Path, dataset: str, budget: Budget, overrides: Sequence[str] = (),
          data_dir: Optional[str] = None, device: str = "auto", resume: bool = False) -> List[Dict[str, Any]]:
    """Run every unfinished run of ``runs`` into ``out/runs/<id>``, appending to ``out/results.jsonl``."""
    from tqdm.auto import tqdm

    store = out / "results.jsonl"
    done = read_results(store)
    if done and not resume:
        raise ConfigError(f"--out {out} already holds {len(done)} finished runs: pass --resume to continue "
                          "them, or choose another --out")
    settings = {"dataset": dataset, "epochs": budget.epochs, "train_subset": budget.train_subset,
                "test_subset": budget.test_subset, "input_pool": budget.input_pool,
                "batch_size": budget.batch_size, "overrides": list(overrides)}
    for rec in done.values():
        if rec.get("settings", settings) != settings:
            raise ConfigError(f"--resume: run {rec['run_id']} in {out} was trained with {rec['settings']}, not "
                              f"{settings}; use the same flags or another --out")
    todo = [r for r in runs if r.run_id not in done]
    for run in tqdm(todo, desc="ablation", unit="run", file=sys.stderr):
        rec = train_run(run, dataset, budget, out / "runs" / run.run_id, overrides, data_dir, device, resume=True)
        rec["settings"] = settings
        with store.open("a") as fh:
            fh.write(jsonl_line(rec) + "\n")
        done[run.run_id] = rec
    return [done[r.run_id] for r in runs]


def summarize(records: Sequence[Dict[str, Any]], latency: Dict[str, float]) -> List[Dict[str, Any]]:
    """Per variant: params, MACs, latency, mean/std/min/max top-1 over seeds."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in records):
        accs = [100 * r["top1"] for r in records if r["variant"] == name]
        first = next(r for r in records if r["variant"] == name)
        rows.append({"variant": name, "params": first["params"], "macs": first["macs"],
                     "latency_ms": latency.get(name), "seeds": len(accs), "top1_mean": statistics.mean(accs),
                     "top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "top1_min": min(accs),
                     "top1_max": max(accs), "table3": VARIANTS[name].table3,
                     "curves": ";".join(f"{d}:{p}" for d, p in VARIANTS[name].curves)})
    return rows


def fig4(rows: Sequence[Dict[str, Any]], path: Path, dataset: str) -> None:
    """Test accuracy against params, one curve per dimension, mean with min-max spread over seeds."""
    from ..reporting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dim in DIMENSIONS:
        pts = sorted([(r["params"], r, p) for r in rows for d, p in VARIANTS[r["variant"]].curves if d == dim],
                     key=lambda t: t[0])
        if len(pts) < 1:
            continue
        x = [p / 1e3 for p, _, _ in pts]
        y = [r["top1_mean"] for _, r, _ in pts]
        err = [[r["top1_mean"] - r["top1_min"] for _, r, _ in pts], [r["top1_max"] - r["top1_mean"] for _, r, _ in pts]]
        ax.errorbar(x, y, yerr=err, fmt="-o", capsize=3, label=dim)
        for xi, yi, (_, _, label) in zip(x, y, pts):
            ax.annotate(label, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="parameters (thousands)", ylabel=f"test top-1 accuracy (%), {dataset}",
           title="capacity along scale, cardinality and depth (paper Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def variant_latency(names: Sequence[str], num_classes: int, in_chans: int, input_size: int, input_pool: int = 1,
                    batch_size: int = 64) -> Dict[str, float]:
    """Median CPU forward latency (ms) of each variant at ``batch_size`` (see :func:`measure_latency`)."""
    from ..profiling import measure_latency

    return {n: measure_latency(VARIANTS[n].build(num_classes, in_chans, input_pool).eval(), batch_size, input_size,
                               in_chans, warmup=2, repeats=5) for n in names}


def write_report(out: Path, records: Sequence[Dict[str, Any]], dataset: str, budget_name: str, wall: float,
                 command: str) -> List[Dict[str, Any]]:
    """summary.json/csv, fig4.png and report.md of a finished sweep."""
    from ..jsonio import write_json
    from ..reporting import md_table, write_csv

    first = records[0]
    cifar = dataset == "cifar100"  # the defaults serve records written before they carried these fields
    in_chans = first.get("in_chans", 3 if cifar else 1)
    size = first.get("input_size", 32 if cifar else 28)
    n_cls = first.get("num_classes", 100 if cifar else 10)
    latency = variant_latency(list(dict.fromkeys(r["variant"] for r in records)), n_cls, in_chans, size,
                              first.get("input_pool", 1))
    rows = summarize(records, latency)
    write_json(out / "summary.json", {"dataset": dataset, "budget": budget_name, "wall_seconds": wall,
                                      "command": command, "base": BASE, "variants": rows})
    write_csv(out / "summary.csv", rows)
    fig4(rows, out / "fig4.png", dataset)

    def row(r: Dict[str, Any]) -> List[Any]:
        spread = f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else ""
        return [r["variant"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}", f"{r['latency_ms']:.1f}",
                f"{r['top1_mean']:.2f}{spread}", r["seeds"]]

    header = ["variant", "params", "MMACs", "ms / batch 64", "top-1 (%)", "seeds"]
    lines = [f"# Ablation: scale, cardinality, depth ({dataset}, budget {budget_name})", "",
             f"Command: `{command}`", "",
             f"Wall time of this invocation: {wall:.0f} s. Data: {first['train_images']} training / "
             f"{first['test_images']} test images ({size} px, average-pooled x{first.get('input_pool', 1)} in the model), "
             f"{first['epochs']} epoch(s) per run, batch {first.get('batch_size')}. Base: {BASE}.", "",
             "## Fig. 4: accuracy against parameters", "", "![fig4](fig4.png)", ""]
    lines += md_table(header + ["curves"], [row(r) + [r["curves"]] for r in rows if r["curves"]])
    lines += ["", "## Table 3: width x scale at (nearly) constant complexity, and more/less complexity", ""]
    t3 = [r for g in ("preserved", "increased", "reduced") for r in rows if r["table3"] == g]
    lines += md_table(header + ["group"], [row(r) + [r["table3"]] for r in t3]) if t3 else ["(no Table 3 rows run)"]
    lines += ["", "Latency: CPU, fp32, median of 5 after 2 warm-ups, measured once at report time (noisy on a "
              "shared machine)."]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return rows
