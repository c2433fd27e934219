"""Per-set tables: every run's metrics.json -> one row per configuration and eval mode."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.spec.run_record import load_record, method_as_run
from pipeline_src.spec.schema import filled

def method_traits(method: dict) -> dict:
    """What a method is, for claims that select runs by what they are rather than by label or set kind:
    its noise kind, where it applies it and at which site ('' without NoisyNN noise; a kind at strength 0 is
    none), and whether the model trains clean (a baseline without augmentation, or NoisyNN noise switched on
    at test only). `method` is a spec with its defaults filled (a run record's, or the run table's)."""
    noisy = method["name"] == "noisynn"
    apply_at = method["apply_at"] if noisy else ""
    # a strength (or impulse p) of 0 is the identity (a strength sweep's first point): no noise to select
    identity = noisy and any(method["noise"].get(key) == 0 for key in ("strength", "p"))
    return {"noise": method["noise"]["kind"] if noisy and not identity else "", "apply_at": apply_at,
            "site": method["site"] if noisy else "",
            "trained_clean": not method.get("augment") and (method["name"] == "baseline" or apply_at == "test")}


# What trains a model besides its method, seed and names. Two runs of one recipe and seed, one trained clean,
# are a legitimate pair wherever they were declared; the eval batch and device change no trained weight.
RECIPE_KEYS = ("dataset", "model_cfg", "epochs", "batch_size", "optimizer", "protocol", "label_smoothing", "scale")


def recipe(metrics: dict) -> str:
    """A short hash of a run's training recipe (RECIPE_KEYS, its reading and the data version)."""
    params = metrics["params"]
    block = {key: params.get(key) for key in RECIPE_KEYS}
    # records written before the schema filled every optimizer key (warmup_epochs, min_lr) or had label
    # smoothing name the same training as today's filled ones: fill them, so one recipe has one hash
    block["optimizer"] = filled(params.get("optimizer") or {}, "optimizer_defaults")
    block["label_smoothing"] = params.get("label_smoothing") or 0.0
    block.update(model=metrics["model"], reading=metrics.get("reading", ""),
                 data=metrics["provenance"].get("data_version"))
    return hashlib.sha256(json.dumps(block, sort_keys=True).encode()).hexdigest()[:12]


def load_runs(metrics_paths: list[Path], mlflow_ids: dict[str, str | None] | None = None) -> pd.DataFrame:
    """Long table: one line per run and eval mode, with sweep values and diagnostics as columns.
    mlflow_ids: run id -> MLflow run id, from the set's tracking file (records written before that file
    existed carry their own mlflow_run_id, read where the file has none)."""
    mlflow_ids = mlflow_ids or {}
    rows, sweep_keys = [], set()
    for path in metrics_paths:
        metrics = load_record(path)
        sweep = {key.split(".")[-1]: value for key, value in metrics["sweep"].items()}
        sweep_keys.update(sweep)
        method = method_as_run(metrics)
        plan = metrics.get("eval_plan", {})
        for eval_mode, value in metrics["evaluations"].items():
            how = plan.get(eval_mode, {})
            rows.append({"experiment_set": metrics["experiment_set"], "kind": metrics["set_kind"],
                         "dataset": metrics["dataset"], "model": metrics["model"],
                         "method": method["label"], **sweep, "eval_mode": eval_mode,
                         "seed": metrics["seed"], "top1": value, "run_id": metrics["run_id"],
                         "protocol": metrics.get("protocol", "paper"), "reading": metrics.get("reading", ""),
                         "device": metrics["provenance"].get("device"),
                         "test_batches": how.get("test_batches"), "test_batch_size": how.get("test_batch_size"),
                         "train_noise": method["name"] == "noisynn" and method["apply_at"] != "test",
                         **method_traits(method), "recipe": recipe(metrics),
                         "mlflow_run_id": mlflow_ids.get(metrics["run_id"]) or metrics.get("mlflow_run_id"),
                         "scale": metrics["scale"],
                         **metrics.get("diagnostics", {})})
    if not rows:
        raise ValueError("no metrics files given")
    frame = pd.DataFrame(rows)
    frame.attrs["sweep"] = sorted(sweep_keys)
    return frame


def load_histories(metrics_paths: list[Path]) -> pd.DataFrame:
    """Long table of every run's per-epoch history: run_id, model, method, seed, epoch and what was logged."""
    rows = []
    for path in metrics_paths:
        metrics = load_record(path)
        head = {"run_id": metrics["run_id"], "dataset": metrics["dataset"], "model": metrics["model"],
                "method": metrics["method"], "method_name": metrics.get("method_name"), "seed": metrics["seed"],
                "reading": metrics.get("reading", "")}
        rows += [{**head, **entry} for entry in metrics["history"]]
    return pd.DataFrame(rows)


