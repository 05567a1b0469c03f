#!/usr/bin/env python3
"""Every estimator's variance and MSE at equal loss evaluations, from a run's summary.json.

    scripts/equal-cost-table.py SUMMARY_JSON [BUDGET ...]   (default budgets: 64 256)

A run measures each estimator at the sample sizes S it was given, and an estimate of S draws
costs S * (loss evaluations per draw). For each loss and budget B this prints a markdown table
of total_var_w and mse_w at B loss evaluations per estimate, interpolated linearly in
log(figure) against log(loss evaluations) between the two measured S that bracket B (both
figures fall like 1/S for unbiased estimators, so the interpolation is close to exact there).
An estimator whose measured costs do not bracket B is left out of that table, never
extrapolated. The standard errors are interpolated the same way. scripts/regenerate-results.sh
writes results/indecater-6x10-equal-cost.md with it (beside the run's folder, which holds
only what `mcgrad run` wrote).
"""

import json
import math
import sys


def interpolate(points, budget):
    """points: [(cost, value, se)] sorted by cost; the value and se at `budget` or None."""
    for (c0, v0, s0), (c1, v1, s1) in zip(points, points[1:]):
        if c0 <= budget <= c1:
            if c0 == c1 or budget == c0:
                return v0, s0
            t = (math.log(budget) - math.log(c0)) / (math.log(c1) - math.log(c0))

            def log_lerp(a, b):
                if a <= 0.0 or b <= 0.0:
                    return a + t * (b - a)
                return math.exp(math.log(a) + t * (math.log(b) - math.log(a)))

            return log_lerp(v0, v1), log_lerp(s0, s1)
    if points and points[-1][0] == budget:
        return points[-1][1], points[-1][2]
    return None


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: scripts/equal-cost-table.py SUMMARY_JSON [BUDGET ...]")
    try:
        with open(sys.argv[1]) as f:
            summary = json.load(f)
        budgets = [float(b) for b in sys.argv[2:]] or [64.0, 256.0]
        records = summary["records"]
        problem = summary["config"]["problem"]
        reps = summary["config"]["reps"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"equal-cost-table: {sys.argv[1]}: not a readable mcgrad summary.json ({e!r})")
    if not all(math.isfinite(b) and b > 0 for b in budgets):
        sys.exit("equal-cost-table: budgets must be positive numbers of loss evaluations")
    print(
        f"Variance and MSE at equal loss evaluations per estimate "
        f"(problem {problem}, {reps} repetitions per point, seed {summary['seed']}, "
        f"from `{sys.argv[1]}` by scripts/equal-cost-table.py; ± is one standard error)."
    )
    losses = list(dict.fromkeys(r["loss"] for r in records))
    estimators = list(dict.fromkeys(r["estimator"] for r in records))
    for loss in losses:
        for budget in budgets:
            print()
            print(f"**loss `{loss}`, {budget:g} loss evaluations per estimate**")
            print()
            print("| estimator | unbiased | loss evaluations per draw | S at this cost | total_var_w | mse_w |")
            print("|---|---|---|---|---|---|")
            rows = []
            for est in estimators:
                mine = sorted(
                    (r for r in records if r["loss"] == loss and r["estimator"] == est),
                    key=lambda r: r["loss_evaluations"],
                )
                if not mine:
                    continue
                var = interpolate(
                    [(r["loss_evaluations"], r["total_var_w"], r["total_var_w_se"]) for r in mine],
                    budget,
                )
                mse = interpolate(
                    [(r["loss_evaluations"], r["mse_w"], r["mse_w_se"]) for r in mine], budget
                )
                per_draw = f"{mine[0]['loss_evaluations_per_draw']:.3g}"
                s = f"{budget / mine[0]['loss_evaluations_per_draw']:.3g}"
                last = mine[-1]
                if (var is None or mse is None) and len(mine) > 1 and budget > last["loss_evaluations"]:
                    # An estimator whose cost stops growing with S (it enumerates everything
                    # from some S on, as `exact` always does) is shown at its largest cost.
                    capped = [r for r in mine if r["loss_evaluations"] == last["loss_evaluations"]]
                    if len(capped) < 2:
                        continue
                    var = (last["total_var_w"], last["total_var_w_se"])
                    mse = (last["mse_w"], last["mse_w_se"])
                    per_draw = "-"
                    s = f"{capped[0]['samples']}+ (cost capped at {last['loss_evaluations']:g})"
                if var is None or mse is None:
                    continue
                rows.append((mse[0], est, mine[0]["unbiased"], per_draw, s, var, mse))
            for _, est, unbiased, per_draw, s, var, mse in sorted(rows):
                print(
                    f"| `{est}` | {'yes' if unbiased else 'no'} | {per_draw} | {s} "
                    f"| {var[0]:.3g} ± {var[1]:.2g} | {mse[0]:.3g} ± {mse[1]:.2g} |"
                )


if __name__ == "__main__":
    main()
