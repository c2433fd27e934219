"""The statistics of one cell of an effect claim: small pure functions on numbers, no files, no registry.

Effect claims are decided cell by cell. A cell is one dataset x model x configuration of each side x
protocol reading; its seeds are paired only within it. Each cell gets its own estimate, interval and test:

- Its standard error covers the seeds and, when the runs stored per-image predictions, the test set too:
  every seed is scored on the same test images, so the seed-to-seed spread misses the test set's own
  sampling error. The seeds x images table of paired differences is a two-way layout; the unbiased
  estimate of its grand mean's variance is s_seeds^2 / n + (s_images^2 - MS_interaction / n) / N, the
  images term floored at 0 (s_seeds^2: variance of the seed means; s_images^2: variance over the N test
  images of each image's seed-averaged difference; MS_interaction: the residual mean square). t with
  n - 1 df. Runs without predictions: seeds only, and the cell says so.
- A cell with no variance over seeds, or whose seeds split into two groups (seed_split), gets no t-test
  and no t-interval: an exact sign-flip permutation test over seeds (over test images, McNemar's sign
  test, when a no-variance cell has predictions); equivalence then uses exact sign tests at each edge.
- Directional claims: a two-sided t-test against 0; where the paper's own tables imply an effect, also a
  test against that effect, whose variance adds the paper's own run-to-run spread (our seed sd over the
  paper's seed count, the paper gives none) and whose distance first gives up the paper's 2-decimal
  rounding. Equivalence claims: two one-sided tests (TOST) at the band. Variance claims ("more stable"):
  a paired Brown-Forsythe test (each side's absolute deviations from its median, differenced per seed,
  t-tested), which holds its level far better than Pitman-Morgan on heavy-tailed data; a side constant
  over seeds has no variance to compare: `not applicable`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

# seed values is at least SPLIT_MIN_GAP points and SPLIT_RATIO times the pooled sd within the two groups it
# leaves. The floor carries the rule at 5 seeds, where no scale-free gap statistic separates one population
# from two: converged Fashion-MNIST cells have seed sds of 0.1 to 0.5 points, so 5 points is ten of them.
# benchmarks/sim_verdict_rules.py measures both errors.
SPLIT_RATIO = 3.0
SPLIT_MIN_GAP = 5.0
# The paper's effect is a difference of two table values, each a mean of the paper's seeds printed to 2
# decimals: its own spread is taken as our cell's seed sd over PAPER_SEEDS (the paper reports none), and
# the rounding can move it by up to PAPER_ROUNDING points (0.005 per value).
PAPER_SEEDS = 5
PAPER_ROUNDING = 0.01


def _quiet(test, *args, **kwargs):
    """scipy warns on zero-variance or constant samples; the NaN / inf result is handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return test(*args, **kwargs)


def t_interval(values, alpha: float = 0.05, extra_var: float = 0.0) -> tuple[float, float, int, float, float]:
    """Mean, sample std and n of the values, and the (1 - alpha) t-interval of the mean whose squared standard
    error is std^2 / n + extra_var (the test set's share, when known); std and CI are NaN when n < 2."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return np.nan, np.nan, 0, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return mean, np.nan, 1, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * math.sqrt(std ** 2 / n + extra_var)
    return mean, std, n, mean - half, mean + half



def uncertainty_label(image_var: float | None) -> str:
    return "seeds only" if image_var is None else "seeds + test images"



def _t_sf(stat: float, df: int) -> float:
    """Upper tail of t; a zero standard error makes any nonzero difference certain."""
    if np.isnan(stat):
        return np.nan
    return float(stats.t.sf(stat, df))


def _ratio(diff: float, se: float) -> float:
    if se > 0:
        return diff / se
    return math.copysign(math.inf, diff) if diff else 0.0


def two_sided_p(diff: float, se: float, df: int) -> float:
    if se == 0 and diff == 0:
        return 1.0
    return min(1.0, 2 * _t_sf(abs(_ratio(diff, se)), df))


def paired_variance_p(x, y) -> float:
    """Paired Brown-Forsythe: |x - median x| - |y - median y| per seed, t-tested against 0 (two-sided)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d = np.abs(x - np.median(x)) - np.abs(y - np.median(y))
    if len(d) < 2:
        return np.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(_quiet(stats.ttest_1samp, d, 0.0).pvalue)