def summarize(long: pd.DataFrame, keys: list[str], extra_first: list[str] = ()) -> pd.DataFrame:
    """Mean, sample std and count over seeds for each configuration."""
    value_cols = ["top1"] + [c for c in long.columns if c not in set(keys) | ID_COLUMNS
                             and pd.api.types.is_float_dtype(long[c])]
    grouped = long.groupby(keys, sort=False, dropna=False)
    table = grouped.size().rename("n_seeds").to_frame()
    for col in value_cols:
        table[f"{col}_mean"] = grouped[col].mean()
        table[f"{col}_std"] = grouped[col].std(ddof=1).fillna(0.0)
        if col != "top1":  # a diagnostic may be recorded by only some of a row's runs (added later)
            table[f"{col}_n"] = grouped[col].count()
    for col in extra_first:
        table[col] = grouped[col].first()
    table["scale"] = grouped["scale"].first()
    table["run_ids"] = grouped["run_id"].agg(lambda ids: " ".join(ids))
    return table.reset_index()


def eval_protocol_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Name each row by where noise was applied and how test batches were formed (the method's own
    test batch and an extra size of the same protocol keep their eval modes, and read the same here);
    difference vs the set's clean-trained model tested clean, a column left out of a set that trains
    no clean model.

    Training noise comes from the method (apply_at of its spec), test noise from the eval mode.
    """
    def where(row):
        trained_noisy = row["train_noise"]
        tested_noisy = row["eval_mode"] != "no_noise"
        return {(False, False): "none", (True, False): "train", (False, True): "test", (True, True): "both"}[
            (trained_noisy, tested_noisy)]

    table = table.copy()
    table["apply_at"] = table.apply(where, axis=1)
    # a clean test is one pass in eval batches, whose size changes nothing
    table["test_batch_size"] = table["test_batch_size"].astype(int).astype(str).mask(table["test_batches"] == "-", "-")
    clean = table[table["apply_at"] == "none"].set_index(["dataset", "model"])["top1_mean"]
    if len(clean):
        table["delta_vs_clean"] = table["top1_mean"] - [clean.get((d, m), float("nan"))
                                                       for d, m in zip(table["dataset"], table["model"])]
    return table.drop(columns="train_noise")


class SetFiles(NamedTuple):
    """What aggregate_set writes for one experiment set."""

    table: Path  # csv
    markdown: Path
    runs: Path  # every run and eval mode, one line each (the audit's input)
    figure: Path

    @classmethod
    def in_results(cls, results: Path, experiment_set: str) -> "SetFiles":
        """The layout of a results or report folder: tables/<set>.csv, .md, _runs.csv, figures/<set>.png."""
        tables = Path(results) / "tables"
        return cls(tables / f"{experiment_set}.csv", tables / f"{experiment_set}.md",
                   tables / f"{experiment_set}_runs.csv", Path(results) / "figures" / f"{experiment_set}.png")


def write_table(table: pd.DataFrame, files: SetFiles, title: str) -> None:
    write_atomic(files.table, table.to_csv(index=False, float_format="%.4f"))
    shown = table.drop(columns=[c for c in ("run_ids",) if c in table.columns])
    # a generator's sigma lives on [0, 1] pixels: 0.0006 is small noise, not none (that is sigma_zero_fraction)
    formats = [".4f" if str(column).startswith("sigma_") else ".2f" for column in shown.columns]
    write_atomic(files.markdown, f"# {title}\n\n" + shown.to_markdown(index=False, floatfmt=formats) + "\n")


ID_COLUMNS = {"experiment_set", "kind", "dataset", "model", "method", "eval_mode", "seed", "top1", "run_id", "train_noise",
              "mlflow_run_id", "scale", "protocol", "reading", "device", "test_batches", "test_batch_size", "noise",
              "apply_at", "site", "trained_clean", "recipe"}


def aggregate_set(experiment_set: str, kind: str, metrics_paths: list[Path], files: SetFiles,
                  mlflow_ids: dict[str, str | None] | None = None) -> pd.DataFrame:
    from pipeline_src.results.plots import plot_set

    long = load_runs(metrics_paths, mlflow_ids)
    readings = ["reading"] if long["reading"].ne("").any() else []  # a set without readings keeps its columns
    keys = ["dataset", "model", "method", *long.attrs["sweep"], *readings, "eval_mode"]
    protocol = ["test_batches", "test_batch_size"] if kind == "eval_protocol" else []
    table = summarize(long, keys, extra_first=["train_noise", *protocol])
    if kind == "eval_protocol":
        table = eval_protocol_columns(table)
    else:
        table = table.drop(columns="train_noise")
    write_atomic(files.runs, long.to_csv(index=False))
    write_table(table, files, f"{experiment_set} ({long['scale'].iloc[0]}): top-1 accuracy (%) over seeds")
    run_dirs = {Path(p).parent.name: Path(p).parent for p in metrics_paths}  # a run's folder is named by its id
    plot_set(kind, experiment_set, long, table, files.figure, run_dirs)
    return table
