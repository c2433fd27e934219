"""Run selection: the audit's runs tables read in, each claim side's runs picked, treatment and control
paired per cell, and the multiplicity family fixed from the params before any run.

A run's set, kind, reading and configuration (method label and sweep point) come from its record (the
runs table aggregate.py writes from metrics.json, and the record itself); no run id is cut apart.

Two readings meet here. A run's training reading (params readings) pairs its treatment with a control; a
cell is then judged under the NoisyNN authors' protocol its treatment's method follows (spec/readings.py),
else under that training reading, so a clean-trained control pairs as it always did."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_src.fileio import read_csv
from pipeline_src.results.aggregate import method_traits
from pipeline_src.results.claims import DEFAULT_READING
from pipeline_src.results.verdicts import PAPER_SCALE, join_scales
from pipeline_src.spec.config import run_configuration
from pipeline_src.spec.predictions import FILE_NAME as PREDICTIONS_FILE
from pipeline_src.spec.readings import followed_protocol
from pipeline_src.spec.run_record import load_record, method_as_run


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
        protocols = set_info.get("noisynn_protocols") or {}
        records = {run: _record_fields(runs_dir / str(run) / "metrics.json", name, run, label, protocols)
                   for run, label in dict(zip(frame["run_id"], frame["method"])).items()}  # one line per eval mode
        frame["config"] = frame["run_id"].map(lambda run: records[run][0])
        frame["model_from"] = frame["run_id"].map(lambda run: records[run][1])
        frame["noisynn_protocol"] = frame["run_id"].map(lambda run: records[run][2])
        if "kind" not in frame:
            frame["kind"] = info.get("kind", name)
        if "scale" not in frame.columns:
            frame["scale"] = info.get("scale", "unknown")
        frames.append(frame)
    columns = ["set", "kind", "dataset", "model", "method", "eval_mode", "seed", "top1", "run_id", "scale", "reading",
               "predictions", "config"]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for column in ("noise", "apply_at", "site"):
        if column in runs:
            runs[column] = runs[column].astype(object).fillna("").astype(str)  # an all-empty column reads as float
    runs["dataset_paper"] = runs["dataset"].map(lambda d: set_info.get("datasets", {}).get(d) or d)
    runs["model_paper"] = runs["model"].map(lambda m: set_info.get("models", {}).get(m) or m)
    runs["evidence"] = runs["set"] + "/" + runs["run_id"].astype(str)
    return runs


def configuration(record: Path, label: str) -> str:
    """A run's method label and sweep point (config.run_configuration), from its record beside the runs
    table; a runs table without its records (hand-made, as in tests) names no sweep point: its label."""
    return _record_fields(record, "", "", label, {})[0]


def _record_fields(record: Path, experiment_set: str, run_id: str, label: str,
                   protocols: dict) -> tuple[str, str, str]:
    """(configuration, model_from, noisynn_protocol) of a run: model_from is `set/run_id` of the run whose
    training made the weights it measured (an evaluation-only run's base; else the run itself, as in records
    from before the field and runs tables without their records); noisynn_protocol the NoisyNN authors'
    protocol its method follows ('' for none, and without a record)."""
    own = f"{experiment_set}/{run_id}"
    if not record.is_file():
        return str(label), own, ""
    fields = load_record(record)
    source = fields.get("model_from") or {}
    model_from = f"{source['experiment_set']}/{source['run_id']}" if source.get("run_id") else own
    return (run_configuration(fields["method"], fields["sweep"]), model_from,
            followed_protocol(method_as_run(fields), protocols))


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


def _with_run_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs tables from before readings, predictions, model_from and protocols (and hand-made ones in tests)."""
    reading = runs["reading"].fillna("").replace("", DEFAULT_READING) if "reading" in runs else DEFAULT_READING
    predictions = runs["predictions"].fillna("") if "predictions" in runs else ""
    # a run measured its own model unless its record names another run's (evidence: the run itself)
    own = runs["evidence"] if "evidence" in runs else ""
    model_from = runs["model_from"].where(runs["model_from"].fillna("") != "", own) if "model_from" in runs else own
    protocol = runs["noisynn_protocol"].fillna("") if "noisynn_protocol" in runs else ""
    return runs.assign(reading=reading, predictions=predictions, model_from=model_from, noisynn_protocol=protocol)


