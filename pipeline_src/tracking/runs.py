"""Finished runs into MLflow: one child run per training run, logged from its metrics.json, with
retries, a pending marker when the store stays out of reach, and resync() for those later.

Identity of a child run: tags run_key = "<experiment_set>/<run_id>" and params_hash. When an
active run with the same key and hash exists:
  - same metrics_sha256 (metrics.json content without mlflow_run_id, which older records filled in) and
    FINISHED: it is reused and nothing is logged (a retry, or a resync of a run that was in fact logged);
  - otherwise (the same config rerun with new results, or an attempt that died half-way): a fresh
    run is logged and the old one soft-deleted (tag pipeline_superseded_by; restorable until
    `mlflow gc`). So the store holds one live run per (run_key, params_hash); a changed config
    (new params_hash) is a new run and the old one stays.

A run's MLflow id goes to its set's tracking file (ids.py), never into metrics.json.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from pipeline_src.tracking.entities import _content_hash, _dataset_input, _metric_points, _number, _params, _run_tags
from pipeline_src.tracking.ids import read_set_ids, set_ids_path, write_set_ids
from pipeline_src.tracking.store import (ServerTimeout, _attempt, _attempt_or_warn, _budget, _filter, _find_parent,
                                         _init_once, _is_transient, _open_client, _read_json, _reason, _store_lock,
                                         _supersede, _warn, tracking_uri)

PENDING_MARKER = "mlflow_pending"


def log_run(metrics: dict, run_dir, results_dir, *, attempts: int | None = None,
            backoff_s: float | None = None) -> str | None:
    """Log one finished run as a child of its set's parent; return the MLflow run id, or None.

    None means the store stayed unreachable (or refused the run): a warning went to stderr and
    run_dir/mlflow_pending was written for resync(). Never raises for tracking errors. It does not
    edit metrics.json: the caller keeps the returned id in the set's tracking file (set_ids_path).
    """
    run_dir, results_dir = Path(run_dir), Path(results_dir).resolve()
    now_ms = int(time.time() * 1000)  # fixed across retries, so re-logged points are duplicates the store drops
    run_id, exc = _attempt(results_dir, lambda: _log_once(metrics, run_dir, results_dir, now_ms), attempts, backoff_s)
    if exc is not None:
        _mark_pending(metrics, run_dir, _budget(attempts, backoff_s)[0], exc)
        return None
    (run_dir / PENDING_MARKER).unlink(missing_ok=True)
    return run_id


def resync(results_dir, *, attempts: int | None = None, backoff_s: float | None = None) -> tuple[int, int]:
    """Log every run under results_dir/runs/*/* that is pending or has no MLflow id in its set's tracking file.

    Returns (synced, skipped). Synced runs get their MLflow id in tracking/<set>.json (the next workflow
    run then rebuilds that set's tables with it) and lose their marker; metrics.json stays as it is.
    skipped counts runs already synced plus any that failed again (those keep their marker and were
    warned about). A run already in the store is found by run_key + params_hash, not logged twice.
    """
    results_dir = Path(results_dir).resolve()
    synced = skipped = 0
    for path in sorted(results_dir.glob("runs/*/*/metrics.json")):
        metrics = _read_json(path)
        if metrics is None:
            print(f"WARNING: resync skipped unreadable {path}", file=sys.stderr)
            skipped += 1
            continue
        ids_path = set_ids_path(results_dir, metrics["experiment_set"])
        ids = read_set_ids(ids_path)
        if ids.get(metrics["run_id"]) and not (path.parent / PENDING_MARKER).exists():
            skipped += 1
            continue
        run_id = log_run(metrics, path.parent, results_dir, attempts=attempts, backoff_s=backoff_s)
        if run_id is None:
            skipped += 1
            continue
        write_set_ids(ids_path, metrics["experiment_set"], {**ids, metrics["run_id"]: run_id})
        synced += 1
    return synced, skipped


def log_evaluated(metrics: dict, metrics_path: Path, live=None, results_dir=None) -> str | None:
    """Log a run its evaluate job has just recorded: its live run's finish(), else log_run. The id is
    the caller's to show; the set's tracking file gets it when track_set finds the run logged."""
    return live.finish(metrics) if live else log_run(metrics, metrics_path.parent, results_dir)


def log_set(results_dir, experiment_set: str, metrics_paths: list[Path]) -> dict[str, str | None]:
    """Log a set's finished runs (run id -> MLflow run id, None where not logged), then end its parent run.
    The records are read only: the ids are for the set's tracking file."""
    ids = {}
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        ids[metrics["run_id"]] = log_run(metrics, Path(path).parent, results_dir)
    end_set(results_dir, experiment_set)  # every run of the set is in: its parent run ends
    return ids


