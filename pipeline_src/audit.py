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
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml

from pipeline_src.audit_pages import audit_markdown, write_paper_table
from pipeline_src.provenance import write_atomic
from pipeline_src.verdicts import (PAPER_SCALE, effect_gate, holm, interval_verdict, join_scales, number_verdict,
                                   significance_verdict, summarize_cells)

AUDIT_COLUMNS = ["claim_id", "table", "row", "column", "metric", "paper", "expected", "mean", "std", "n", "ci_low",
                 "ci_high", "delta", "p_value", "p_holm", "cells", "verdict", "scale", "note", "evidence", "deviations"]
CELL_COLUMNS = ["claim_id", "cell", "dataset", "model", "treatment", "control", "n", "mean", "std", "ci_low",
                "ci_high", "p_value", "counts", "scale", "evidence"]
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
        effects += [{"paper": paper, **claim} for claim in section.get("qualitative", [])]
    settings = {**raw["settings"], "min_seeds": min_seeds_by_scale(raw["settings"])}
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

def _configuration(run_id: str, dataset: str, model: str, seed) -> str:
    """config.expand_runs names runs `<dataset>-<model>-<label and sweep values>-s<seed>`: the middle part
    names the configuration, the same for every seed of it."""
    return str(run_id).removeprefix(f"{dataset}-{model}-").removesuffix(f"-s{seed}")


def load_runs(runs_csvs: list[Path], set_info: dict) -> pd.DataFrame:
    """All sets' long run tables, with set, kind, configuration and the papers' dataset and model names."""
    frames = []
    for path in runs_csvs:
        frame = pd.read_csv(path)
        # set and kind come with each run (metrics.json); runs tables from before they did: from set_info
        name = frame["experiment_set"].iloc[0] if "experiment_set" in frame else Path(path).name.removesuffix("_runs.csv")
        info = set_info.get(name, {})
        frame["set"] = name
        if "kind" not in frame:
            frame["kind"] = info.get("kind", name)
        if "scale" not in frame.columns:
            frame["scale"] = info.get("scale", "unknown")
        frames.append(frame)
    columns = ["set", "kind", "dataset", "model", "method", "eval_mode", "seed", "top1", "run_id", "scale"]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    runs["dataset_paper"] = runs["dataset"].map(lambda d: set_info.get("datasets", {}).get(d) or d)
    runs["model_paper"] = runs["model"].map(lambda m: set_info.get("models", {}).get(m) or m)
    runs["evidence"] = runs["set"] + "/" + runs["run_id"].astype(str)
    runs["config"] = [_configuration(*line) for line in zip(runs["run_id"], runs["dataset"], runs["model"],
                                                              runs["seed"])]
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


def select_side(runs: pd.DataFrame, kind: str, side: dict) -> pd.DataFrame:
    """One line per run: the methods (shell patterns) of `kind` (the side's own `kind` first), in the first
    of `eval_modes` each run has; other keys pick a column value (`first` / `last` sweep value in natural
    order, or an exact value such as `model_paper: resnet50`)."""
    kind = side.get("kind", kind)
    rows = runs[(runs["kind"] == kind)
                & runs["method"].map(lambda m: any(fnmatch.fnmatchcase(m, p) for p in side["methods"]))]
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
            rows = rows[rows[column] == wanted]
    return rows


# ---- number claims ----------------------------------------------------------------------------

def audit_numbers(claims: list[dict], runs: pd.DataFrame, alpha: float, min_seeds: dict) -> pd.DataFrame:
    lines = []
    for claim in claims:
        dataset, model = claim["column"].split("/", 1)
        rows = runs[(runs["kind"] == claim["kind"]) & (runs["method"] == claim["method"])
                    & (runs["eval_mode"] == claim["eval_mode"]) & (runs["dataset_paper"] == dataset)
                    & (runs["model_paper"] == model)]
        metric, note = claim["metric"], ""
        if metric in rows.columns:
            rows = rows[rows[metric].notna()]
        else:
            rows, note = rows.iloc[0:0], f"the runs tables have no {metric} column"
        rows, scale = at_best_scale(rows)
        result = number_verdict(claim["paper"], rows[metric] if len(rows) else [], scale, claim["tolerance"], alpha,
                                min_seeds.get(scale, min_seeds["default"]))
        lines.append({**{k: claim[k] for k in ("claim_id", "table", "row", "column", "paper", "metric")},
                      **result, "note": "; ".join(filter(None, [result["note"], note])),
                      "expected": f"±{claim['tolerance']:g}", "scale": scale if len(rows) else "",
                      "evidence": " ".join(rows["evidence"])})
    return pd.DataFrame(lines, columns=AUDIT_COLUMNS)