def cell_reading(protocol: pd.Series, reading: pd.Series) -> pd.Series:
    """The reading a cell is judged under: its treatment's NoisyNN protocol, else its training reading."""
    return protocol.where(protocol.fillna("") != "", reading)



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
    on the training reading; the cell's reading is cell_reading's (the treatment's NoisyNN protocol, else
    that training reading). pred_t / pred_c: each side's predictions file and eval mode ('' when none)."""
    runs = _with_run_columns(runs)
    pair_on = list(dict.fromkeys([*test.get("pair_on", ["dataset", "model", "seed"]), "reading"]))
    if "seed" not in pair_on:
        raise ValueError(f"pair_on {pair_on} must contain seed: pairs are runs of one seed")
    empty = pd.DataFrame(columns=VALUE_COLUMNS + ["dataset_paper", "model_paper", "method_t"])
    if any(column not in runs for column in pair_on):  # runs tables from before the column: nothing pairs
        return empty
    keep = list(dict.fromkeys(["set", "dataset", "model", "dataset_paper", "model_paper", "method", "config",
                               "eval_mode", "seed", "top1", "scale", "evidence", "model_from", "predictions",
                               "noisynn_protocol", *pair_on]))
    sides = [at_best_scale(select_side(runs, test["kind"], test[name]))[0][keep] for name in ("treatment", "control")]
    pairs = sides[0].merge(sides[1], on=pair_on, suffixes=("_t", "_c"))
    # an evaluation-only run tested clean measures its base's weights: where that base is a control of the
    # same treatment too, it is one control, not two (else a cell appears twice, once per set that measured it)
    candidates = set(zip(pairs["evidence_t"], pairs["evidence_c"]))
    borrowed = (pairs["model_from_c"] != pairs["evidence_c"]) & (pairs["evidence_t"] != pairs["evidence_c"])
    twice = [(t, base) in candidates for t, base in zip(pairs["evidence_t"], pairs["model_from_c"])]
    pairs = pairs[~(borrowed & np.array(twice, dtype=bool))]
    # the nearest legitimate control only: a treatment run that is among its own controls (trained clean,
    # noise switched on at test) is compared with itself, whose no-noise evaluation has exactly its weights;
    # an evaluation-only run with the base whose model it measured (the same weights too); else with a
    # control of its own set; controls of other sets (same recipe) only where its set has none
    same_set = pairs.get("set_t", pairs.get("set")) == pairs.get("set_c", pairs.get("set"))
    rank = np.where(pairs["evidence_t"] == pairs["evidence_c"], 0,
                    np.where(pairs["model_from_t"] == pairs["evidence_c"], 1, np.where(same_set, 2, 3)))
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
                          "reading": cell_reading(pairs["noisynn_protocol_t"], pairs["reading"]),
                          "treatment": pairs["config_t"] + " [" + pairs["eval_mode_t"] + "]",
                          "control": pairs["config_c"] + " [" + pairs["eval_mode_c"] + "]",
                          "seed": pairs["seed"], "value": pairs["top1_t"] - pairs["top1_c"],
                          "scale": [join_scales(s) for s in zip(pairs["scale_t"], pairs["scale_c"])],
                          "evidence": pairs["evidence_t"] + " " + pairs["evidence_c"],
                          "pred_t": [f"{p}::{m}" if p else "" for p, m in zip(pairs["predictions_t"], pairs["eval_mode_t"])],
                          "pred_c": [f"{p}::{m}" if p else "" for p, m in zip(pairs["predictions_c"], pairs["eval_mode_c"])]})
    frame["cell"] = frame["dataset"] + "/" + frame["model"] + ": " + frame["treatment"] + " - " + frame["control"]
    return frame



TRAITS = ("noise", "apply_at", "site", "trained_clean")  # what a method is (aggregate.method_traits): side filters


def method_fits(side: dict, label: str, spec: dict | None) -> bool:
    """Whether a declared method (its label, and its resolved spec when known) can give runs of a side:
    its label matches the side's patterns (a side naming none takes every label) and it is what the side's
    trait filters ask for (a method of unknown spec may be anything)."""
    if "methods" in side and not any(fnmatch.fnmatchcase(label, p) for p in side["methods"]):
        return False
    # `first` / `last` pick a sweep position among the runs (select_side), not a value a method declares
    wanted = {key: _as_list(side[key]) for key in TRAITS if key in side and side[key] not in ("first", "last")}
    if not wanted or spec is None:
        return True
    traits = method_traits(spec)
    return all(traits[key] in values for key, values in wanted.items())


def claim_family(effects: list[dict], set_info: dict) -> set[tuple[str, str]]:
    """The multiplicity family, fixed by the claims registry and the params before any run: every (claim,
    reading) whose sides the params declare runs for. A declared method that fits the claim's treatment
    (its first side; method_fits: its label patterns and what the method is) under a set's training reading
    gives the claim that reading, or the NoisyNN protocol the method follows (cell_reading's rule), when
    every other side has a fitting method in a set of its kind (any kind for a side of kind `any`) under the
    same training reading. The family follows the runs' matching, not the set that declares them, so a
    claim whose runs a set of another kind makes is in it."""
    protocols = set_info.get("noisynn_protocols") or {}
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

    def readings_for(side: dict, kind: str) -> set[tuple[str, str]]:
        """(training reading, cell reading) of every declared method that can give the side runs (a set of
        unknown methods may hold any; a method of unknown spec follows no protocol)."""
        wanted = side.get("kind", kind)
        out = set()
        for k, training, labels, specs in declared:
            if wanted not in (k, ANY_KIND):
                continue
            if specs is None:
                if not labels or any(method_fits(side, label, None) for label in labels):
                    out.add((training, training))
            else:
                out |= {(training, followed_protocol(spec, protocols) or training) for spec in specs
                        if method_fits(side, spec["label"], spec)}
        return out

    family = set()
    for claim in effects:
        first, *others = sides(claim["test"])
        other_trainings = [{t for t, _ in readings_for(side, claim["test"]["kind"])} for side in others]
        family |= {(claim["id"], reading) for training, reading in readings_for(first, claim["test"]["kind"])
                   if all(training in trainings for trainings in other_trainings)}
    return family
