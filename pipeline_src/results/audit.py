"""The audit: every published number and claim in params/claims.yaml against our runs.

This module reads the registries and the runs, forms the cells each claim is tested on, marks the
deviations, and writes the results; the statistics and the verdict rules live in verdicts.py, the pages
(paper tables, audit.md) in audit_pages.py.

Number claims (one per paper-table cell) select the runs of the cell's kind, method, eval mode, dataset
and model, and read the table's `metric` column (default top1). Effect claims select a treatment and a
control side and pair them per cell: same dataset, model, configuration of each side (method label and
sweep values: the run id less its seed) and eval mode, matched on `pair_on` (seed always).

    python -m pipeline_src audit --claims params/claims.yaml --deviations params/deviations.yaml \
        --set-info JSON --csv ... --tables ... --runs RUNS_CSV...
"""
from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml

from pipeline_src.results.aggregate import method_traits
from pipeline_src.results.pages import audit_markdown, write_paper_table
from pipeline_src.spec.config import run_configuration
from pipeline_src.spec.predictions import FILE_NAME as PREDICTIONS_FILE, correct, load_predictions
from pipeline_src.provenance import read_csv, write_atomic
from pipeline_src.results.verdicts import (PAPER_SCALE, cell_stats, counting_mask, decide_cells, decide_claim,
                                           effect_gate, join_scales, leave_one_out, number_verdict,
                                           pooled_description, rule_text, variance_cell_stats)

AUDIT_COLUMNS = ["claim_id", "reading", "table", "row", "column", "metric", "paper", "expected", "mean", "std", "n",
                 "ci_low", "ci_high", "delta", "p_value", "p_family", "cells", "manipulation_check", "gated",
                 "verdict", "scale", "uncertainty", "split", "rule", "pooled", "pooled_i2", "sensitivity", "note", "evidence", "deviations"]
CELL_COLUMNS = ["claim_id", "reading", "cell", "dataset", "model", "treatment", "control", "n", "seeds", "mean", "std",
                "ci_low", "ci_high", "uncertainty", "test", "p_value", "p_adj", "paper_effect", "p_paper_adj", "counts",
                "verdict", "manipulation_check", "manipulation", "split", "scale", "test_type", "note", "evidence"]
DEFAULT_READING = "declared"  # the schema's own_reading default: runs of a params file without readings
DEVIATION_KEYS = ("id", "what", "paper", "code", "ours", "why", "affects")


# ---- the registries ---------------------------------------------------------------------------

def min_seeds_by_scale(settings: dict) -> dict:
    """settings.min_seeds: one number, or {default: n, <scale>: n}; every value >= 2 (a t-interval needs 2)."""
    value = settings.get("min_seeds", 3)
    table = {"default": 3, **(value if isinstance(value, dict) else {"default": value})}
    bad = {scale: n for scale, n in table.items() if not isinstance(n, int) or n < 2}
    if bad:
        raise ValueError(f"settings.min_seeds: each value must be an integer >= 2; got {bad}")
    return table


def load_claims(path: Path) -> dict:
    """{'settings', 'tables': {name: spec}, 'effects': [spec]} from the registry YAML."""
    raw = yaml.safe_load(Path(path).read_text())
    tables, effects = {}, []
    for paper, section in raw.items():  # one section per paper, beside `settings`
        if paper == "settings":
            continue
        for name, spec in section.get("tables", {}).items():
            tables[name] = {"paper": paper, **spec}
        check = section.get("manipulation_check")
        if check:
            missing = [k for k in ("name", "reason", "generator_methods", "min_sigma_mean", "min_changed_share",
                                   "base_margin_points") if k not in check]
            if missing:
                raise ValueError(f"{paper}.manipulation_check lacks {', '.join(missing)}")
        effects += [{"paper": paper, **({"manipulation": check} if check and claim.get("manipulation", True) else {}),
                     **{k: v for k, v in claim.items() if k != "manipulation"}}
                    for claim in section.get("qualitative", [])]
    settings = {**raw["settings"], "min_seeds": min_seeds_by_scale(raw["settings"])}
    variance = settings.get("variance_min_seeds", settings["min_seeds"]["default"])
    if not isinstance(variance, int) or variance < 3:
        raise ValueError(f"settings.variance_min_seeds must be an integer >= 3; got {variance!r}")
    settings["variance_min_seeds"] = variance
    return {"settings": settings, "tables": tables, "effects": effects}