# ---- effect claims: one line per (cell, seed) -------------------------------------------------

VALUE_COLUMNS = ["cell", "dataset", "model", "method", "treatment", "control", "seed", "value", "scale", "evidence"]


def _per_cell_seed(frame: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    """Several runs of one configuration and seed (the same setting in two sets) count as one seed."""
    keys = [c for c in VALUE_COLUMNS if c in frame.columns and c not in values + ["scale", "evidence"]]
    agg = {**{v: "mean" for v in values}, "scale": join_scales, "evidence": " ".join}
    return frame.groupby(keys, sort=False, dropna=False).agg(agg).reset_index()


def paired_values(runs: pd.DataFrame, test: dict) -> pd.DataFrame:
    """treatment - control per cell and seed, matched on `pair_on` (default dataset, model, seed)."""
    pair_on = test.get("pair_on", ["dataset", "model", "seed"])
    if "seed" not in pair_on:
        raise ValueError(f"pair_on {pair_on} must contain seed: pairs are runs of one seed")
    keep = list(dict.fromkeys(["dataset", "model", "dataset_paper", "method", "config", "eval_mode", "seed", "top1",
                               "scale", "evidence", *pair_on]))
    sides = [at_best_scale(select_side(runs, test["kind"], test[name]))[0][keep] for name in ("treatment", "control")]
    pairs = sides[0].merge(sides[1], on=pair_on, suffixes=("_t", "_c"))
    if pairs.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS + ["dataset_paper"])
    pick = lambda name: pairs[name] if name in pairs else pairs[f"{name}_t"]  # noqa: E731
    frame = pd.DataFrame({"dataset": pick("dataset"), "model": pick("model"), "method": pick("method"),
                          "dataset_paper": pick("dataset_paper"),
                          "treatment": pairs["config_t"] + " [" + pairs["eval_mode_t"] + "]",
                          "control": pairs["config_c"] + " [" + pairs["eval_mode_c"] + "]",
                          "seed": pairs["seed"], "value": pairs["top1_t"] - pairs["top1_c"],
                          "scale": [join_scales(s) for s in zip(pairs["scale_t"], pairs["scale_c"])],
                          "evidence": pairs["evidence_t"] + " " + pairs["evidence_c"]})
    frame["cell"] = frame["dataset"] + "/" + frame["model"] + ": " + frame["treatment"] + " - " + frame["control"]
    return frame


