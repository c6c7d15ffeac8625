"""timm's own tests/test_models.py (from the installed timm's sdist, unmodified) on every zoo model, in chunks of
five models, resumable: results accumulate in --out (JSON {"test|r2n_model": "passed"|"failed"|"skipped"}).

    .venv/bin/python benchmarks/timm_zoo.py --out benchmarks/results/timm_zoo.json [--skip NAME ...]

The same runner as tests/test_timm.py::test_timm_model_tests_pass (which CI runs on one model per code path).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_timm import TIMM_TESTS, run_timm_tests  # noqa: E402

from res2net.models import MODELS  # noqa: E402


def cost(name: str) -> int:
    """Cheapest first: small and CIFAR models, then 50-layer, then 101 and 152."""
    return 3 if "152" in name else 2 if "101" in name else 1 if ("50" in name or "dla" in name) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/timm_zoo.json"))
    parser.add_argument("--skip", nargs="*", default=[], help="models already run")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    tests = TIMM_TESTS + ["test_prune_intermediate_layers_contract"]
    names = sorted((s.name for s in MODELS if s.name not in args.skip), key=cost)
    for i in range(0, len(names), 5):
        chunk = [m for m in names[i:i + 5] if not any(k.endswith("|r2n_" + m) for k in results)]
        if not chunk:
            continue
        start = time.time()
        found = run_timm_tests(chunk, tests, Path(f"/tmp/timm_zoo_run{i}"))
        results.update({f"{t}|{m}": v for (t, m), v in found.items()})
        args.out.write_text(json.dumps(results, indent=1))
        passed = sum(v == "passed" for v in found.values())
        print(f"{chunk}: {passed}/{len(found)} passed in {time.time() - start:.0f} s", flush=True)
    failed = sorted(k for k, v in results.items() if v != "passed")
    print(f"{len(results) - len(failed)}/{len(results)} passed" + (f"; not passed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