def number_claims(tables: dict, default_tolerance: float = 1.0) -> list[dict]:
    """One claim per table cell, in the table's own row and column order."""
    claims = []
    for table, spec in tables.items():
        for row, values in spec["rows"].items():
            method, eval_mode = spec["row_map"][row]
            for column, value in zip(spec["columns"], values):
                claims.append({"claim_id": f"{spec['paper']}.{table}.{row}.{column}", "table": table,
                               "row": row, "column": column, "paper": value, "method": method,
                               "eval_mode": eval_mode, "kind": spec.get("row_kind", {}).get(row, spec["kind"]),
                               "metric": spec.get("metric", "top1"),
                               "tolerance": spec.get("tolerance", default_tolerance)})
    return claims


def load_deviations(path: Path) -> list[dict]:
    """The deviations registry, numbered D1, D2, ... in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deviations registry {path} not found (the audit marks the cells each "
                                "deviation affects; write it, or pass --deviations)")
    entries = (yaml.safe_load(path.read_text()) or {}).get("deviations") or []
    for i, entry in enumerate(entries, 1):
        missing = [key for key in DEVIATION_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{path}: deviation {i} ({entry.get('id', '?')}) lacks {', '.join(missing)}")
    ids = [entry["id"] for entry in entries]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: deviation ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return [{**entry, "marker": f"D{i}"} for i, entry in enumerate(entries, 1)]


# ---- the runs ---------------------------------------------------------------------------------

def load_runs(runs_csvs: list[Path], set_info: dict) -> pd.DataFrame:
    """All sets' long run tables, with set, kind, configuration and the papers' dataset and model names."""
    frames = []
    for path in runs_csvs:
        frame = read_csv(path, "delete it and run Snakemake again: the set's aggregate job writes it anew")
        # set and kind come with each run (metrics.json); runs tables from before they did: from set_info
        name = frame["experiment_set"].iloc[0] if "experiment_set" in frame else Path(path).name.removesuffix("_runs.csv")
        info = set_info.get(name, {})
        frame["set"] = name
        # a run under the params' own training records no reading: it is its set's one declared reading
        own = (info.get("readings") or [DEFAULT_READING])[0]
        frame["reading"] = (frame["reading"].astype("string").fillna("").astype(str) if "reading" in frame else "").replace("", own)
        runs_dir = Path(path).parent.parent / "runs" / name  # a results or report folder's layout
        frame["predictions"] = [str(runs_dir / str(r) / PREDICTIONS_FILE)
                                if (runs_dir / str(r) / PREDICTIONS_FILE).exists() else "" for r in frame["run_id"]]
        if "kind" not in frame:
            frame["kind"] = info.get("kind", name)
        if "scale" not in frame.columns:
            frame["scale"] = info.get("scale", "unknown")
        frames.append(frame)
    columns = ["set", "kind", "dataset", "model", "method", "eval_mode", "seed", "top1", "run_id", "scale", "reading",
               "predictions"]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for column in ("noise", "apply_at", "site"):
        if column in runs:
            runs[column] = runs[column].fillna("").astype(str)
    runs["dataset_paper"] = runs["dataset"].map(lambda d: set_info.get("datasets", {}).get(d) or d)
    runs["model_paper"] = runs["model"].map(lambda m: set_info.get("models", {}).get(m) or m)
    runs["evidence"] = runs["set"] + "/" + runs["run_id"].astype(str)
    runs["config"] = [run_configuration(*line) for line in zip(runs["run_id"], runs["dataset"], runs["model"],
                                                                 runs["reading"], runs["seed"])]
    return runs


def at_best_scale(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Paper-scale runs when there are any, else all of them, with the scale label to report."""
    paper = rows[rows["scale"] == PAPER_SCALE]
    if len(paper):
        return paper, PAPER_SCALE
    return rows, join_scales(rows["scale"]) or "none"