def _paired(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    return _per_cell_seed(paired_values(runs, test), ["value"])


def _one_sample(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """A per-run diagnostic (one value per run, whatever its eval modes), optionally on a log scale."""
    rows, _ = at_best_scale(select_side(runs, test["kind"], {"methods": test["methods"]}))
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
    configuration and seed."""
    gains = paired_values(runs, {**test, "pair_on": ["dataset", "model", "seed"]})
    small, large = (gains[gains["dataset_paper"] == test["datasets"][size]] for size in ("small", "large"))
    keys = ["model", "method", "treatment", "control", "seed"]
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


def _variance_side(test: dict, runs: pd.DataFrame, side: dict) -> pd.DataFrame:
    """Per-seed values of one side of a variance claim: accuracies, or a `gain` (paired difference).
    When the two sides read different set kinds (joint against frozen), each label names its kind."""
    kinds = {_side_kind(test, test[name]) for name in ("treatment", "control")}
    prefix = f"{_side_kind(test, side)}: " if len(kinds) > 1 else ""
    if "gain" in side:
        return paired_values(runs, {"kind": test["kind"], **side["gain"]}).assign(
            label=lambda f: prefix + f["treatment"].astype(str) + " - " + f["control"].astype(str))
    rows, _ = at_best_scale(select_side(runs, test["kind"], side))
    return rows.assign(value=rows["top1"], label=prefix + rows["config"].astype(str) + " [" + rows["eval_mode"].astype(str) + "]")


def _seed_variance(test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """Treatment and control values per seed in each cell (`cells` keys, each side's configuration)."""
    keys = test.get("cells", ["dataset", "model"])
    keep = keys + ["seed", "label", "value", "scale", "evidence"]
    t, c = (_variance_side(test, runs, test[name])[lambda f: keep] for name in ("treatment", "control"))
    both = t.merge(c, on=keys + ["seed"], suffixes=("_t", "_c"))
    if both.empty:
        return pd.DataFrame(columns=VALUE_COLUMNS + ["t", "c"])
    frame = both[keys + ["seed"]].assign(
        treatment=both["label_t"], control=both["label_c"], t=both["value_t"], c=both["value_c"],
        scale=[join_scales(s) for s in zip(both["scale_t"], both["scale_c"])],
        evidence=both["evidence_t"] + " " + both["evidence_c"])
    frame["cell"] = (frame[keys].astype(str).agg("/".join, axis=1) + ": var " + frame["treatment"]
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


def audit_effects(effects: list[dict], runs: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One audit line per effect claim and one line per cell; Holm across the claims with a p-value."""
    alpha, min_seeds = settings["alpha"], settings["min_seeds"]
    lines, cells = [], []
    for claim in effects:
        test = claim["test"]
        values = effect_values(claim, runs)
        variance = test["type"] == "seed_variance"
        table, result = summarize_cells(values, min_seeds, alpha, variance)
        band = tuple(test.get("band", (-settings["tolerance"], settings["tolerance"])))
        if test["type"] == "equivalence":
            result["p_value"] = np.nan  # decided by its CI, not a p-value: not in the Holm family
        described = values.groupby("cell", sort=False).agg(
            dataset=("dataset", "first"), model=("model", "first"), treatment=("treatment", "first"),
            control=("control", "first"), evidence=("evidence", lambda e: " ".join(dict.fromkeys(" ".join(e).split()))))
        cells.append(table.join(described, on="cell").assign(claim_id=claim["id"]))
        note = (f"{result['cells']} of {result['cells_all']} cells with >= {result['needed']} seeds; "
                f"{result['n']} seeds in all of them" if result["cells"] else
                f"no cell has the {result['needed']} seeds needed: numbers over all cells, untested")
        lines.append({"claim_id": claim["id"], "table": "effects", "row": claim["id"], "column": "", "metric": "top1",
                      "expected": _expected(test, band), **{k: result[k] for k in ("mean", "std", "n", "ci_low",
                                                                                   "ci_high", "p_value", "scale")},
                      "cells": f"{result['cells']}/{result['cells_all']}", "verdict": effect_gate(result),
                      "note": note if result["cells_all"] else "no matched runs", "band": band,
                      "sign": test.get("expected_sign", "+"), "type": test["type"],
                      "evidence": " ".join(dict.fromkeys(" ".join(values["evidence"]).split()))})
    frame = pd.DataFrame(lines)
    if len(frame):
        frame["p_holm"] = holm(frame["p_value"])
        for i, line in frame[frame["verdict"].isna()].iterrows():
            frame.loc[i, "verdict"] = (interval_verdict(line["ci_low"], line["ci_high"], line["band"])
                                       if line["type"] == "equivalence"
                                       else significance_verdict(line["mean"], line["p_holm"], line["sign"], alpha))
    cell_table = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame()
    return frame.reindex(columns=AUDIT_COLUMNS), cell_table.reindex(columns=CELL_COLUMNS)


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
    effects, cells = audit_effects(claims["effects"], runs, settings)
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
    write_atomic(files.markdown, audit_markdown(audit, cells, claims, table_md, deviations))
    from pipeline_src.plots import plot_audit  # matplotlib only when the figure is drawn

    plot_audit(audit, files.figure)
    return audit
