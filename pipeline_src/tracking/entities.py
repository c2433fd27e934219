"""A run record (metrics.json) as MLflow entities: params, tags, metric points and its dataset input.
Pure conversion; nothing here talks to the store."""
from __future__ import annotations

import hashlib
import json
import re

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

# MLflow's dataset table keeps digests of at most 36 characters (String(36) in its SQL schema); the
# data version is a 64-character sha256, whole in the dataset's profile. 36 hex digits still tell
# any two data versions apart.
DATASET_DIGEST_CHARS = 36
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow names allow alphanumerics, _ - . / : and space


def _dataset_input(metrics: dict) -> DatasetInput | None:
    """The run's dataset as an MLflow dataset input: named as in the params, digest the prepared data's
    version (the sha256 of the arrays the run trained and was tested on), source the DVC hash of the
    raw files it was read from. Two subsamples of one dataset share that hash: as the digest it would
    merge them into one MLflow dataset."""
    prov = metrics.get("provenance") or {}
    version, dvc = prov.get("data_version"), prov.get("dvc_hash")
    if not version or not metrics.get("dataset"):
        return None
    source = {"dvc_file": "data.dvc", "dvc_hash": dvc} if dvc else {"generated_by": "pipeline_src/data/generated.py"}
    dataset = Dataset(name=str(metrics["dataset"]), digest=str(version)[:DATASET_DIGEST_CHARS],
                      source_type="dvc" if dvc else "generated", source=json.dumps(source),
                      profile=json.dumps({"data_version": version, "dvc_hash": dvc}))
    # one input per run: MLflow keeps a dataset once per run, and the test split comes from the same data
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train+test")])


def _params(metrics: dict) -> list[Param]:
    # the run config, and what the built method resolved beyond it (format 2; format 1 kept it in params)
    logged = {**(metrics.get("params") or {}), **{k: metrics[k] for k in ("method_runtime",) if k in metrics}}
    return [Param(_name(k), _text(v, MAX_PARAM_VAL_LENGTH)) for k, v in _flatten(logged)]


def _run_tags(metrics: dict, run_key: str, parent_id: str, digest: str | None) -> dict:
    prov = metrics.get("provenance") or {}
    tags = {
        "mlflow.parentRunId": parent_id,
        # Set here: MLflow would guess from the working directory, a Snakemake temp copy.
        "mlflow.source.git.commit": prov.get("git_commit"),
        "mlflow.source.name": f"snakemake:{prov.get('snakemake_rule') or 'train'}",
        "mlflow.source.type": "JOB",
        "pipeline_role": "child",
        "run_key": run_key,
        "params_hash": metrics["params_hash"],
        "metrics_sha256": digest,
    }
    for key in ("experiment_set", "set_kind", "dataset", "model", "method", "method_name", "seed", "scale"):
        tags[key] = metrics.get(key)
    for key, value in prov.items():  # git_dirty, data_version, device, torch_version, snakemake_rule, ...
        if key not in ("git_commit", "wildcards"):
            tags[key] = value
    for key, value in (prov.get("wildcards") or {}).items():
        tags[f"wildcards.{key}"] = value
    return {_name(k): _text(v, MAX_TAG_VAL_LENGTH) for k, v in tags.items() if v is not None}


def _metric_points(metrics: dict, start_ms: int, end_ms: int) -> list[Metric]:
    """Per-epoch values at step=epoch; final values (test_top1, evaluations.*, diagnostics.*) at the last step."""
    points, elapsed = [], 0.0
    for entry in metrics.get("history") or []:
        elapsed += _number(entry.get("seconds")) or 0.0
        points += _epoch_points(entry, min(start_ms + int(1000 * elapsed), end_ms))
    return points + _final_points(metrics, end_ms)


def _epoch_points(entry: dict, stamp_ms: int) -> list[Metric]:
    step = int(entry["epoch"])
    return [Metric(_name(key), _number(value), stamp_ms, step)
            for key, value in entry.items() if key != "epoch" and _number(value) is not None]


def _final_points(metrics: dict, stamp_ms: int) -> list[Metric]:
    last_step = max((int(entry["epoch"]) for entry in metrics.get("history") or []), default=0)
    finals = {"test_top1": metrics.get("test_top1"),
              **{f"evaluations.{k}": v for k, v in _flatten(metrics.get("evaluations") or {})},
              **{f"diagnostics.{k}": v for k, v in _flatten(metrics.get("diagnostics") or {})}}
    return [Metric(_name(key), _number(value), stamp_ms, last_step)
            for key, value in finals.items() if _number(value) is not None]


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _name(key) -> str:
    return _BAD_NAME_CHARS.sub("_", str(key))[:MAX_ENTITY_KEY_LENGTH]


def _text(value, limit: int) -> str:
    """MLflow stores strings of bounded length; the full value stays in the metrics.json artifact."""
    return (value if isinstance(value, str) else json.dumps(value, sort_keys=True))[:limit]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)  # NaN and inf included: MLflow stores them


def _content_hash(metrics: dict) -> str:
    body = {k: v for k, v in metrics.items() if k != "mlflow_run_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