def _natural_key(value) -> tuple:
    digits = re.findall(r"-?\d+(?:\.\d+)?", str(value))
    return (float(digits[-1]) if digits else float("inf"), str(value))


ANY_KIND = "any"  # a claim or side of this kind selects runs by what they are, from every set


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def select_side(runs: pd.DataFrame, kind: str | None, side: dict) -> pd.DataFrame:
    """One line per run: the methods (shell patterns; every method when the side names none) of `kind` (the
    side's own `kind` first; `any` or none: every set kind), in the first of `eval_modes` each run has; other
    keys pick a column value (`first` / `last` sweep value in natural order, an exact value such as
    `model_paper: resnet50`, or a list of accepted values such as `noise: [circular_shift, optimal_q]`)."""
    kind = side.get("kind", kind)
    rows = runs if kind in (None, ANY_KIND) else runs[runs["kind"] == kind]
    if "methods" in side:
        rows = rows[rows["method"].map(lambda m: any(fnmatch.fnmatchcase(m, p) for p in side["methods"])).astype(bool)]
    rows = rows[rows["eval_mode"].isin(side.get("eval_modes", rows["eval_mode"].unique()))]
    if "eval_modes" in side and len(rows):
        rank = rows["eval_mode"].map({mode: i for i, mode in enumerate(side["eval_modes"])})
        rows = rows.loc[rank.groupby([rows["set"], rows["run_id"]]).idxmin()]
    for column, wanted in side.items():
        if column in ("methods", "eval_modes", "kind") or not len(rows):
            continue
        if column not in rows.columns:
            return rows.iloc[0:0]
        if wanted in ("first", "last"):  # per set, dataset and model: models may differ in depth
            position = rows[column].map(lambda v: _natural_key(v)[0])
            bound = position.groupby([rows["set"], rows["dataset"], rows["model"]]).transform(
                "min" if wanted == "first" else "max")
            rows = rows[position == bound]
        else:
            rows = rows[rows[column].isin(_as_list(wanted))]
    return rows


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


