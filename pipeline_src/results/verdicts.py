"""The statistics behind the audit's verdicts: small pure functions on numbers, no files, no registry.

Number claims: the (1 - alpha) t-interval of our mean over seeds (the paper measured its number on the same
test set, so the set's own sampling error does not enter) against the band
[paper - tolerance, paper + tolerance]: inside -> `reproduced`; wholly above / below -> `differs (higher)` /
`differs (lower)`; touching or crossing an edge -> `inconclusive`. A wide interval (few or noisy seeds)
can therefore only make a verdict less definite, never `reproduced`.

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

A cell's own verdict is Holm-adjusted over the claim's counting cells. The claim's verdict follows from its
cells by the rule it declares (`holds_in`): `all` (intersection-union: the claim's p is the largest cell p)
or a share of the cells (partial conjunction, Bonferroni form: (m - u + 1) times the u-th smallest p).
The claim's p is then Bonferroni-corrected over a family fixed in advance (audit.py), so runs arriving for
one claim cannot move another claim's verdict, which Holm's step-down would allow. `mixed` needs cells of
both signs that are each decisive after that family correction; a null cell's sign never decides it, and
cells are never pooled into a number.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

PAPER_SCALE = "paper"
SIGNS = {"+": 1, "-": -1, "±": 0}  # ±: a two-sided hypothesis ("differently"); the verdict names the direction
DIRECTION = {1: "higher", -1: "lower"}
# The split-seeds flag (descriptive: it names a split, it decides nothing): the largest gap between sorted
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
SHORT_OF_PAPER = "short of the paper's effect"


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
    `too few seeds` (n < min_seeds), `scale differs` (not paper scale), then the band rule. The interval is
    over seeds only: the paper's number was measured on the same test set, so that set's sampling error
    is no part of the difference between the two."""
    mean, std, n, low, high = t_interval(values, alpha)
    out = {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high, "delta": mean - paper, "note": "",
           "uncertainty": "seeds (same test set as the paper)", "split": seed_split(values) or ""}
    if n == 0:
        return {**out, "verdict": "not run", "uncertainty": ""}
    if n < min_seeds:
        return {**out, "verdict": "too few seeds", "note": f"n = {n} < {min_seeds} seeds needed at {scale} scale"}
    if scale != PAPER_SCALE:
        return {**out, "verdict": "scale differs", "note": f"runs at {scale} scale only: not a reproduction"}
    position = band_position(low, high, paper - tolerance, paper + tolerance)
    return {**out, "verdict": NUMBER_VERDICTS[position]}


def uncertainty_label(image_var: float | None) -> str:
    return "seeds only" if image_var is None else "seeds + test images"


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


def join_scales(scales) -> str:
    return "+".join(sorted(set(map(str, scales)))) or ""


# ---- one cell -----------------------------------------------------------------------------------

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


# ---- a cell's verdict, and a claim's from its cells ----------------------------------------------

def cell_verdict(cell: dict, test_type: str, sign: str, alpha: float) -> str:
    """From the cell's within-claim adjusted p-values (p_adj, p_paper_adj, p_outside_adj)."""
    if cell.get("gate"):
        return f"not applicable ({cell['gate']})"
    if not cell["applicable"]:
        return "not applicable"
    if not cell["counts"]:
        return "too few seeds"
    if test_type == "equivalence":
        if cell["p_adj"] < alpha:
            return "supported"
        if cell["p_outside_adj"] < alpha:
            return f"contradicted ({DIRECTION[cell['direction']]})"
        return "inconclusive"
    if cell["p_adj"] < alpha:
        return _signed(cell["direction"], sign)
    if cell["p_paper_adj"] < alpha and _short_of_paper(cell, sign):
        return SHORT_OF_PAPER
    return "inconclusive"


def _signed(direction: int, sign: str) -> str:
    if SIGNS[sign] == 0:
        return f"supported ({DIRECTION[direction]})"
    return "supported" if direction == SIGNS[sign] else "contradicted"


