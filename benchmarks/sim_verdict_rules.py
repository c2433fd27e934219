"""Monte-Carlo calibration of two audit rules, run once to fix their constants in params/claims.yaml.

1. The paired seed-variance test at small n: its false-positive rate at nominal alpha when both sides
   have equal variance (normal, heavy-tailed t(3) and collapse-like mixture data), and its power at
   variance ratios 4 and 10. This fixes settings.variance_min_seeds.
2. The split-seeds flag (verdicts.seed_split): how often n seeds from one normal or t(3) population
   are flagged as split, and how often a cell of n - k seeds near one value and k collapsed seeds is.

    python benchmarks/sim_verdict_rules.py [--reps 20000]
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline_src.results.verdicts import SPLIT_MIN_GAP, SPLIT_RATIO, paired_variance_p, seed_split


def draws(kind: str, rng, size):
    if kind == "normal":
        return rng.standard_normal(size)
    if kind == "t3":
        return rng.standard_t(3, size)
    # collapse-like: most seeds near the mean, one in five far below
    return np.where(rng.random(size) < 0.2, -8.0, 0.0) + rng.standard_normal(size)


def variance_false_positives(n: int, kind: str, reps: int, rng, alpha: float = 0.05) -> float:
    hits = 0
    for _ in range(reps):
        x, y = draws(kind, rng, n), draws(kind, rng, n)
        hits += paired_variance_p(x, y) < alpha
    return hits / reps


def split_rate(values_fn, reps: int) -> float:
    return sum(seed_split(values_fn()) is not None for _ in range(reps)) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("paired variance test (Brown-Forsythe on paired deviations), rejections at nominal 5%")
    for n in (5, 8, 10, 15, 20):
        rates = {kind: variance_false_positives(n, kind, args.reps // 4, rng) for kind in ("normal", "t3", "mixture")}
        power = {ratio: sum(paired_variance_p(rng.standard_normal(n) * np.sqrt(ratio), rng.standard_normal(n)) < 0.05
                            for _ in range(args.reps // 4)) / (args.reps // 4) for ratio in (4, 10)}
        print(f"  n = {n:2d}: equal variances: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rates.items())
              + "; normal, variance ratio " + ", ".join(f"{r}: {100 * v:.0f}%" for r, v in power.items()))
    print(f"split-seeds flag (gap >= {SPLIT_MIN_GAP:g} points and >= {SPLIT_RATIO:g} x pooled within-group sd)")
    for n in (5, 10):
        for sd in (0.4, 2.0, 5.0):
            normal = split_rate(lambda: rng.normal(85, sd, n), args.reps)
            heavy = split_rate(lambda: 85 + sd * rng.standard_t(3, n), args.reps)
            print(f"  n = {n:2d}, one population of sd {sd:g}: normal {100 * normal:.2f}% flagged, t(3) {100 * heavy:.2f}%")
        for k in (1, 2, 3):
            power = split_rate(lambda: np.concatenate([rng.normal(85, 3, n - k), rng.normal(30, 12, k)]), args.reps)
            print(f"  n = {n:2d}, {k} seed(s) collapsed (mean 30, sd 12) among seeds at 85 +- 3: {100 * power:.1f}% flagged")


if __name__ == "__main__":
    main()
