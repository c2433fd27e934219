"""Monte-Carlo calibration of two audit rules, run once to fix their constants in params/claims.yaml.

1. The paired seed-variance test at small n: its false-positive rate at nominal alpha when both sides
   have equal variance (normal, heavy-tailed t(3) and collapse-like mixture data), and its power at
   variance ratios 4 and 10. This fixes settings.variance_min_seeds.
2. The split-seeds flag (verdicts.seed_split): how often n seeds from one normal or t(3) population
   are flagged as split, and how often a cell of n - k seeds near one value and k collapsed seeds is.
3. `short of the paper's effect` when the paper's effect is the truth: the paper's number is itself a
   5-seed mean printed to 2 decimals; the rate at which one cell is read short of it, by the rule of
   b9881d5 (our interval alone) and by the current one (the paper's seed spread and rounding allowed).
4. The images term of an effect's interval: coverage of the 95% interval of a seeds x images table with
   seed, image and interaction effects, counting the interaction twice (b9881d5) or once (unbiased
   two-way estimate, audit.image_variance).

    python benchmarks/sim_verdict_rules.py [--reps 20000]
"""
from __future__ import annotations

import argparse

import numpy as np

from scipy import stats

from pipeline_src.results.audit import image_variance
from pipeline_src.results.verdicts import (SPLIT_MIN_GAP, SPLIT_RATIO, cell_stats, paired_variance_p, seed_split,
                                           two_sided_p)


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
    main_more(args.reps)


def short_of_paper_rates(sd: float, reps: int, rng, n: int = 5) -> tuple[float, float]:
    """One cell whose true effect is the paper's: (b9881d5 rule, current rule) rates of `short of`."""
    old = new = 0
    test = {"type": "paired", "paper_effect": {}}
    for _ in range(reps):
        paper = round(0.5 + sd * rng.standard_normal(5).mean(), 2)  # the paper's own 5 seeds, printed
        ours = 0.5 + sd * rng.standard_normal(n)
        mean, se = ours.mean(), ours.std(ddof=1) / np.sqrt(n)
        old += mean < paper and two_sided_p(mean - paper, se, n - 1) < 0.05
        new += mean < paper and cell_stats(ours, None, 0.05, test, paper)["p_paper"] < 0.05
    return old / reps, new / reps


def images_term_coverage(reps: int, rng, n: int = 5, images: int = 2000, seed_sd: float = 0.2,
                         image_sd: float = 3.0, interaction_sd: float = 20.0) -> tuple[float, float]:
    """Coverage of the true mean 0 by the 95% interval, images term counted twice / once (points)."""
    hits_old = hits_new = 0
    t = stats.t.ppf(0.975, n - 1)
    for _ in range(reps):
        table = (seed_sd * rng.standard_normal((n, 1)) + image_sd * rng.standard_normal((1, images))
                 + interaction_sd * rng.standard_normal((n, images)))
        mean, seeds = table.mean(), table.mean(axis=1).var(ddof=1) / n
        old = table.mean(axis=0).var(ddof=1) / images
        new = image_variance(list(table / 100.0))
        hits_old += abs(mean) <= t * np.sqrt(seeds + old)
        hits_new += abs(mean) <= t * np.sqrt(seeds + new)
    return hits_old / reps, hits_new / reps


def main_more(reps: int) -> None:
    rng = np.random.default_rng(1)
    print("`short of the paper's effect` on one cell whose true effect is the paper's (5 seeds; should be <= 2.5%)")
    for sd in (0.07, 0.2, 0.37):
        old, new = short_of_paper_rates(sd, reps, rng)
        print(f"  seed sd {sd:g}: b9881d5 rule {100 * old:.1f}%, current rule {100 * new:.1f}%")
    print("95% interval coverage, seeds x images (5 x 2000; seed sd 0.2, image sd 3, interaction sd 20 points)")
    old, new = images_term_coverage(max(200, reps // 20), rng)
    print(f"  interaction counted twice (b9881d5) {100 * old:.1f}%, once (unbiased two-way) {100 * new:.1f}%")


if __name__ == "__main__":
    main()
