"""Effect claims: each claim's per-seed values (paired, one-sample, variance and gain-by-dataset tests),
its cells' statistics, gates and the test set's share of an interval, and the claim's verdict per reading.

The statistics and the verdict rules live in verdicts.py; which runs a side takes, in selection.py."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_src.results.gates import cell_gate
from pipeline_src.results.selection import (VALUE_COLUMNS, _per_cell_seed, _with_run_columns, at_best_scale,
                                            cell_reading, paired_values, select_side)
from pipeline_src.results.cell_tests import cell_stats, variance_cell_stats
from pipeline_src.results.verdicts import (counting_mask, decide_cells, decide_claim, effect_gate, join_scales,
                                           leave_one_out, pooled_description, rule_text)
from pipeline_src.spec.predictions import FILE_NAME as PREDICTIONS_FILE, correct

AUDIT_COLUMNS = ["claim_id", "reading", "table", "row", "column", "metric", "paper", "expected", "mean", "std", "n",
                 "ci_low", "ci_high", "delta", "p_value", "p_family", "cells", "manipulation_check", "gated",
                 "verdict", "scale", "uncertainty", "split", "rule", "pooled", "pooled_i2", "sensitivity", "note", "evidence", "deviations"]
CELL_COLUMNS = ["claim_id", "reading", "cell", "dataset", "model", "treatment", "control", "n", "seeds", "mean", "std",
                "ci_low", "ci_high", "uncertainty", "test", "p_value", "p_adj", "paper_effect", "p_paper_adj", "counts",
                "verdict", "manipulation_check", "manipulation", "split", "scale", "test_type", "note", "evidence"]


# ---- the test set's share of an interval --------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _correct(path: str) -> dict[str, np.ndarray]:
    return correct(Path(path))


def _correct_of(path: str, mode: str) -> np.ndarray | None:
    return _correct(path).get(mode) if path else None


def image_variance(per_seed: list[np.ndarray | None]) -> float | None:
    """The test set's share of a seed mean's variance, points^2, from the seeds x images table of paired
    differences (-1/0/1 per image, x 100). The variance over the N images of each image's seed-averaged
    difference also holds the seed x image interaction / n, which the seeds' own spread already carries:
    the unbiased two-way estimate takes it out, (s_images^2 - MS_interaction / n) / N, floored at 0 (a
    negative estimate means the images add nothing the seeds do not). None when a seed has no stored
    predictions (the interval is then over seeds only)."""
    if not per_seed or any(v is None for v in per_seed):
        return None
    table = np.stack([np.asarray(v, dtype=float) for v in per_seed]) * 100.0  # seeds x images
    n, images = table.shape
    per_image = table.mean(axis=0)
    between_images = per_image.var(ddof=1)
    if n < 2:
        return float(between_images / images)
    residual = table - table.mean(axis=1, keepdims=True) - per_image + table.mean()
    interaction = (residual ** 2).sum() / ((n - 1) * (images - 1))
    return float(max(0.0, between_images - interaction / n) / images)



# ---- effect claims: one line per (cell, seed) -------------------------------------------------

def _paired(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    frame = paired_values(runs, test)
    return _per_cell_seed(frame, ["value"]).merge(
        frame.groupby("cell", sort=False)[["dataset_paper", "model_paper", "method_t"]].first(), on="cell", how="left")


def _one_sample(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """A per-run diagnostic (one value per run, whatever its eval modes), optionally on a log scale."""
    rows, _ = at_best_scale(select_side(_with_run_columns(runs), test["kind"], {"methods": test["methods"]}))
    rows = rows.drop_duplicates(["set", "run_id"])
    values = rows[test["column"]] if test["column"] in rows.columns else pd.Series(np.nan, index=rows.index)
    if test.get("log"):
        values = np.log(values.where(values > 0))
    frame = rows.assign(value=values, treatment=rows["config"], control="",
                        reading=cell_reading(rows["noisynn_protocol"], rows["reading"])).dropna(subset=["value"])
    if frame.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS)
    frame["cell"] = frame["dataset"] + "/" + frame["model"] + ": " + frame["config"]
    return _per_cell_seed(frame.reindex(columns=VALUE_COLUMNS), ["value"])


def _gain_by_dataset(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """Gain (treatment - control) on the large dataset minus the gain on the small one, per model,
    configuration, reading and seed."""
    gains = paired_values(runs, {**test, "pair_on": ["dataset", "model", "seed"]})
    small, large = (gains[gains["dataset_paper"] == test["datasets"][size]] for size in ("small", "large"))
    keys = ["model", "reading", "method", "treatment", "control", "seed"]
    both = large.merge(small, on=keys, suffixes=("_large", "_small"))
    if both.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS)
    frame = both[keys].assign(dataset=test["datasets"]["large"] + " - " + test["datasets"]["small"],
                              value=both["value_large"] - both["value_small"],
                              scale=[join_scales(s) for s in zip(both["scale_large"], both["scale_small"])],
                              evidence=both["evidence_large"] + " " + both["evidence_small"])
    frame["cell"] = frame["dataset"] + " / " + frame["model"] + ": " + frame["treatment"] + " - " + frame["control"]
    return _per_cell_seed(frame, ["value"])


def _side_kind(test: dict, side: dict) -> str:
    """The set kind one side of a variance claim reads its runs (a gain: its treatment's runs) from."""
    reads = side["gain"]["treatment"] if "gain" in side else side
    return reads.get("kind", test["kind"])


def retraining_difference(runs: pd.DataFrame, kind: str, side: dict) -> pd.DataFrame:
    """Per (dataset, model, reading, seed): the side's value minus its value at the next seed (cyclic): the
    difference of two separately trained models, which a joint gain carries and a frozen gain does not."""
    rows, _ = at_best_scale(select_side(_with_run_columns(runs), kind, side))
    out = []
    for (dataset, model, reading), part in rows.groupby(["dataset", "model", "reading"], sort=False):
        part = part.sort_values("seed")
        out.append(pd.DataFrame({"dataset": dataset, "model": model, "reading": reading, "seed": part["seed"],
                                 "retraining": part["top1"].to_numpy() - np.roll(part["top1"].to_numpy(), -1),
                                 "retraining_evidence": part["evidence"].to_numpy()}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["dataset", "model", "reading", "seed", "retraining", "retraining_evidence"])


def _variance_side(test: dict, runs: pd.DataFrame, side: dict) -> pd.DataFrame:
    """Per-seed values of one side of a variance claim: accuracies, or a `gain` (paired difference), to which
    `retraining` adds the retraining difference of the runs it names (the null a joint gain is held to).
    When the two sides read different set kinds (joint against frozen), each label names its kind."""
    kinds = {_side_kind(test, test[name]) for name in ("treatment", "control")}
    prefix = f"{_side_kind(test, side)}: " if len(kinds) > 1 else ""
    if "gain" not in side:
        rows, _ = at_best_scale(select_side(_with_run_columns(runs), test["kind"], side))
        return rows.assign(value=rows["top1"],
                           label=prefix + rows["config"].astype(str) + " [" + rows["eval_mode"].astype(str) + "]")
    gain = paired_values(runs, {"kind": test["kind"], **side["gain"]}).assign(
        label=lambda f: prefix + f["treatment"].astype(str) + " - " + f["control"].astype(str))
    if "retraining" not in side:
        return gain
    noise = retraining_difference(runs, side["retraining"].get("kind", test["kind"]), side["retraining"])
    both = gain.merge(noise, on=["dataset", "model", "reading", "seed"])
    return both.assign(value=both["value"] + both["retraining"], label=both["label"] + " + retraining difference",
                       evidence=both["evidence"] + " " + both["retraining_evidence"])


def _seed_variance(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """Treatment and control values per seed in each cell (`cells` keys, each side's configuration)."""
    keys = list(dict.fromkeys([*test.get("cells", ["dataset", "model"]), "reading"]))
    keep = keys + ["seed", "label", "value", "scale", "evidence"]
    t, c = (_variance_side(test, runs, test[name])[lambda f: keep] for name in ("treatment", "control"))
    both = t.merge(c, on=keys + ["seed"], suffixes=("_t", "_c"))
    if both.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS + ["t", "c"])
    frame = both[keys + ["seed"]].assign(
        treatment=both["label_t"], control=both["label_c"], t=both["value_t"], c=both["value_c"],
        scale=[join_scales(s) for s in zip(both["scale_t"], both["scale_c"])],
        evidence=both["evidence_t"] + " " + both["evidence_c"])
    cell_keys = [k for k in keys if k != "reading"]
    frame["cell"] = (frame[cell_keys].astype(str).agg("/".join, axis=1) + ": var " + frame["treatment"]
                     + " vs var " + frame["control"])
    return _per_cell_seed(frame, ["t", "c"])


EFFECT_TESTS = {"paired": _paired, "equivalence": _paired, "one_sample": _one_sample,
                "seed_variance": _seed_variance, "gain_by_dataset": _gain_by_dataset}


def effect_values(claim: dict, runs: pd.DataFrame) -> pd.DataFrame:
    test_type = claim["test"]["type"]
    if test_type not in EFFECT_TESTS:
        raise ValueError(f"claim {claim['id']}: unknown test type {test_type!r}; known: {', '.join(EFFECT_TESTS)}")
    frame = EFFECT_TESTS[test_type](claim["test"], runs)
    return frame.reindex(columns=list(dict.fromkeys(VALUE_COLUMNS + list(frame.columns))))


def _expected(test: dict, band: tuple[float, float]) -> str:
    if test["type"] == "equivalence":
        return f"in [{band[0]:g}, {band[1]:g}]"
    what = {"seed_variance": " (log var ratio)", "one_sample": f" ({'log ' if test.get('log') else ''}"
            f"{test.get('column')})"}.get(test["type"], "")
    return test["expected_sign"] + what


def paper_effect(claim: dict, tables: dict, cell: dict) -> float | None:
    """The effect the paper's own table implies for a cell: row `treatment` minus row `control` of the
    declared table in the cell's column ({method}: the cell's treatment method). None: none declared, or
    the table has no such row or column."""
    spec = claim["test"].get("paper_effect")
    if not spec or not tables:
        return None
    table = tables[spec["table"]]
    column = f"{cell.get('dataset_paper')}/{cell.get('model_paper')}"
    rows = {name: spec[name].format(method=cell.get("method_t", "")) for name in ("treatment", "control")}
    if column not in table["columns"] or not all(r in table["rows"] for r in rows.values()):
        return None
    at = table["columns"].index(column)
    return round(table["rows"][rows["treatment"]][at] - table["rows"][rows["control"]][at], 6)



def _cell_table(claim: dict, values: pd.DataFrame, settings: dict, tables: dict,
                runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each cell's statistics (verdicts.cell_stats / variance_cell_stats), its gates and whether it counts."""
    test, alpha = claim["test"], settings["alpha"]
    variance = test["type"] == "seed_variance"
    rows = []
    for cell, part in values.groupby("cell", sort=False):
        part = part.sort_values("seed")
        first = part.iloc[0].to_dict()
        scale = join_scales(part["scale"])
        note = ""
        if variance:
            result = variance_cell_stats(part["t"], part["c"])
            needed = settings["variance_min_seeds"]
        else:
            per_seed, per_image = None, None
            if "pred_t" in part:
                pairs = [(_correct_of(*t.split("::")) if t else None, _correct_of(*c.split("::")) if c else None)
                         for t, c in zip(part["pred_t"], part["pred_c"])]
                if all(a is not None and b is not None for a, b in pairs):
                    per_seed = [a.astype(float) - b.astype(float) for a, b in pairs]
                    per_image = np.mean(per_seed, axis=0) * 100.0
                else:
                    note = _missing_predictions(part)
            image_var = image_variance(per_seed) if per_seed else None
            result = cell_stats(part["value"], image_var, alpha, test, paper_effect(claim, tables, first), per_image)
            needed = settings["min_seeds"].get(scale, settings["min_seeds"]["default"])
        evidence = list(dict.fromkeys(" ".join(part["evidence"]).split()))
        gate = cell_gate(evidence, runs, claim.get("manipulation"), settings,
                         first.get("dataset_paper") or _dataset_paper(runs, evidence)) if runs is not None else {}
        rows.append({"cell": cell, **{k: first.get(k) for k in ("dataset", "model", "reading", "treatment", "control")},
                     **result, **gate, "needed": needed, "counts": result["n"] >= needed, "scale": scale,
                     "note": "; ".join(filter(None, [result.get("note", ""), note])),
                     "evidence": " ".join(evidence)})
    return pd.DataFrame(rows)


def _dataset_paper(runs: pd.DataFrame, evidence: list[str]) -> str | None:
    names = runs.loc[runs["evidence"].isin(evidence), "dataset_paper"]
    return names.iloc[0] if len(names) else None


def _missing_predictions(part: pd.DataFrame) -> str:
    """Why a cell's interval is over seeds only: which of its runs have no predictions file (a run of
    several records, the same setting in two sets, names no one file either)."""
    lacking, runs = [], 0
    for evidence, t, c in zip(part["evidence"], part["pred_t"], part["pred_c"]):
        names = evidence.split()
        runs += 2
        lacking += ([names[0]] if not t else []) + ([names[-1]] if not c else [])
    if len(lacking) == runs:
        return f"seeds only: no run of this cell has a {PREDICTIONS_FILE}"
    return (f"seeds only: {len(lacking)} of {runs} runs have no {PREDICTIONS_FILE} ({'; '.join(lacking)}), "
            "so the others' predictions go unused")


def audit_effects(effects: list[dict], runs: pd.DataFrame, settings: dict, family: set | None = None,
                  tables: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One audit line per effect claim and protocol reading, and one line per cell.

    family: the (claim id, reading) pairs of the multiplicity family, fixed before any run (see
    claim_family); a pair without runs, or short of seeds, counts as p = 1. Pairs with runs outside it
    join it (say a report holds runs its params no longer declare). None: every claim, one reading each."""
    alpha = settings["alpha"]
    values_by_claim = {claim["id"]: effect_values(claim, runs) for claim in effects}
    observed = {(cid, r) for cid, v in values_by_claim.items() for r in v["reading"].dropna().unique()}
    family = set(family) if family is not None else {(c["id"], "") for c in effects}
    family = {pair for pair in family if pair[1] or not any(o[0] == pair[0] for o in observed)} | observed
    family_size = max(1, len(family))
    lines, cell_tables = [], []
    for claim in effects:
        test = claim["test"]
        sign = test.get("expected_sign", "+")
        rule = test.get("holds_in", "all")
        band = tuple(test.get("band", (-settings["tolerance"], settings["tolerance"])))
        test = {**test, "band": band}
        readings = sorted({r for cid, r in family if cid == claim["id"]}) or [""]
        values = values_by_claim[claim["id"]]
        for reading in readings:
            part = values[values["reading"] == reading] if reading else values.iloc[0:0]
            cells = _cell_table({**claim, "test": test}, part, settings, tables or {}, _with_run_columns(runs))
            line = {"claim_id": claim["id"], "reading": reading, "table": "effects", "row": claim["id"], "column": "",
                    "metric": "top1", "expected": _expected(test, band), "rule": rule_text(rule),
                    "evidence": " ".join(dict.fromkeys(" ".join(part["evidence"]).split()))}
            if cells.empty:
                lines.append({**line, "verdict": "not run", "cells": "0/0", "p_family": 1.0, "note": "no matched runs",
                              "n": 0})
                continue
            cells = decide_cells(cells, test["type"], sign, alpha)
            decided = decide_claim(cells, test["type"], sign, rule, alpha, family_size)
            gate = effect_gate(len(cells), join_scales(cells["scale"]))
            counting = cells[counting_mask(cells)]
            shown = counting if len(counting) else cells
            one = shown.iloc[0] if len(shown) == 1 else None
            pooled = pooled_description(cells)
            splits = "; ".join(f"{c}: seeds split, {s}" for c, s in zip(cells["cell"], cells["split"]) if s)
            needed = (settings["variance_min_seeds"] if test["type"] == "seed_variance"
                      else int(cells["needed"].max()))
            # cells' own notes (exact tests, missing predictions) stay on their rows; a claim line names only
            # the cells that cannot be compared at all
            cell_notes = cells.loc[~cells["applicable"].astype(bool), "note"].dropna() if "note" in cells else []
            note = "; ".join(dict.fromkeys(filter(None, [decided["note"], splits, *cell_notes])))
            lines.append({**line, "verdict": gate or decided["verdict"], "p_value": decided["p_value"],
                          "p_family": decided["p_family"],  # at smoke scale shown, never decisive
                          "cells": f"{len(counting)}/{len(cells)}", "gated": gated_text(cells),
                          "manipulation_check": (claim.get("manipulation") or {}).get("name", ""),
                          "scale": join_scales(cells["scale"]),
                          "n": int(shown["n"].min()),
                          # with several cells no one number stands for the claim: pooled is descriptive
                          "mean": one["mean"] if one is not None else np.nan, "pooled": pooled["pooled"],
                          "std": one["std"] if one is not None else np.nan,
                          "ci_low": one["ci_low"] if one is not None else np.nan,
                          "ci_high": one["ci_high"] if one is not None else np.nan,
                          "uncertainty": "; ".join(sorted(set(shown["uncertainty"]))),
                          "pooled_i2": pooled["i2"], "split": splits,
                          "sensitivity": leave_one_out(cells, decided["verdict"], test["type"], sign, rule,
                                                       alpha, family_size),
                          "note": note or (f"fewer than {needed} seeds in every cell" if not len(counting) else "")})
            cell_tables.append(cells.assign(claim_id=claim["id"], test_type=test["type"]))
    frame = pd.DataFrame(lines)
    cell_table = pd.concat(cell_tables, ignore_index=True) if cell_tables else pd.DataFrame()
    return frame.reindex(columns=AUDIT_COLUMNS), cell_table.reindex(columns=CELL_COLUMNS)


def gated_text(cells: pd.DataFrame) -> str:
    """How many cells each gate took out of a claim: 'generator inert 2; base at chance 1' ('' for none)."""
    if "gate" not in cells:
        return ""
    counts = cells["gate"].fillna("").astype(str).value_counts()
    return "; ".join(f"{gate} {n}" for gate, n in counts.items() if gate)
