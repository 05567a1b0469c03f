#!/usr/bin/env python3
"""The numpy peer of `mcgrad run --loss squared --estimators reinforce --samples S --reps R`:
the same variance estimate (REINFORCE's S-draw estimate of the gradient of E ||T - z||^2 with
respect to the logits a = xW of the seed problem, repeated R times; per-coordinate mean and
variance over the repetitions), vectorised in numpy as fast as we know how: inverse-CDF draws
by `searchsorted` on uniforms, category counts by `bincount`, and the estimate from the counts
(`g = (n * f - p (n . f)) / S`), a block of repetitions at a time. Writes the moments to
`<out>/numpy-summary.json` and prints the wall time of the computation.

Usage: numpy_reinforce.py PROBLEM_JSON OUT_DIR [S] [R] [SEED]
(PROBLEM_JSON: a problem file as mcgrad writes it, e.g. results/reference/problem.json.)
"""
import json
import os
import sys
import time

import numpy as np


def main():
    problem_path, out_dir = sys.argv[1], sys.argv[2]
    s = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 50000
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    t0 = time.perf_counter()
    with open(problem_path) as fh:
        problem = json.load(fh)
    x = np.asarray(problem["x"], dtype=np.float64)
    w = np.asarray(problem["w"], dtype=np.float64)
    t = np.asarray(problem["t"], dtype=np.float64)
    a = x @ w
    p = np.exp(a - a.max())
    p /= p.sum()
    k = p.size
    # f(e_k) = ||T - e_k||^2
    f = (t * t).sum() - 2.0 * t + 1.0
    cdf = np.cumsum(p)[:-1]
    rng = np.random.default_rng(seed)
    block = max(1, min(reps, (1 << 20) // s))
    offsets = np.repeat(np.arange(block, dtype=np.int64) * k, s)
    total = np.zeros(k)
    total_sq = np.zeros(k)
    done = 0
    while done < reps:
        n = min(block, reps - done)
        u = rng.random(n * s)
        cats = np.searchsorted(cdf, u, side="right")
        counts = np.bincount(cats + offsets[: n * s], minlength=n * k).reshape(n, k)
        weighted = counts * f
        g = (weighted - np.outer(weighted.sum(axis=1), p)) / s
        # Shifted by the first block's mean for an exact enough variance.
        if done == 0:
            shift = g.mean(axis=0)
        d = g - shift
        total += d.sum(axis=0)
        total_sq += (d * d).sum(axis=0)
        done += n
    mean_d = total / reps
    var = (total_sq - reps * mean_d * mean_d) / (reps - 1)
    seconds = time.perf_counter() - t0
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "numpy-summary.json"), "w") as fh:
        json.dump(
            {
                "samples": s,
                "reps": reps,
                "mean": (shift + mean_d).tolist(),
                "var": var.tolist(),
                "seconds": seconds,
            },
            fh,
        )
    print(f"numpy {np.__version__}: S = {s}, R = {reps}: {seconds:.3f} s "
          f"({s * reps / seconds / 1e6:.1f} M draws/s)")


if __name__ == "__main__":
    main()
