"""A run's record (metrics.json): one shape, with a format version, and one upgrade path for older ones.

Format 2 (written by training since this module exists):
    format: 2
    run_id, experiment_set, set_kind, dataset, model, method, method_name, seed, scale, protocol, reading,
    sweep, params_hash
    params:          the RunConfig exactly as the run table built it (config.RunConfig fields)
    method_runtime:  what the method resolved only once built (the module a site named, the test batch size)
    model_from:      experiment_set, run_id and params_hash of the run whose model.pt was measured (the run
                     itself, or an evaluation-only run's base; records from before it name none)
    history, evaluations, eval_plan, test_top1, diagnostics, distributed, startup_cpu_seconds
    provenance:      commits (code_versions), data version, device, library versions, determinism
    (the MLflow run id is the tracking rule's, in tracking/<set>.json; records from before it carry
    mlflow_run_id themselves)

A trained record (trained.json, beside model.pt) is what the train job knows once it has trained: the
head, params (the run's training identity), history, startup_cpu_seconds, distributed and provenance.
The evaluate job adds what it measured and writes metrics.json.

Format 1 (no `format` key, the committed reports' older runs) kept the method twice: params.method as
written or resolved, and params.resolved_method as it ran. Reading upgrades it; files are never rewritten.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_src.fileio import read_json
from pipeline_src.provenance import git_state

if TYPE_CHECKING:
    from pipeline_src.spec.config import RunConfig

FORMAT = 2
TRAINED_FORMAT = "trained/1"
TRAINED_NAME = "trained.json"
# the train job's resumable state in the run folder, removed once the run is trained; here (torch-free)
# so the progress page can look for it without importing the training package
CHECKPOINT_NAME = "checkpoint.pt"
# what to do about a damaged record: the rules write both kinds anew once they are gone
RECORD_REMEDY = ("delete it and run Snakemake again: the run's evaluate job writes it anew (a report "
                 "folder's copy: restore it with git checkout)")
TRAINED_REMEDY = "delete it and the model.pt beside it and run Snakemake again: the run trains anew"


def trained_path(model_path: str | Path) -> Path:
    """A run's trained record sits next to its model.pt."""
    return Path(model_path).with_name(TRAINED_NAME)


def trained_for(trained: dict, cfg: RunConfig) -> bool:
    """Whether a trained record is of this run's training identity (what its model.pt can be evaluated as)."""
    return trained.get("params") == json.loads(cfg.training_identity().to_json())


def run_head(cfg: RunConfig, rule: str) -> dict:
    """What names a run in its records and in MLflow, known before it trains."""
    return {"run_id": cfg.run_id, "experiment_set": cfg.experiment_set, "set_kind": cfg.set_kind,
            "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method["label"],
            "method_name": cfg.method["name"], "seed": cfg.seed, "scale": cfg.scale, "protocol": cfg.protocol,
            "reading": cfg.reading, "sweep": cfg.sweep, "params_hash": cfg.params_hash(),
            "provenance": {**git_state(), "snakemake_rule": rule,
                           "wildcards": {"experiment_set": cfg.experiment_set, "run_id": cfg.run_id}}}


def method_runtime(run_method: dict, resolved: dict) -> dict:
    """The keys a built method resolved beyond (or differently from) its run-table spec."""
    return {key: value for key, value in resolved.items() if run_method.get(key, object()) != value}


def upgrade(record: dict) -> dict:
    """Any known format -> format 2 (a new dict); an unknown newer format is refused in one line."""
    version = record.get("format", 1)
    if version == FORMAT:
        return record
    if version != 1:
        raise ValueError(f"run record {record.get('run_id', '?')} has format {version}; this code reads "
                         f"formats 1 to {FORMAT}: update the pipeline")
    record = copy.deepcopy(record)
    params = record["params"]
    resolved = params.pop("resolved_method", None) or params["method"]
    record["method_runtime"] = method_runtime(params["method"], resolved)
    record.setdefault("reading", params.get("reading", ""))
    record["format"] = FORMAT
    return record


def load_record(path: str | Path) -> dict:
    """A run's metrics.json, upgraded; a damaged one is one line naming it and what to do."""
    record = read_json(path, RECORD_REMEDY)
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise ValueError(f"{path}: not a run record (no params); {RECORD_REMEDY}")
    return upgrade(record)


def method_as_run(record: dict) -> dict:
    """The method spec the run trained with, every default and runtime resolution filled."""
    return {**record["params"]["method"], **record.get("method_runtime", {})}