def end_set(results_dir, experiment_set: str, *, attempts: int | None = None,
            backoff_s: float | None = None) -> bool:
    """Mark the set's parent run FINISHED: its set has ended (every run trained and logged).

    False, with a warning, when the store stays unreachable or the set has no parent; never raises.
    A set that trains again later reopens its parent (LiveRun), and ends it again here.
    """
    results_dir = Path(results_dir).resolve()

    def once() -> bool:
        client = _open_client(tracking_uri(results_dir), results_dir)
        _, parent_id = _find_parent(client, experiment_set)
        if parent_id is not None:
            client.set_terminated(parent_id, "FINISHED")
        return parent_id is not None

    ended, exc = _attempt_or_warn(results_dir, once, attempts, backoff_s,
                                  f"MLflow: could not end the parent run of set {experiment_set}",
                                  "Its runs are logged; the parent stays RUNNING until the set is tracked again.")
    if exc is not None:
        return False
    if not ended:
        print(f"MLflow: set {experiment_set} has no parent run in {tracking_uri(results_dir)}; nothing to end",
              file=sys.stderr)
    return ended


def _log_once(metrics: dict, run_dir: Path, results_dir: Path, now_ms: int) -> str:
    client = _open_client(tracking_uri(results_dir), results_dir)
    experiment_set = metrics["experiment_set"]
    experiment_id, parent_id = _find_parent(client, experiment_set)
    if parent_id is None:  # init_store has not run against this store: do its work for this set
        info = _init_once(results_dir, [experiment_set], None)
        experiment_id, parent_id = info["experiment_id"], info["parents"][experiment_set]

    run_key = f"{experiment_set}/{metrics['run_id']}"
    digest = _content_hash(metrics)
    found = client.search_runs([experiment_id], _filter(run_key=run_key, params_hash=metrics["params_hash"]))
    for run in found:
        if run.data.tags.get("metrics_sha256") == digest and run.info.status == "FINISHED":
            return run.info.run_id

    history = metrics.get("history") or []
    start_ms = now_ms - int(1000 * sum(_number(h.get("seconds")) or 0.0 for h in history))
    run_id = client.create_run(experiment_id, start_time=start_ms, run_name=metrics["run_id"],
                               tags=_run_tags(metrics, run_key, parent_id, digest)).info.run_id
    _supersede(client, found, run_id)
    # log_batch splits into requests within MLflow's per-request limits itself
    client.log_batch(run_id, params=_params(metrics), metrics=_metric_points(metrics, start_ms, now_ms))
    _log_dataset(client, run_id, metrics, results_dir)
    _log_files(client, run_id, metrics, run_dir)
    client.set_terminated(run_id, "FINISHED", end_time=now_ms)
    return run_id


def _log_dataset(client: MlflowClient, run_id: str, metrics: dict, results_dir: Path) -> None:
    dataset = _dataset_input(metrics)
    if dataset is not None:
        # MLflow looks the dataset up and inserts it if absent, in one transaction that does not lock
        # the table first: two jobs giving a new dataset as input at once both insert it, and the
        # second fails on its unique key. The store lock makes that step one job at a time.
        with _store_lock(tracking_uri(results_dir), results_dir):
            client.log_inputs(run_id, datasets=[dataset])


def _log_files(client: MlflowClient, run_id: str, metrics: dict, run_dir: Path) -> None:
    client.log_dict(run_id, metrics, "metrics.json")  # exactly what was logged and hashed
    for extra in [run_dir / "train.log", *sorted(run_dir.glob("*.png"))]:
        if extra.is_file():
            client.log_artifact(run_id, str(extra))


def _mark_pending(metrics: dict, run_dir: Path, attempts: int, exc: Exception) -> None:
    marker = run_dir / PENDING_MARKER
    if isinstance(exc, ServerTimeout):
        tried = "no answer in time, not retried"
    else:
        tried = f"after {attempts} attempt(s)" if _is_transient(exc) else "not retryable"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        marker.write_text(f"{stamp} {tried}: {_reason(exc)}\n")
        where = f"marker written: {marker}"
    except OSError as err:
        where = f"could NOT write marker {marker}: {err}"
    _warn(f"MLflow logging FAILED for {metrics.get('experiment_set')}/{metrics.get('run_id')} ({tried}, "
          f"{os.environ.get('MLFLOW_TRACKING_URI') or 'default sqlite store'}): {_reason(exc)}",
          f"The result itself is safe in {run_dir / 'metrics.json'}; {where}",
          "Log it later with pipeline_src.tracking.runs.resync(<results_dir>).")