def _with_run_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs tables from before readings and predictions (and hand-made ones in tests)."""
    reading = runs["reading"].fillna("").replace("", DEFAULT_READING) if "reading" in runs else DEFAULT_READING
    predictions = runs["predictions"].fillna("") if "predictions" in runs else ""
    return runs.assign(reading=reading, predictions=predictions)


# ---- number claims ----------------------------------------------------------------------------

def audit_numbers(claims: list[dict], runs: pd.DataFrame, alpha: float, min_seeds: dict) -> pd.DataFrame:
    """One line per table cell and protocol reading that has runs (one `not run` line for a cell without)."""
    runs = _with_run_columns(runs)
    lines = []
    for claim in claims:
        dataset, model = claim["column"].split("/", 1)
        matching = runs[(runs["kind"] == claim["kind"]) & (runs["method"] == claim["method"])
                        & (runs["eval_mode"] == claim["eval_mode"]) & (runs["dataset_paper"] == dataset)
                        & (runs["model_paper"] == model)]
        metric, note = claim["metric"], ""
        if metric in matching.columns:
            matching = matching[matching[metric].notna()]
        else:
            matching, note = matching.iloc[0:0], f"the runs tables have no {metric} column"
        for reading, rows in (matching.groupby("reading", sort=False) if len(matching) else [("", matching)]):
            rows, scale = at_best_scale(rows)
            result = number_verdict(claim["paper"], rows[metric] if len(rows) else [], scale, claim["tolerance"],
                                    alpha, min_seeds.get(scale, min_seeds["default"]))
            split = f"seeds split: {result['split']}" if result["split"] else ""
            lines.append({**{k: claim[k] for k in ("claim_id", "table", "row", "column", "paper", "metric")},
                          **result, "reading": reading, "note": "; ".join(filter(None, [result["note"], split, note])),
                          "expected": f"±{claim['tolerance']:g}", "scale": scale if len(rows) else "",
                          "evidence": " ".join(rows["evidence"])})
    return pd.DataFrame(lines, columns=AUDIT_COLUMNS)


# ---- effect claims: one line per (cell, seed) -------------------------------------------------

VALUE_COLUMNS = ["cell", "dataset", "model", "reading", "method", "treatment", "control", "seed", "value", "scale",
                 "evidence"]


def _per_cell_seed(frame: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    """Several runs of one configuration and seed (the same setting in two sets) count as one seed; their
    predictions then do not name one run, and the cell falls back to seeds only."""
    keys = [c for c in VALUE_COLUMNS if c in frame.columns and c not in values + ["scale", "evidence"]]
    agg = {**{v: "mean" for v in values}, "scale": join_scales, "evidence": " ".join}
    for column in ("pred_t", "pred_c"):
        if column in frame.columns:
            agg[column] = lambda p: p.iloc[0] if len(p) == 1 else ""
    return frame.groupby(keys, sort=False, dropna=False).agg(agg).reset_index()


def paired_values(runs: pd.DataFrame, test: dict) -> pd.DataFrame:
    """treatment - control per cell and seed, matched on `pair_on` (default dataset, model, seed) and always
    on the protocol reading. pred_t / pred_c: each side's predictions file and eval mode ('' when none)."""
    runs = _with_run_columns(runs)
    pair_on = list(dict.fromkeys([*test.get("pair_on", ["dataset", "model", "seed"]), "reading"]))
    if "seed" not in pair_on:
        raise ValueError(f"pair_on {pair_on} must contain seed: pairs are runs of one seed")
    empty = pd.DataFrame(columns=VALUE_COLUMNS + ["dataset_paper", "model_paper", "method_t"])
    if any(column not in runs for column in pair_on):  # runs tables from before the column: nothing pairs
        return empty
    keep = list(dict.fromkeys(["set", "dataset", "model", "dataset_paper", "model_paper", "method", "config",
                               "eval_mode", "seed", "top1", "scale", "evidence", "predictions", *pair_on]))
    sides = [at_best_scale(select_side(runs, test["kind"], test[name]))[0][keep] for name in ("treatment", "control")]
    pairs = sides[0].merge(sides[1], on=pair_on, suffixes=("_t", "_c"))
    # the nearest legitimate control only: a treatment run that is among its own controls (trained clean,
    # noise switched on at test) is compared with itself, whose no-noise evaluation has exactly its weights;
    # else with a control of its own set; controls of other sets (same recipe) only where its set has none
    same_set = pairs.get("set_t", pairs.get("set")) == pairs.get("set_c", pairs.get("set"))
    rank = np.where(pairs["evidence_t"] == pairs["evidence_c"], 0, np.where(same_set, 1, 2))
    pairs = pairs[rank == pd.Series(rank, index=pairs.index).groupby(pairs["evidence_t"]).transform("min")]
    if pairs.empty:
        return empty
    if test["kind"] == ANY_KIND:  # runs from several sets: a side is named by its set too, so a cell is one
        for side in ("t", "c"):   # setting and never pools two sets' runs that share a label
            pairs[f"config_{side}"] = pairs.get(f"set_{side}", pairs.get("set")) + "/" + pairs[f"config_{side}"]
    pick = lambda name: pairs[name] if name in pairs else pairs[f"{name}_t"]  # noqa: E731
    frame = pd.DataFrame({"dataset": pick("dataset"), "model": pick("model"), "method": pick("method"),
                          "method_t": pairs["method_t"] if "method_t" in pairs else pairs["method"],
                          "dataset_paper": pick("dataset_paper"), "model_paper": pick("model_paper"),
                          "reading": pairs["reading"],
                          "treatment": pairs["config_t"] + " [" + pairs["eval_mode_t"] + "]",
                          "control": pairs["config_c"] + " [" + pairs["eval_mode_c"] + "]",
                          "seed": pairs["seed"], "value": pairs["top1_t"] - pairs["top1_c"],
                          "scale": [join_scales(s) for s in zip(pairs["scale_t"], pairs["scale_c"])],
                          "evidence": pairs["evidence_t"] + " " + pairs["evidence_c"],
                          "pred_t": [f"{p}::{m}" if p else "" for p, m in zip(pairs["predictions_t"], pairs["eval_mode_t"])],
                          "pred_c": [f"{p}::{m}" if p else "" for p, m in zip(pairs["predictions_c"], pairs["eval_mode_c"])]})
    frame["cell"] = frame["dataset"] + "/" + frame["model"] + ": " + frame["treatment"] + " - " + frame["control"]
    return frame


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
    frame = rows.assign(value=values, treatment=rows["config"], control="").dropna(subset=["value"])
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


