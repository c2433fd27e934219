"""The statistics behind the audit's verdicts: small pure functions on numbers, no files, no registry.

Number claims: the (1 - alpha) t-interval of our mean over seeds against the band
[paper - tolerance, paper + tolerance]: inside -> `reproduced`; wholly above / below -> `differs (higher)` /
`differs (lower)`; touching or crossing an edge -> `inconclusive`. A wide interval (few or noisy seeds)
can therefore only make a verdict less definite, never `reproduced`.

Effect claims: a long frame of per-seed values, one `cell` per (dataset, model, configuration of each
side); for paired claims the value is treatment - control of one seed. Each cell gets its own paired
t-test. A cell counts for the claim only with >= min_seeds seeds. The claim-level test is a t-test over
seeds: each seed's values are first averaged over the counting cells (only seeds every counting cell has),
and the seed means are tested against 0 with n_seeds - 1 df. Seeds are the independent replicates; cells
of one seed may share runs (one baseline against two noise methods, one trained model under two eval
modes), and averaging within the seed keeps them from counting twice. With one cell this is the ordinary
paired t-test. The inference is about the average effect over the cells we ran, not about models or
datasets we did not run; the per-cell table shows how the cells differ.

Variance claims ("more stable"): per cell and at claim level, the Pitman-Morgan test: var(x) = var(y)
exactly when corr(x + y, x - y) = 0, tested with n - 2 df. It is exact for bivariate normal pairs, so
the two sides may share runs (two gains over the same baseline seed). The reported effect is
log(var treatment / var control).

The p-values of all effect claims of one audit that have one (enough seeds; smoke scale included, so the
family does not depend on which runs reached paper scale; equivalence claims are decided by their CI and
have none) are Holm-adjusted together; the verdicts use the adjusted p.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

PAPER_SCALE = "paper"
SIGNS = {"+": 1, "-": -1}
CELL_STATS = ["n", "mean", "std", "ci_low", "ci_high", "p_value"]


def _quiet(test, *args, **kwargs):
    """scipy warns on zero-variance or constant samples; the NaN / inf result is handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return test(*args, **kwargs)