def _short_of_paper(cell: dict, sign: str) -> bool:
    """Our effect lies on the near side of the paper's: smaller in the direction the paper claims."""
    towards = SIGNS[sign] or np.sign(cell["paper_effect"])
    return towards * (cell["mean"] - cell["paper_effect"]) < 0


def counting_mask(cells: pd.DataFrame) -> pd.Series:
    """Cells that take part in a claim's verdict: enough seeds, applicable, and through every gate."""
    gated = cells["gate"].fillna("").astype(str) != "" if "gate" in cells else False
    return cells["counts"] & cells["applicable"] & ~gated


def decide_cells(cells: pd.DataFrame, test_type: str, sign: str, alpha: float) -> pd.DataFrame:
    """Within-claim Holm over the counting cells, then each cell's own verdict."""
    cells = cells.copy()
    counting = counting_mask(cells)
    for column in ("p_value", "p_paper", "p_outside"):
        adjusted = np.full(len(cells), np.nan)
        adjusted[counting.to_numpy()] = holm(cells.loc[counting, column])
        cells[column.replace("_value", "") + "_adj"] = np.nan_to_num(adjusted, nan=1.0)
    cells["verdict"] = [cell_verdict(row, test_type, sign, alpha) for row in cells.to_dict("records")]
    return cells


def combined_p(p_values, rule) -> float:
    """The claim's p from its cells' p-values under its rule: `all` -> the largest (intersection-union);
    {share: q} -> (m - u + 1) p_(u), u = ceil(q m) (partial conjunction, valid under any dependence)."""
    p = np.sort(np.asarray(p_values, dtype=float))
    if not len(p):
        return np.nan
    if rule == "all":
        return float(p[-1])
    u = max(1, math.ceil(rule["share"] * len(p) - 1e-9))
    return float(min(1.0, (len(p) - u + 1) * p[u - 1]))


def rule_text(rule) -> str:
    return "all cells" if rule == "all" else f"at least {rule['share']:.0%} of cells"


def decide_claim(cells: pd.DataFrame, test_type: str, sign: str, rule, alpha: float, family_size: int) -> dict:
    """The claim's verdict from its decided cells (decide_cells) for one reading. Returns p (combined, before
    the family correction), p_family (Bonferroni over family_size), verdict and a note. Gates first.

    `mixed` needs cells of both signs that are each decisive after the family correction (their within-claim
    Holm p times family_size below alpha); a cell that decides nothing never makes a claim mixed. A
    signed verdict needs the cells its rule rests on (all, or the u with the smallest p) to agree in sign."""
    counting = cells[counting_mask(cells)]
    out = {"p_value": np.nan, "p_family": 1.0, "verdict": None, "note": ""}
    if cells.empty:
        return {**out, "verdict": "not run"}
    if counting.empty:
        gates = set(cells["gate"].fillna("").astype(str)) - {""} if "gate" in cells else set()
        if gates and (cells["gate"].fillna("").astype(str) != "").all():
            return {**out, "verdict": f"not applicable ({gates.pop()})" if len(gates) == 1
                    else "not applicable (every cell gated)", "note": "no cell passes its gates"}
        if not cells["applicable"].any():
            return {**out, "verdict": "not applicable", "note": "every cell has a side constant over seeds"}
        return {**out, "verdict": "too few seeds"}
    name = lambda frame: "; ".join(frame["cell"])  # noqa: E731
    if test_type == "equivalence":
        decisive = counting[(family_size * counting["p_outside_adj"] < alpha) & (counting["direction"] != 0)]
    else:
        decisive = counting[(family_size * counting["p_adj"] < alpha) & (counting["direction"] != 0)]
    if {1, -1} <= set(decisive["direction"]):
        return {**out, "verdict": "mixed", "note": _mixed_note(decisive)}
    out["p_value"] = combined_p(counting["p_value"], rule)
    out["p_family"] = min(1.0, family_size * out["p_value"])
    if test_type == "equivalence":
        if out["p_family"] < alpha:
            return {**out, "verdict": "supported"}
        p_out = min(1.0, family_size * combined_p(counting["p_outside"], rule))
        directions = set(_carriers(counting, "p_outside", rule)["direction"])
        if p_out < alpha and len(directions) == 1 and 0 not in directions:
            return {**out, "verdict": f"contradicted ({DIRECTION[directions.pop()]})",
                    "note": f"outside the band in {rule_text(rule)} (p_family {p_out:.2g})"}
        return {**out, "verdict": "inconclusive"}
    if out["p_family"] < alpha:
        directions = set(_carriers(counting, "p_value", rule)["direction"])
        if len(directions) == 1 and 0 not in directions:
            return {**out, "verdict": _signed(directions.pop(), sign)}
        return {**out, "verdict": "inconclusive", "note": "the cells the rule rests on disagree in sign"}
    if counting["p_paper"].notna().all() and all(_short_of_paper(c, sign) for c in counting.to_dict("records")):
        p_paper = min(1.0, family_size * combined_p(counting["p_paper"], rule))
        if p_paper < alpha:
            return {**out, "verdict": SHORT_OF_PAPER,
                    "note": f"our effect lies short of the paper's, allowing for the paper's seed spread and "
                            f"rounding, in {rule_text(rule)} (p_family {p_paper:.2g}): {name(counting)}"}
    return {**out, "verdict": "inconclusive"}