def sign_flip_p(values, centre: float = 0.0, alternative: str = "two-sided") -> float:
    """Exact sign-flip permutation test of the mean of (values - centre) over seeds: every one of the 2^n
    sign patterns. Needs no variance estimate and no normality; n seeds cannot give less than 2 / 2^n."""
    d = np.asarray(values, dtype=float) - centre
    if not len(d) or np.all(d == 0):
        return 1.0
    return float(_quiet(stats.permutation_test, (d,), np.mean, permutation_type="samples",
                        n_resamples=np.inf, alternative=alternative).pvalue)


def image_sign_p(per_image) -> float:
    """McNemar's exact test over test images (a sign test on the images the two sides score differently;
    with several seeds, on each image's seed-averaged difference)."""
    d = np.asarray(per_image, dtype=float)
    moved = d[d != 0]
    if not len(moved):
        return 1.0
    return float(stats.binomtest(int((moved > 0).sum()), len(moved), 0.5).pvalue)


def seed_split(values) -> str | None:
    """'3 seeds near 26.9, 2 near 84.0' when the seeds fall into two groups: the largest gap between sorted
    values is at least SPLIT_RATIO times the pooled sd within the two groups it leaves (and SPLIT_MIN_GAP);
    None otherwise. Needs 4 seeds (the pooled sd has n - 2 df)."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if len(v) < 4:
        return None
    gaps = np.diff(v)
    cut = int(np.argmax(gaps)) + 1
    low, high = v[:cut], v[cut:]
    pooled = math.sqrt((((low - low.mean()) ** 2).sum() + ((high - high.mean()) ** 2).sum()) / (len(v) - 2))
    gap = float(gaps[cut - 1])
    if gap < SPLIT_MIN_GAP or gap < SPLIT_RATIO * pooled:
        return None
    return f"{len(low)} seed{'s' if len(low) > 1 else ''} near {low.mean():.1f}, {len(high)} near {high.mean():.1f}"


def cell_stats(values, image_var: float | None = None, alpha: float = 0.05, test: dict | None = None,
               paper_effect: float | None = None, per_image=None) -> dict:
    """One cell of an effect claim: values are its per-seed effects (points, or a diagnostic); image_var the
    test set's share of the mean's variance (None: seeds only); per_image each test image's seed-averaged
    difference (None without predictions). test: the claim's test (type, band, paper_effect spec)."""
    test = test or {"type": "paired"}
    values = np.asarray(values, dtype=float)
    mean, std, n, low, high = t_interval(values, alpha, image_var or 0.0)
    se = math.sqrt(std ** 2 / n + (image_var or 0.0)) if n >= 2 else np.nan
    split = seed_split(values) or ""
    out = {"n": n, "mean": mean, "std": std, "se": se, "ci_low": low, "ci_high": high, "p_value": np.nan,
           "p_paper": np.nan, "p_outside": np.nan, "paper_effect": np.nan if paper_effect is None else paper_effect,
           "direction": int(np.sign(mean)) if n else 0, "uncertainty": uncertainty_label(image_var),
           "split": split, "seeds": _seed_text(values), "applicable": True, "test": "", "note": ""}
    if n < 2:
        return out
    if std == 0 or split:
        return {**out, **_exact_cell(values, test, per_image if std == 0 else None, split)}
    df = n - 1
    out["test"] = "t"
    if test["type"] == "equivalence":
        lo, hi = test["band"]
        out["p_value"] = max(_t_sf(_ratio(mean - lo, se), df), _t_sf(_ratio(hi - mean, se), df))  # TOST
        if mean > hi or mean < lo:
            edge = hi if mean > hi else lo
            out["p_outside"] = two_sided_p(mean - edge, se, df)
            out["direction"] = 1 if mean > hi else -1
        else:
            out["p_outside"], out["direction"] = 1.0, 0
        return out
    out["p_value"] = two_sided_p(mean, se, df)
    if paper_effect is not None:
        spec = test.get("paper_effect") or {}
        # the paper's own seed spread (our sd as its proxy) widens the test; its rounding shortens the distance
        se_paper = math.sqrt(se ** 2 + std ** 2 / spec.get("seeds", PAPER_SEEDS))
        distance = mean - paper_effect
        shrunk = math.copysign(max(0.0, abs(distance) - spec.get("rounding", PAPER_ROUNDING)), distance)
        out["p_paper"] = two_sided_p(shrunk, se_paper, df)
    return out


