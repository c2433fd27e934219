"""The MLflow UI on a store: a results folder's own, or a committed report's runs loaded into a local one.

`python -m pipeline_src ui --report reports/fashion-mnist` (`make ui REPORT=reports/fashion-mnist`) logs
the report's runs (runs/<set>/<run>/metrics.json), its audit and each set's summary into a sqlite store
of its own, then serves the UI on 127.0.0.1 and prints the link that opens the experiment on its runs.
A report's store is always local: $MLFLOW_TRACKING_URI (a shared server) is not used for it.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from pipeline_src.tracking.audit import log_audit, log_set_summaries
from pipeline_src.tracking.runs import _log_once, end_set
from pipeline_src.tracking.store import _attempt, _experiment_name, _reason, init_store, tracking_uri

# the UI's "GenAI / Model training" switch, set in the link: MLflow 3.17 opens an experiment on its
# traces, or on its runs, by that switch, whatever the experiment's kind tag says
RUNS_VIEW = "workflowType=machine_learning"


def ui_url(experiment_id: str | None, port: int, host: str = "127.0.0.1") -> str:
    """The UI's page of the experiment's training runs (the experiment list while there is none)."""
    base = f"http://{host}:{port}/#/experiments"
    return f"{base}/{experiment_id}/runs?{RUNS_VIEW}" if experiment_id else f"{base}?{RUNS_VIEW}"


@contextlib.contextmanager
def local_store():
    """track's functions use $MLFLOW_TRACKING_URI where set; here the store is the folder's own sqlite file."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def load_report(report, store) -> tuple[str, int, int]:
    """Log a report folder's runs, audit and set summaries into the sqlite store in store/; return
    (experiment id, runs in the report, runs newly logged). A run already there with the same content is
    reused, so loading a report again adds nothing. Raises on any failure: there is no pending marker to
    leave in a committed report."""
    report, store = Path(report), Path(store).resolve()
    paths = sorted(report.glob("runs/*/*/metrics.json"))
    if not paths:
        raise FileNotFoundError(f"{report} has no runs/<set>/<run>/metrics.json: not a report folder")
    print(f"loading the {len(paths)} runs of {report} into {store} ...", file=sys.stderr, flush=True)
    with local_store():
        sets = sorted({path.parent.parent.name for path in paths})
        info = init_store(store, sets, None, attempts=1)
        if info.get("error"):
            raise RuntimeError(f"MLflow store {info['tracking_uri']}: {info['error']}")
        client = MlflowClient(info["tracking_uri"])
        before = len(client.search_runs([info["experiment_id"]], "tags.pipeline_role = 'child'", max_results=50000))
        now_ms = int(time.time() * 1000)
        for number, path in enumerate(paths, 1):
            metrics = json.loads(path.read_text())
            _, exc = _attempt(store, lambda: _log_once(metrics, path.parent, store, now_ms), 1, 0.0)
            if exc is not None:
                raise RuntimeError(f"{path}: not logged to MLflow ({_reason(exc)})") from exc
            if number % 50 == 0:
                print(f"  {number}/{len(paths)} runs", file=sys.stderr, flush=True)
        for name in sets:
            end_set(store, name, attempts=1)
        tables = [report / name for name in ("audit.csv", "effects_cells.csv") if (report / name).is_file()]
        if tables:
            files = [path for path in (report / "audit.md", report / "figures" / "audit.png") if path.is_file()]
            log_audit(store, tables, files, attempts=1)
        log_set_summaries(store, report, attempts=1)
        after = len(client.search_runs([info["experiment_id"]], "tags.pipeline_role = 'child'", max_results=50000))
    return info["experiment_id"], len(paths), after - before


def serve(store, port: int) -> None:
    """Replace this process with `mlflow ui` on the store's sqlite file, on 127.0.0.1 only."""
    store = Path(store).resolve()
    with local_store():
        uri = tracking_uri(store)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def experiment_id(store) -> str | None:
    """The experiment's id in the store's sqlite file, or None (no store, or no experiment yet)."""
    store = Path(store).resolve()
    if not (store / "mlflow.db").is_file():
        return None
    with local_store():
        experiment = MlflowClient(tracking_uri(store)).get_experiment_by_name(_experiment_name())
    return experiment.experiment_id if experiment else None