def t_interval(values, alpha: float = 0.05) -> tuple[float, float, int, float, float]:
    """Mean, sample std, n and the (1 - alpha) t-interval of the mean; std and CI are NaN when n < 2."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return np.nan, np.nan, 0, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return mean, np.nan, 1, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / np.sqrt(n)
    return mean, std, n, mean - half, mean + half


def band_position(low: float, high: float, band_low: float, band_high: float) -> str:
    """Where an interval lies against a closed band: inside, above, below, or overlaps (an edge inside it,
    touching from outside included: a shared point is not 'wholly outside')."""
    if band_low <= low and high <= band_high:
        return "inside"
    if low > band_high:
        return "above"
    if high < band_low:
        return "below"
    return "overlaps"


NUMBER_VERDICTS = {"inside": "reproduced", "above": "differs (higher)", "below": "differs (lower)",
                   "overlaps": "inconclusive"}


def number_verdict(paper: float, values, scale: str = PAPER_SCALE, tolerance: float = 1.0,
                   alpha: float = 0.05, min_seeds: int = 3) -> dict:
    """One published number against our runs' values, at the runs' scale. In order: `not run` (no values),
    `too few seeds` (n < min_seeds), `scale differs` (not paper scale), then the band rule."""
    mean, std, n, low, high = t_interval(values, alpha)
    out = {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high, "delta": mean - paper, "note": ""}
    if n == 0:
        return {**out, "verdict": "not run"}
    if n < min_seeds:
        return {**out, "verdict": "too few seeds", "note": f"n = {n} < {min_seeds} seeds needed at {scale} scale"}
    if scale != PAPER_SCALE:
        return {**out, "verdict": "scale differs", "note": f"runs at {scale} scale only: not a reproduction"}
    position = band_position(low, high, paper - tolerance, paper + tolerance)
    return {**out, "verdict": NUMBER_VERDICTS[position]}


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: the k-th smallest of m gets (m - k + 1) p, made non-decreasing
    in that order and capped at 1. NaN entries are no hypothesis: they stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def mean_test(values, alpha: float = 0.05) -> dict:
    """Mean, CI and two-sided one-sample t-test against 0 (= the paired t-test when values are differences)."""
    values = np.asarray(values, dtype=float)
    mean, std, n, low, high = t_interval(values, alpha)
    p_value = float(_quiet(stats.ttest_1samp, values, 0.0).pvalue) if n >= 2 else np.nan
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high, "p_value": p_value}


def variance_test(x, y) -> dict:
    """Pitman-Morgan test of var(x) = var(y) for paired samples; mean = log(var x / var y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    out = {"n": n, "mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if n < 3:  # the correlation test has n - 2 df
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        # +-inf when one side is constant (a generator that changed no prediction in any seed): that side
        # is the more stable one, and the sign must say so; NaN (0/0) when both are
        ratio = float(np.log(x.var(ddof=1) / y.var(ddof=1)))
    out["mean"] = ratio
    out["p_value"] = float(_quiet(stats.pearsonr, x + y, x - y)[1])
    return out


def seed_means(values: pd.DataFrame, cells: list[str], columns: list[str]) -> pd.DataFrame:
    """Per seed, `columns` averaged over `cells`; only seeds every one of those cells has."""
    part = values[values["cell"].isin(cells)]
    per_seed = part.groupby("seed")
    complete = per_seed["cell"].nunique() == len(cells)
    return per_seed[columns].mean()[complete]


def summarize_cells(values: pd.DataFrame, min_seeds: dict, alpha: float = 0.05,
                    variance: bool = False) -> tuple[pd.DataFrame, dict]:
    """values: one line per (cell, seed) with `value` (or `t` and `c` for variance claims) and `scale`.
    Returns the per-cell table and the claim-level result over the cells with enough seeds
    (min_seeds: scale -> seeds needed). Without such cells, the claim-level numbers are computed over all
    cells for display only (p-value NaN) and `counting` is 0."""
    rows = []
    for cell, part in values.groupby("cell", sort=False):
        scale = join_scales(part["scale"])
        result = variance_test(part["t"], part["c"]) if variance else mean_test(part["value"], alpha)
        rows.append({"cell": cell, **result, "needed": min_seeds.get(scale, min_seeds["default"]), "scale": scale})
    table = pd.DataFrame(rows, columns=["cell", *CELL_STATS, "needed", "scale"])
    table["counts"] = table["n"] >= table["needed"]
    counting = list(table.loc[table["counts"], "cell"])
    used = counting or list(table["cell"])
    per_seed = seed_means(values, used, ["t", "c"] if variance else ["value"])
    result = (variance_test(per_seed["t"], per_seed["c"]) if variance
              else mean_test(per_seed["value"], alpha))
    scale = join_scales(table.loc[table["cell"].isin(used), "scale"])
    result.update(cells=len(counting), cells_all=len(table), scale=scale,
                  needed=min_seeds.get(scale, min_seeds["default"]))
    if not counting or result["n"] < result["needed"]:
        result["p_value"] = np.nan  # numbers for display; no test is counted
    return table.drop(columns="needed"), result


def join_scales(scales) -> str:
    return "+".join(sorted(set(map(str, scales)))) or ""


def effect_gate(result: dict) -> str | None:
    """The verdict that holds before any test, or None when the test decides."""
    if result["cells_all"] == 0:
        return "not run"
    if result["cells"] == 0 or result["n"] < result["needed"]:
        return "too few seeds"
    if result["scale"] != PAPER_SCALE:
        return "smoke scale"
    return None


def significance_verdict(mean: float, p_adjusted: float, expected_sign: str, alpha: float) -> str:
    """`supported` / `contradicted` when the adjusted p < alpha (by the sign of the effect), else `inconclusive`."""
    if not p_adjusted < alpha:  # also NaN: identical values, nothing to test
        return "inconclusive"
    return "supported" if np.sign(mean) == SIGNS[expected_sign] else "contradicted"


def interval_verdict(low: float, high: float, band: tuple[float, float]) -> str:
    """Equivalence: the CI of the effect inside the band -> supported, wholly outside -> contradicted."""
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    position = band_position(low, high, *band)
    return {"inside": "supported", "overlaps": "inconclusive"}.get(position, "contradicted")
