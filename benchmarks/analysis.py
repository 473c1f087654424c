"""Bootstrap cost: 10^6 resamples of 110 values, time and peak memory, each method.

Each method runs in a fresh child process so that its peak resident memory (ru_maxrss) is its
own; the baseline is the same child importing everything and computing nothing.

Run: python benchmarks/analysis.py [--n-resamples 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from analysis.bootstrap import m_out_of_n_bootstrap, scipy_bootstrap
method, n_resamples = sys.argv[1], int(sys.argv[2])
values = np.random.default_rng(0).normal(0.986, 0.0055, 110)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if method == "report":
    r = m_out_of_n_bootstrap(values, n_resamples=n_resamples, resample_size=100)
elif method != "none":
    r = scipy_bootstrap(values, n_resamples=n_resamples, method=method)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s": dt, "peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024}))
"""

METHODS = [
    ("report", "m-out-of-n (100 of 110), percentile"),
    ("BCa", "scipy BCa"),
    ("percentile", "scipy percentile"),
    ("basic", "scipy basic"),
]


def run(method: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(n)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-resamples", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{args.n_resamples:,} resamples of 110 values; median of {args.repeats} fresh processes")
    print(f"{'method':<40}{'seconds':>9}{'peak RSS MB':>13}{'added MB':>10}")
    for method, label in METHODS:
        rs = [run(method, args.n_resamples) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in rs) for k in ("s", "peak_mb", "extra_mb")}
        print(f"{label:<40}{med['s']:>9.2f}{med['peak_mb']:>13.0f}{med['extra_mb']:>10.0f}")


if __name__ == "__main__":
    main()
