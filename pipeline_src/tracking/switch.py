"""Whether training jobs log to MLflow while they train (params `tracking.live`).

The switch travels to the jobs in the environment, not in a rule's params, so turning it on or off
reruns nothing. MLflow-free, so the DAG build can import it."""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# set by the workflow for its jobs: the results folder whose tracking.json indexes the store
LIVE_ENV = "PIPELINE_LIVE_TRACKING"
SERVER_SCHEMES = ("http", "https", "databricks")


def is_server(uri: str) -> bool:
    return uri.split(":", 1)[0] in SERVER_SCHEMES


def switch_on(live: bool, results_dir: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set the jobs' environment for params tracking.live; a one-line note when it cannot apply."""
    environ.pop(LIVE_ENV, None)
    if not live:
        return None
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if not is_server(uri):
        return ("note: tracking.live needs MLFLOW_TRACKING_URI to name a tracking server (http://host:port); "
                f"{'it is ' + repr(uri) if uri else 'it is not set'}, so each set's runs are logged when the set "
                "has finished")
    environ[LIVE_ENV] = str(Path(results_dir).resolve())
    return None


def live_store(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """The results folder a training job logs live to, or None (logged later by track_set)."""
    where = environ.get(LIVE_ENV)
    return Path(where) if where and is_server(environ.get("MLFLOW_TRACKING_URI", "")) else None