# ---- gates: a cell counts only where the claimed mechanism is at work --------------------------

@functools.lru_cache(maxsize=4096)
def _changed_share(path: str, treated: str, plain: str) -> float | None:
    """The share of test images whose prediction under `treated` differs from under `plain` (one run)."""
    preds, _ = load_predictions(Path(path))
    if treated not in preds or plain not in preds:
        return None
    return float((preds[treated] != preds[plain]).mean())


def generator_state(rows: pd.DataFrame, check: dict) -> dict:
    """One generator run (all its eval-mode lines): sigma_mean, the share of test predictions its noise
    changes, and whether it is active (either measure at its threshold), inert (both measured below) or
    unknown. Without predictions the share is bounded below by the accuracy gap of the two eval modes; a
    sigma of exactly 0 changes no prediction (the noise is sigma * z)."""
    treated, plain = check.get("eval_modes", ["class_enumeration", "no_noise"])
    sigma = rows["sigma_mean"].dropna() if "sigma_mean" in rows else pd.Series(dtype=float)
    sigma = float(sigma.iloc[0]) if len(sigma) else None
    path = next((p for p in rows["predictions"].fillna("") if p), "") if "predictions" in rows else ""
    share = _changed_share(path, treated, plain) if path else None
    measured = share is not None or sigma == 0.0
    if share is None and sigma == 0.0:
        share = 0.0
    if share is None:
        top1 = rows.groupby("eval_mode")["top1"].first()
        if treated in top1 and plain in top1:
            share = abs(top1[treated] - top1[plain]) / 100.0  # at least this many predictions moved
    active = ((sigma is not None and sigma >= check["min_sigma_mean"])
              or (share is not None and share >= check["min_changed_share"]))
    state = "active" if active else ("inert" if sigma is not None and measured else "unknown")
    return {"sigma": sigma, "share": share if measured else None, "state": state}


def _span(values, fmt) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "not recorded"
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} to {fmt(high)}"


