"""The statistics behind the audit's verdicts: small pure functions on numbers, no files, no registry.

Number claims: the (1 - alpha) t-interval of our mean over seeds (the paper measured its number on the same
test set, so the set's own sampling error does not enter) against the band
[paper - tolerance, paper + tolerance]: inside -> `reproduced`; wholly above / below -> `differs (higher)` /
`differs (lower)`; touching or crossing an edge -> `inconclusive`. A wide interval (few or noisy seeds)
can therefore only make a verdict less definite, never `reproduced`.

Effect claims are decided cell by cell (each cell's estimate, interval and test: cell_tests.py).

A cell's own verdict is Holm-adjusted over the claim's counting cells. The claim's verdict follows from its
cells by the rule it declares (`holds_in`): `all` (intersection-union: the claim's p is the largest cell p)
or a share of the cells (partial conjunction, Bonferroni form: (m - u + 1) times the u-th smallest p).
The claim's p is then Bonferroni-corrected over a family fixed in advance (selection.claim_family), so
runs arriving for one claim cannot move another claim's verdict, which Holm's step-down would allow.
`mixed` needs cells of both signs that are each decisive after that family correction; a null cell's sign
never decides it, and cells are never pooled into a number.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline_src.results.cell_tests import (SPLIT_MIN_GAP, SPLIT_RATIO, cell_stats, image_sign_p,
                                             paired_variance_p, seed_split, t_interval, two_sided_p)

# the cell statistics were part of this module: tests and benchmarks/sim_verdict_rules.py import them from here
__all__ = ["SPLIT_MIN_GAP", "SPLIT_RATIO", "cell_stats", "image_sign_p", "paired_variance_p", "seed_split",
           "t_interval", "two_sided_p"]

PAPER_SCALE = "paper"
SIGNS = {"+": 1, "-": -1, "±": 0}  # ±: a two-sided hypothesis ("differently"); the verdict names the direction
DIRECTION = {1: "higher", -1: "lower"}
SHORT_OF_PAPER = "short of the paper's effect"


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