def _exact_cell(values: np.ndarray, test: dict, per_image, split: str) -> dict:
    """A cell without a usable seed variance (none, or two groups of seeds): exact tests, no t-interval. No
    test against the paper's effect: its spread allowance needs a seed sd that describes one population."""
    n, mean = len(values), float(values.mean())
    why = f"seeds split ({split})" if split else "no variance over seeds"
    out = {"ci_low": np.nan, "ci_high": np.nan, "p_paper": np.nan}
    if test["type"] == "equivalence":
        lo, hi = test["band"]
        # exact TOST: a one-sided sign-flip test at each edge
        p = max(sign_flip_p(values, lo, "greater"), sign_flip_p(values, hi, "less"))
        outside = mean > hi or mean < lo
        edge = hi if mean > hi else lo
        return {**out, "test": "exact sign-flip over seeds", "p_value": p,
                "p_outside": sign_flip_p(values, edge) if outside else 1.0,
                "direction": (1 if mean > hi else -1) if outside else 0,
                "note": f"{why}: exact sign-flip tests over seeds at the band's edges, no t-interval"}
    if per_image is not None:
        return {**out, "test": "exact McNemar over test images", "p_value": image_sign_p(per_image),
                "note": f"{why}: McNemar's exact test over the test images, no t-interval"}
    return {**out, "test": "exact sign-flip over seeds", "p_value": sign_flip_p(values),
            "note": f"{why}: exact sign-flip test over seeds (smallest possible p {2 / 2 ** n:.3g}), no t-interval"}


def variance_cell_stats(t, c) -> dict:
    """One cell of a variance claim: per-seed values of each side (paired by seed). The effect shown is
    log(var t / var c); the test is paired Brown-Forsythe; a constant side is not applicable."""
    t, c = np.asarray(t, dtype=float), np.asarray(c, dtype=float)
    n = len(t)
    out = {"n": n, "mean": np.nan, "std": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p_value": np.nan, "p_paper": np.nan, "p_outside": np.nan, "paper_effect": np.nan, "direction": 0,
           "uncertainty": "seeds only", "split": "", "seeds": _seed_text(t) + " vs " + _seed_text(c),
           "applicable": True}
    if n < 2:
        return out
    var_t, var_c = t.var(ddof=1), c.var(ddof=1)
    if var_t == 0 or var_c == 0:
        side = "both sides are" if var_t == var_c == 0 else ("the treatment" if var_t == 0 else "the control") + " is"
        return {**out, "applicable": False, "note": f"{side} constant over seeds: no variance to compare"}
    out["mean"] = float(np.log(var_t / var_c))
    out["direction"] = int(np.sign(out["mean"]))
    out["p_value"] = paired_variance_p(t, c)
    return out


def _seed_text(values) -> str:
    return ", ".join(f"{v:.2f}" for v in np.asarray(values, dtype=float))