def cell_gate(evidence: list[str], runs: pd.DataFrame, check: dict | None, settings: dict,
              dataset: str | None) -> dict:
    """The gates of one cell (its runs named by evidence), in order: base at chance, then the generator
    inert, then no manipulation data. `gate` is '' when the cell passes every one, else the reason it reads
    `not applicable (...)`; `manipulation` the outcome with its numbers. No declared check: no gate."""
    if not check:
        return {"gate": "", "manipulation_check": "", "manipulation": ""}
    mine = runs[runs["evidence"].isin(evidence)]
    classes = (settings.get("num_classes") or {}).get(dataset)
    outcome = []
    gate = ""
    base = mine[mine["eval_mode"] == check.get("base_eval_mode", "no_noise")]
    if classes:
        floor = 100.0 / classes + check["base_margin_points"]
        means = base.groupby(["set", "config"], sort=False)["top1"].mean()
        low = means[means < floor]
        outcome.append(f"base (no noise) {_span(list(means), lambda v: f'{v:.2f}')} against chance + "
                       f"{check['base_margin_points']:g} = {floor:.2f}")
        if len(low):
            gate = "base at chance"
    else:
        outcome.append(f"chance level unknown: settings.num_classes names no {dataset}")
    generators = mine[mine["method"].map(lambda m: any(fnmatch.fnmatchcase(str(m), p)
                                                       for p in check["generator_methods"]))]
    states = [generator_state(rows, check) for _, rows in generators.groupby("evidence", sort=True)]
    if states:
        count = {k: sum(s["state"] == k for s in states) for k in ("active", "inert", "unknown")}
        outcome.append(f"generator active in {count['active']} of {len(states)} runs"
                       + (f", inert in {count['inert']}" if count["inert"] else "")
                       + (f", without data in {count['unknown']}" if count["unknown"] else "")
                       + f"; sigma_mean {_span([s['sigma'] for s in states], lambda v: f'{v:.2g}')}"
                       + f"; predictions changed {_span([s['share'] for s in states], lambda v: f'{100 * v:.2f}%')}")
        if not gate and count["inert"]:
            gate = "generator inert"
        elif not gate and count["unknown"]:
            gate = "no manipulation data"
    return {"gate": gate, "manipulation_check": check["name"],
            "manipulation": ("not applicable: " if gate else "passes: ") + "; ".join(outcome)}


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


TRAITS = ("noise", "apply_at", "site", "trained_clean")  # what a method is (aggregate.method_traits): side filters


def method_fits(side: dict, label: str, spec: dict | None) -> bool:
    """Whether a declared method (its label, and its resolved spec when known) can give runs of a side:
    its label matches the side's patterns (a side naming none takes every label) and it is what the side's
    trait filters ask for (a method of unknown spec may be anything)."""
    if "methods" in side and not any(fnmatch.fnmatchcase(label, p) for p in side["methods"]):
        return False
    wanted = {key: _as_list(side[key]) for key in TRAITS if key in side}
    if not wanted or spec is None:
        return True
    traits = method_traits(spec)
    return all(traits[key] in values for key, values in wanted.items())


def claim_family(effects: list[dict], set_info: dict) -> set[tuple[str, str]]:
    """The multiplicity family, fixed by the claims registry and the params before any run: every (claim,
    reading) whose treatment and control the params declare runs for: under that reading, a set of each
    side's kind (of any kind for a side of kind `any`) with a method that fits the side (method_fits: its
    label patterns and what the method is). The family follows the runs' matching, not the set that
    declares them, so a claim whose runs a set of another kind makes is in it."""
    declared = [(info["kind"], reading, info.get("methods", []), info.get("method_specs"))
                for name, info in set_info.items() if isinstance(info, dict) and "kind" in info
                for reading in info.get("readings") or [DEFAULT_READING]]

    def sides(test: dict) -> list[dict]:
        if test["type"] in ("one_sample",):
            return [{"methods": test["methods"]}]
        out = []
        for name in ("treatment", "control"):
            side = test[name]
            out += [side["gain"]["treatment"], side["gain"]["control"]] if "gain" in side else [side]
            out += [side["retraining"]] if "retraining" in side else []
        return out

    def fits(side: dict, labels: list[str], specs: list[dict] | None) -> bool:
        if not labels:  # a set of unknown methods may hold any
            return True
        if specs is None:
            return any(method_fits(side, label, None) for label in labels)
        return any(method_fits(side, spec["label"], spec) for spec in specs)

    def runs_for(side: dict, kind: str, reading: str) -> bool:
        wanted = side.get("kind", kind)
        return any(wanted in (k, ANY_KIND) and r == reading and fits(side, labels, specs)
                   for k, r, labels, specs in declared)

    return {(claim["id"], reading) for claim in effects for reading in {r for _, r, _, _ in declared}
            if all(runs_for(side, claim["test"]["kind"], reading) for side in sides(claim["test"]))}