def _carriers(cells: pd.DataFrame, column: str, rule) -> pd.DataFrame:
    """The cells a rule's combined p rests on: all of them, or the u = ceil(q m) with the smallest p."""
    if rule == "all":
        return cells
    u = max(1, math.ceil(rule["share"] * len(cells) - 1e-9))
    return cells.sort_values(column, kind="stable").head(u)


def _mixed_note(cells: pd.DataFrame) -> str:
    parts = []
    for direction, word in ((1, "above"), (-1, "below")):
        part = cells[cells["direction"] == direction]
        if len(part):
            parts.append(f"{word}: " + "; ".join(f"{c} ({m:+.2f}, {v})" for c, m, v in
                                                 zip(part["cell"], part["mean"], part["verdict"])))
    return "cells disagree in sign. " + " | ".join(parts)


def leave_one_out(cells: pd.DataFrame, verdict: str, test_type: str, sign: str, rule, alpha: float,
                  family_size: int) -> str:
    """The counting cells whose removal changes the claim's verdict (decided on all cells: `verdict`);
    '' when none does, or < 2 cells."""
    counting = cells[counting_mask(cells)]
    if len(counting) < 2:
        return ""
    changes = []
    for cell in counting["cell"]:
        rest = decide_cells(cells[cells["cell"] != cell], test_type, sign, alpha)
        without = decide_claim(rest, test_type, sign, rule, alpha, family_size)["verdict"]
        if without != verdict:
            changes.append(f"without {cell}: {without}")
    return "; ".join(changes)


def effect_gate(cells_all: int, scale: str) -> str | None:
    """The verdict that holds before any test (smoke scale: the numbers are kept, nothing is decided)."""
    if cells_all == 0:
        return "not run"
    if scale != PAPER_SCALE:
        return "smoke scale"
    return None


def pooled_description(cells: pd.DataFrame) -> dict:
    """A descriptive pooled mean over the counting cells (inverse-variance weights) with Cochran's Q and
    I^2; it decides nothing."""
    part = cells[counting_mask(cells) & (cells["se"] > 0)]
    if len(part) < 2:
        return {"pooled": np.nan, "i2": np.nan}
    w = 1 / part["se"] ** 2
    pooled = float((w * part["mean"]).sum() / w.sum())
    q = float((w * (part["mean"] - pooled) ** 2).sum())
    i2 = max(0.0, (q - (len(part) - 1)) / q) if q > 0 else 0.0
    return {"pooled": pooled, "i2": i2}
