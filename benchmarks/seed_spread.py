"""Measure the seed-to-seed spread of every training-dependent figure the tests assert on, and
derive each test threshold from it.

The tests marked ``trains`` record their figures through the ``measured`` fixture
(``tests/conftest.py``). This script runs those tests once per seed (``DEEPSHRINK_TEST_SEED``),
collects the figures, and prints per figure: the value at each seed, mean, standard deviation,
and the threshold rule of ``tests/README.md``:

- a lower bound (the value must stay above it): ``min(mean - 3·std, worst - margin)``
- an upper bound (the value must stay below it): ``max(mean + 3·std, worst + margin)``

``margin`` is the one each test states (default 0.0056: two of the 360 test digits). A test whose
bound is then useless (say, a "gain" whose lower bound falls to 0 or below) must test a mean over
several models or a larger split instead — the table marks those.

    python benchmarks/seed_spread.py --seeds 5                 # all `trains` tests, seeds 0..4
    python benchmarks/seed_spread.py --seeds 5 -k qat          # a subset (pytest -k)
    python benchmarks/seed_spread.py --seeds 5 --threads 2     # evaluation at 2 threads

Training inside the tests is deterministic (one thread), so ``--threads`` changes only how the
evaluation kernels split their sums; the figures should not move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, md_table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int, threads: int, keyword: str | None, out: Path) -> tuple[int, float, str]:
    env = {**os.environ, "DEEPSHRINK_TEST_SEED": str(seed), "DEEPSHRINK_MEASURE_OUT": str(out),
           "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-m", "trains", "-p", "no:cacheprovider"]
    if keyword:
        cmd += ["-k", keyword]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return proc.returncode, time.perf_counter() - t0, tail[0]


def derive(values: list[float], bound: str, margin: float) -> float:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if bound == "lower":
        return min(mean - 3 * std, min(values) - margin)
    return max(mean + 3 * std, max(values) + margin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-k", dest="keyword", default=None)
    ap.add_argument("--name", default="seed_spread", help="results/<name>.md")
    args = ap.parse_args()

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows: list[dict] = []
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"seed{seed}.jsonl"
            rc, secs, tail = run_seed(seed, args.threads, args.keyword, out)
            runs.append([seed, f"{secs:.0f} s", tail])
            print(f"seed {seed}: {tail} ({secs:.0f} s)", flush=True)
            if out.exists():
                rows += [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]

    figures: dict[tuple[str, str, str, float], dict[int, float]] = defaultdict(dict)
    for r in rows:
        figures[(r["test"], r["name"], r["bound"], r.get("margin", 2 / 360))][r["seed"]] = r["value"]
    table = []
    for (test, name, bound, margin), by_seed in sorted(figures.items()):
        vals = [by_seed[s] for s in seeds if s in by_seed]
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        thr = derive(vals, bound, margin)
        useless = (bound == "lower" and ("gain" in name or "minus" in name) and thr <= 0)
        table.append([test.split("::", 1)[-1], name, "≥" if bound == "lower" else "≤",
                      " ".join(f"{by_seed[s]:.4f}" if s in by_seed else "—" for s in seeds),
                      f"{mean:.4f}", f"{std:.4f}", f"{margin:g}",
                      f"{thr:.4f}" + (" (too wide: test a mean)" if useless else "")])
    body = (f"Seeds {seeds[0]}–{seeds[-1]}; training one thread (deterministic), evaluation at "
            f"{args.threads} thread(s). Threshold: lower bound min(mean − 3·std, worst − margin), upper bound "
            f"max(mean + 3·std, worst + margin).\n\n"
            + md_table(["test", "figure", "bound", "value per seed", "mean", "std", "margin", "threshold"], table)
            + "\n\n" + md_table(["seed", "time", "pytest"], runs) + "\n\n" + machine_line(args.threads)
            + f"; torch {__import__('torch').__version__}")
    cmd = f"python benchmarks/seed_spread.py --seeds {args.seeds} --threads {args.threads}"
    if args.keyword:
        cmd += f" -k '{args.keyword}'"
    write_result(args.name, "Seed spread of the tests' training-dependent figures (issue 10)", cmd, body)


if __name__ == "__main__":
    main()
