"""A set's tracking file, tracking/<set>.json: which MLflow run mirrors each of the set's runs.

    {"experiment_set": <set>, "mlflow_run_ids": {<run id>: <MLflow run id, or null where not logged>}}

The track_set rule writes it; track-resync adds the runs it logs later; aggregate reads it into the runs
table's mlflow_run_id column. The ids live here and not in metrics.json, which the job that measured a
run writes once. No MLflow import: aggregate reads this file without paying for one.
"""
from __future__ import annotations

from pathlib import Path

from pipeline_src.fileio import read_json, write_json

# a damaged tracking file loses only ids: logging the set again finds its runs in the store
IDS_REMEDY = "delete it and run Snakemake again (or track-resync): the runs already logged are found, not duplicated"


def set_ids_path(results_dir, experiment_set: str) -> Path:
    """A set's tracking file in a results folder (where the track_set rule writes it)."""
    return Path(results_dir) / "tracking" / f"{experiment_set}.json"


def write_set_ids(path, experiment_set: str, ids: dict[str, str | None]) -> None:
    write_json(path, {"experiment_set": experiment_set, "mlflow_run_ids": ids})


def read_set_ids(path) -> dict[str, str | None]:
    """Run id -> MLflow run id of a set's tracking file; {} where there is none yet."""
    path = Path(path)
    return read_json(path, IDS_REMEDY)["mlflow_run_ids"] if path.exists() else {}
