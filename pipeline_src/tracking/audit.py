"""The audit in MLflow: its tables and verdict counts on the experiment's audit run, and each set's
summary (what it crossed, its n, its verdicts, its table and figure) on the set's parent run."""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from pipeline_src.provenance import git_state
from pipeline_src.tracking.entities import _text
from pipeline_src.tracking.store import (_attempt_or_warn, _ensure_experiment, _experiment_name, _filter,
                                         _open_client, _parent_run, _store_lock, _supersede, tracking_uri)

AUDIT_RUN_NAME = "audit"


def log_audit(results_dir, tables: list, files: list = (), *, attempts: int | None = None,
              backoff_s: float | None = None) -> str | None:
    """Log an audit on the experiment's audit run and return its MLflow id, or None (warned, never raises).

    tables: csv files (audit.csv, effects_cells.csv), each logged with MlflowClient.log_table as
    <stem>.json, which the UI shows as a table, and as the csv itself; a table with a `verdict` column
    also gives one metric per verdict (verdicts.<verdict> = how many claims have it), so the verdict
    counts show in the experiment's runs table. files (audit.md, the figure) are logged as they are.
    An audit run with the same content is reused; a changed audit gets a new run and the old one is
    soft-deleted (tag pipeline_superseded_by), as for training runs.
    """
    results_dir = Path(results_dir).resolve()
    tables, files = [Path(t) for t in tables], [Path(f) for f in files]
    missing = [str(p) for p in tables + files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"audit files to track do not exist: {', '.join(missing)}")
    run_id, _ = _attempt_or_warn(results_dir, lambda: _audit_once(results_dir, tables, files), attempts, backoff_s,
                                 f"MLflow logging of the audit FAILED ({tracking_uri(results_dir)})",
                                 f"The audit itself is in {tables[0].parent}; rerun the tracking step to log it.")
    return run_id


def log_set_summaries(results_dir, folder, *, attempts: int | None = None, backoff_s: float | None = None) -> int:
    """Each set's summary on its parent run, from a results or report folder (runs/<set>/<run>/metrics.json,
    tables/<set>.csv, figures/<set>.png, audit.csv); returns how many parents got one (warned, never raises).

    The parent gets params (set_kind, scale, datasets, models, methods: what the set crossed), metrics
    (runs and seeds: its n; audit_rows: how many rows of audit.csv, a claim under one reading, cite the
    set's runs as evidence; verdicts.<verdict>: how many of those reach that verdict), the set's table
    and those audit rows as MLflow tables (<set>.json, verdicts.json), and its figure. A summary already
    logged is left alone; a changed one replaces the tables and counts (a verdict no longer reached
    counts 0).
    """
    results_dir, folder = Path(results_dir).resolve(), Path(folder)
    done, _ = _attempt_or_warn(results_dir, lambda: _summaries_once(results_dir, folder), attempts, backoff_s,
                               f"MLflow: the sets' summaries were NOT logged ({tracking_uri(results_dir)})",
                               f"They are in {folder}; rerun the tracking step to log them.")
    return done or 0


def _audit_once(results_dir: Path, tables: list[Path], files: list[Path]) -> str:
    import pandas as pd  # only the audit's tracking reads tables

    uri = tracking_uri(results_dir)
    client = _open_client(uri, results_dir)
    with _store_lock(uri, results_dir):
        experiment_id = _ensure_experiment(client, results_dir, uri)
    digest = hashlib.sha256()
    for path in tables + files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest = digest.hexdigest()
    found = client.search_runs([experiment_id], _filter(pipeline_role="audit"))
    for run in found:
        if run.data.tags.get("audit_sha256") == digest and run.info.status == "FINISHED":
            return run.info.run_id
    commit = git_state()["git_commit"]
    run_id = client.create_run(experiment_id, run_name=AUDIT_RUN_NAME, tags={
        "pipeline_role": "audit", "audit_sha256": digest, "mlflow.source.type": "JOB",
        "mlflow.source.name": "snakemake:track_audit", "mlflow.source.git.commit": commit}).info.run_id
    _supersede(client, found, run_id)
    points, now_ms = [], int(time.time() * 1000)
    for path in tables:
        frame = pd.read_csv(path)
        # NaN (no p-value, an untested claim) as null: the UI reads the table as strict JSON
        client.log_table(run_id, frame.astype(object).where(frame.notna(), None), f"{path.stem}.json")
        client.log_artifact(run_id, str(path))
        if "verdict" in frame.columns:
            counts = frame["verdict"].fillna("none").value_counts()
            points += [Metric(f"verdicts.{_verdict_key(v)}", float(n), now_ms, 0) for v, n in counts.items()]
    for path in files:
        client.log_artifact(run_id, str(path))
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id, "FINISHED", end_time=now_ms)
    return run_id


