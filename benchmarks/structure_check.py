"""optimize(backend="eager") fp32 on res2net50_26w_4s, ms per image at batch 1 and 16 (median of 9 after 3
warm-ups). Run it on two checkouts in turn to compare them (docs/BENCHMARKS.md, "The structure change"):

    PYTHONPATH=OLD/src .venv/bin/python benchmarks/structure_check.py
    PYTHONPATH=src .venv/bin/python benchmarks/structure_check.py
"""
import sys, time, statistics, torch, json
import res2net
torch.manual_seed(0)
m = res2net.create_model("res2net50_26w_4s").eval()
res = {}
for bs in (1, 16):
    fast = res2net.optimize(m, backend="eager")
    x = torch.randn(bs, 3, 224, 224)
    with torch.no_grad():
        for _ in range(3): fast(x)
        ts = []
        for _ in range(9):
            t = time.perf_counter(); fast(x); ts.append((time.perf_counter() - t) * 1e3 / bs)
    res[bs] = statistics.median(ts)
print(json.dumps(res))