# ---- deviations -------------------------------------------------------------------------------

def deviation_markers(audit: pd.DataFrame, deviations: list[dict], runs: pd.DataFrame) -> list[str]:
    """Per audit line, the markers (D1,D3) of the deviations whose `affects` patterns match its claim id and
    whose `when` holds: some evidence run has one of the listed values in each named column (a column the
    runs tables lack is no condition)."""
    marks = []
    for claim_id, evidence in zip(audit["claim_id"], audit["evidence"].fillna("")):
        evidence_runs = runs[runs["evidence"].isin(evidence.split())]
        hits = []
        for entry in deviations:
            if not any(fnmatch.fnmatchcase(claim_id, pattern) for pattern in entry["affects"]):
                continue
            when = {col: values for col, values in (entry.get("when") or {}).items() if col in runs.columns}
            if all(evidence_runs[col].astype(str).isin([str(v) for v in values]).any() for col, values in when.items()):
                hits.append(entry["marker"])
        marks.append(",".join(hits))
    return marks


class AuditFiles(NamedTuple):
    """What main_audit writes; tables: the files paper_<table>.csv, .md and .tex of every table."""

    csv: Path
    cells: Path
    markdown: Path
    figure: Path
    tables: tuple[Path, ...]

    @classmethod
    def in_results(cls, results: Path, table_names: list[str]) -> "AuditFiles":
        """The layout of a results or report folder."""
        results = Path(results)
        return cls(results / "audit.csv", results / "effects_cells.csv", results / "audit.md",
                   results / "figures" / "audit.png",
                   tuple(results / "tables" / f"paper_{t}.{ext}" for t in table_names for ext in ("csv", "md", "tex")))

    def table(self, name: str, ext: str) -> Path:
        wanted = f"paper_{name}.{ext}"
        found = [path for path in self.tables if Path(path).name == wanted]
        if not found:
            raise ValueError(f"no output file {wanted} among the audit's table files; the registry's tables are "
                             "the rule's outputs: rebuild the DAG")
        return Path(found[0])


def main_audit(claims_path: Path, runs_csvs: list[Path], set_info: dict, files: AuditFiles | Path,
               deviations_path: Path) -> pd.DataFrame:
    """Write the audit's files (AuditFiles; a folder stands for its usual layout): audit.csv,
    effects_cells.csv, audit.md, figures/audit.png and tables/paper_<table>.{csv,md,tex}."""
    claims = load_claims(claims_path)
    deviations = load_deviations(deviations_path)
    settings = claims["settings"]
    runs = load_runs([Path(p) for p in runs_csvs], set_info)
    numbers = audit_numbers(number_claims(claims["tables"], settings["tolerance"]), runs, settings["alpha"],
                            settings["min_seeds"])
    effects, cells = audit_effects(claims["effects"], runs, settings, claim_family(claims["effects"], set_info),
                                   claims["tables"])
    audit = pd.concat([numbers, effects], ignore_index=True)
    audit["deviations"] = deviation_markers(audit, deviations, runs)
    if not isinstance(files, AuditFiles):
        files = AuditFiles.in_results(files, list(claims["tables"]))
    table_md = []
    for table, spec in claims["tables"].items():
        spec = {"tolerance": settings["tolerance"], **spec}
        write_paper_table(audit, table, spec, {ext: files.table(table, ext) for ext in ("csv", "md", "tex")})
        table_md.append(files.table(table, "md").read_text().strip())
    write_atomic(files.csv, audit.to_csv(index=False, float_format="%.6g"))
    write_atomic(files.cells, cells.to_csv(index=False, float_format="%.6g"))
    family_size = int((effects["reading"].fillna("") != "").sum())  # the pairs outside it have no reading
    write_atomic(files.markdown, audit_markdown(audit, cells, claims, table_md, deviations, family_size))
    from pipeline_src.results.plots import plot_audit  # matplotlib only when the figure is drawn

    plot_audit(audit, cells, files.figure)
    return audit