def _summaries_once(results_dir: Path, folder: Path) -> int:
    import pandas as pd  # only the summaries read tables

    client = _open_client(tracking_uri(results_dir), results_dir)
    experiment = client.get_experiment_by_name(_experiment_name())
    if experiment is None:
        return 0
    audit = pd.read_csv(folder / "audit.csv") if (folder / "audit.csv").is_file() else None
    done = 0
    for set_dir in sorted(p for p in (folder / "runs").glob("*") if p.is_dir()):
        name, runs = set_dir.name, [json.loads(p.read_text()) for p in sorted(set_dir.glob("*/metrics.json"))]
        parent = _parent_run(client, experiment.experiment_id, name)
        if parent is None or not runs:
            continue
        described = {"set_kind": {r.get("set_kind") for r in runs}, "scale": {r.get("scale") for r in runs},
                     "datasets": {r.get("dataset") for r in runs}, "models": {r.get("model") for r in runs},
                     "methods": {r.get("method") for r in runs}}
        params = {key: ", ".join(sorted(str(v) for v in values if v is not None)) for key, values in described.items()}
        counts = {"runs": len(runs), "seeds": len({r.get("seed") for r in runs})}
        rows = None
        if audit is not None and "evidence" in audit.columns:
            cites = audit["evidence"].fillna("").map(lambda text: any(t.startswith(f"{name}/") for t in text.split()))
            rows = audit[cites]
            counts["audit_rows"] = len(rows)  # 0: no claim cites the set's runs
            verdicts = rows["verdict"].fillna("none").value_counts()
            counts.update({f"verdicts.{_verdict_key(v)}": n for v, n in verdicts.items()})
        table, figure = folder / "tables" / f"{name}.csv", folder / "figures" / f"{name}.png"
        digest = hashlib.sha256(json.dumps([params, counts], sort_keys=True).encode())
        for path in (table, figure):
            digest.update(path.read_bytes() if path.is_file() else b"")
        digest.update(b"" if rows is None else rows.to_csv(index=False).encode())
        if parent.data.tags.get("summary_sha256") == digest.hexdigest():
            continue
        run_id, now_ms = parent.info.run_id, int(time.time() * 1000)
        # params cannot change once logged: a set whose description changed keeps its first one
        new_params = [Param(k, _text(v, MAX_PARAM_VAL_LENGTH)) for k, v in params.items()
                      if k not in parent.data.params]
        stale = {k: 0 for k in parent.data.metrics if k.startswith("verdicts.") and k not in counts}
        client.log_batch(run_id, params=new_params,
                         metrics=[Metric(k, float(v), now_ms, 0) for k, v in {**stale, **counts}.items()])
        if table.is_file():
            _replace_table(client, run_id, pd.read_csv(table), f"{name}.json")
        if rows is not None:
            _replace_table(client, run_id, rows, "verdicts.json")
        if figure.is_file():
            client.log_artifact(run_id, str(figure))
        client.set_tag(run_id, "summary_sha256", digest.hexdigest())
        done += 1
    return done


def _replace_table(client: MlflowClient, run_id: str, frame, name: str) -> None:
    """frame as the run's MLflow table <name> (what log_table writes, and the tag that makes the UI show it
    as a table), replacing one logged before: MlflowClient.log_table appends to an existing table instead."""
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    frame = frame.astype(object).where(frame.notna(), None)  # NaN as null: the UI reads the table as strict JSON
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": name, "type": "table"} not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged + [{"path": name, "type": "table"}]))


def _verdict_key(verdict: str) -> str:
    """'differ (higher)' -> 'differ_higher': a metric name that reads like the verdict."""
    return re.sub(r"\W+", "_", str(verdict)).strip("_") or "none"
