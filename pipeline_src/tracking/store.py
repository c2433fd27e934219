"""The MLflow store: where it is, its experiment and parent runs, the lock around it, and the bounded
retries (_attempt) every call to it goes through.

metrics.json is the record of a run; MLflow is a browsable mirror of it. Tracking therefore never
fails a job: after a bounded number of retries a run gets a `mlflow_pending` marker and
`runs.resync()` logs it later. The jobs: this module (the store), entities.py (a record as MLflow
params, metrics and tags), runs.py (finished runs, resync, a set's end), live.py (a job's live run),
audit.py (the audit run and the sets' summaries).

Open the UI: mlflow ui --backend-store-uri <tracking_uri(results_dir)> --host 127.0.0.1

Layout. One experiment, "beneficial-noise" ($MLFLOW_EXPERIMENT_NAME overrides, e.g. to keep two
studies apart on a shared server): the study compares sets (baseline vs noise methods), and one
experiment puts all their runs in one table. Each set has a parent run (tags pipeline_role=parent,
experiment_set=<set>); its runs carry `mlflow.parentRunId`. A parent is RUNNING from its creation
until its set has ended (runs.end_set, called once the set's runs are logged), and a live job of a set
that trains again reopens it, so children never run under a finished parent. Each child lists its
dataset as an MLflow dataset input (digest: the prepared data's version; source: its DVC hash).
The audit's verdicts are on one more run, tag pipeline_role=audit (audit.log_audit): its tables as MLflow
tables, the verdict counts as metrics. The default store is
`results_dir/mlflow.db` with artifacts under `results_dir/mlartifacts`, both absolute paths, so a
job's working directory (a Snakemake shadow or temp copy) cannot scatter them.

Concurrency. MLflow's SqlAlchemyStore creates the schema of a fresh database without any lock, so
processes opening a fresh sqlite store at once race (we measured 7 of 8 runs lost). Every client
here is opened under a file lock (filelock) on `<sqlite file>.lock` (`results_dir/.mlflow.lock`
for other stores), and init_store (run once, before any training job) creates schema, experiment
and parents under that lock. Later writes rely on sqlite's busy timeout (MLflow sets 20 s) plus our
bounded retries (tenacity).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pipeline_src.fileio import write_json
from pipeline_src.tracking.switch import is_server

EXPERIMENT_NAME = "beneficial-noise"
TRACKING_INFO = "tracking.json"

# The experiment's kind: training runs, not GenAI traces. MLflow 3 writes this tag when the kind is
# chosen in its UI, and UIs that read it open the experiment on its runs. MLflow 3.17's UI decides by its
# "GenAI / Model training" switch instead (kept per browser; ?workflowType=machine_learning in a link
# sets it): browse.ui_url() gives that link. docs/mlflow.md says both.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}

# Retry budget for transient errors: at most ~30 s of waiting, on top of sqlite's own 20 s busy
# timeout per statement. PIPELINE_MLFLOW_ATTEMPTS / PIPELINE_MLFLOW_BACKOFF_S or the keyword
# arguments change it.
DEFAULT_ATTEMPTS = 6
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 15.0

# MLflow's HTTP client retries 7 times with exponential backoff and a 120 s timeout, i.e. minutes
# per call. Our retry loop is the one mechanism, so while this module talks to a server MLflow's
# own retries are off and a request waits 10 s for its answer, unless the user has set these variables.
# A server that accepted a request and did not answer within that time is not asked again by the same
# process (_attempt): each try would cost a whole timeout, and a hung server answers no retry either.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_UNANSWERED: dict[str, Exception] = {}  # tracking URI -> why this process stopped asking it
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
_TRANSIENT_TEXT = ("database is locked", "database is busy", "connection refused", "max retries exceeded",
                   "connection reset", "connection aborted", "timed out", "temporarily unavailable")


def tracking_uri(results_dir) -> str:
    """$MLFLOW_TRACKING_URI if set, else an absolute sqlite store in results_dir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def init_store(results_dir, experiment_sets: list[str], params_hash: str | None, *,
               attempts: int | None = None, backoff_s: float | None = None) -> dict:
    """Create store, experiment and one parent run per set (reusing existing ones); write tracking.json.

    params_hash (the study-level hash of the params) is stamped on each parent; None leaves the tag
    alone. Parents of sets not named here stay in tracking.json while the store is the same. If the
    store stays unreachable, tracking.json gets an "error" and no parents, and a warning goes to
    stderr: training must not wait on tracking (log_run creates a missing parent itself, or leaves
    a pending marker for resync).
    """
    results_dir = Path(results_dir).resolve()
    info, exc = _attempt_or_warn(results_dir, lambda: _init_once(results_dir, experiment_sets, params_hash),
                                 attempts, backoff_s, f"MLflow store setup FAILED ({tracking_uri(results_dir)})",
                                 "Training results are still written to metrics.json; log them later with resync().")
    if exc is None:
        return info
    info = {"tracking_uri": tracking_uri(results_dir), "experiment_id": None, "parents": {}, "error": _reason(exc)}
    write_json(results_dir / TRACKING_INFO, info)
    return info


def _open_client(uri: str, results_dir: Path) -> MlflowClient:
    # Importing MLflow's database store takes ~1.5 s: do it before the lock, so parallel jobs do not
    # queue behind each other's imports. Opening it (which may create the schema) is locked.
    if not is_server(uri):
        with contextlib.suppress(ImportError):
            importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    with _store_lock(uri, results_dir):
        return MlflowClient(uri)


def _init_once(results_dir: Path, experiment_sets: list[str], params_hash: str | None) -> dict:
    uri = tracking_uri(results_dir)
    client = _open_client(uri, results_dir)
    with _store_lock(uri, results_dir):  # one process at a time decides whether a parent exists
        experiment_id = _ensure_experiment(client, results_dir, uri)
        old = _read_json(results_dir / TRACKING_INFO) or {}
        same_store = old.get("tracking_uri") == uri and old.get("experiment_id") == experiment_id
        parents = dict(old.get("parents", {})) if same_store else {}
        for name in experiment_sets:
            parents[name] = _ensure_parent(client, experiment_id, name, params_hash)
        info = {"tracking_uri": uri, "experiment_id": experiment_id, "experiment_name": _experiment_name(),
                "parents": parents}
        write_json(results_dir / TRACKING_INFO, info)
    return info


def _experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME


def _ensure_experiment(client: MlflowClient, results_dir: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(_experiment_name())
    if experiment is None:
        # A tracking server manages its own artifact store; a local or database store gets ours.
        location = None if is_server(uri) else (results_dir / "mlartifacts").as_uri()
        try:
            return client.create_experiment(_experiment_name(), artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException as exc:  # created meanwhile from another machine (shared server)
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(_experiment_name())
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    for key, value in EXPERIMENT_TAGS.items():  # one made before the tag, or by hand; a kind chosen by hand stays
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _find_parent(client: MlflowClient, experiment_set: str) -> tuple[str | None, str | None]:
    experiment = client.get_experiment_by_name(_experiment_name())
    if experiment is None or experiment.lifecycle_stage != "active":
        return None, None
    parent = _parent_run(client, experiment.experiment_id, experiment_set)
    return experiment.experiment_id, (parent.info.run_id if parent else None)


def _parent_run(client: MlflowClient, experiment_id: str, experiment_set: str):
    runs = client.search_runs([experiment_id], _filter(pipeline_role="parent", experiment_set=experiment_set),
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def _ensure_parent(client: MlflowClient, experiment_id: str, experiment_set: str, params_hash: str | None) -> str:
    parent = _parent_run(client, experiment_id, experiment_set)
    if parent:
        if params_hash and parent.data.tags.get("params_hash") != params_hash:
            client.set_tag(parent.info.run_id, "params_hash", params_hash)
        return parent.info.run_id
    tags = {"pipeline_role": "parent", "experiment_set": experiment_set, "mlflow.source.type": "JOB",
            "mlflow.source.name": "snakemake:init_tracking"}
    if params_hash:
        tags["params_hash"] = params_hash
    # RUNNING until its set ends (end_set): a finished parent with running children would misreport the set
    return client.create_run(experiment_id, tags=tags, run_name=experiment_set).info.run_id


def _filter(**tags: str) -> str:
    for value in tags.values():
        if "'" in value:
            raise ValueError(f"tag value {value!r} cannot contain a single quote")
    return " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


def _store_lock(uri: str, results_dir: Path) -> FileLock:
    """Exclusive across processes using the same sqlite file (else results_dir); released if a process dies."""
    sqlite = uri.startswith("sqlite:///")
    path = Path(uri.removeprefix("sqlite:///") + ".lock") if sqlite else results_dir / ".mlflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def _supersede(client: MlflowClient, found, run_id: str) -> None:
    """Soft-delete the other runs of this run key and params (restorable until `mlflow gc`)."""
    for old in found:
        if old.info.run_id != run_id:
            client.set_tag(old.info.run_id, "pipeline_superseded_by", run_id)
            client.delete_run(old.info.run_id)


@contextlib.contextmanager
def _http_defaults():
    added = [key for key in _HTTP_DEFAULTS if key not in os.environ]
    os.environ.update({key: _HTTP_DEFAULTS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class ServerTimeout(TimeoutError):
    """The tracking server accepted a request and sent no answer in time; this process asks it no more."""


def _attempt(results_dir: Path, action, attempts: int | None, backoff_s: float | None):
    """action() under _http_defaults, retried on transient errors: (its value, None), or (None, the last error).

    Never raises for tracking errors. A refused connection is retried (a server restarting comes back);
    a request that timed out is not, and later calls of this process to that server fail at once."""
    uri = tracking_uri(results_dir)
    if uri in _UNANSWERED:
        return None, _UNANSWERED[uri]
    attempts, backoff_s = _budget(attempts, backoff_s)

    def hung(exc: BaseException) -> bool:
        return is_server(uri) and _is_timeout(exc)

    try:
        with _http_defaults():
            wait_s = os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
            retry_if = lambda exc: _is_transient(exc) and not hung(exc)  # noqa: E731
            return _retrying(action, attempts, backoff_s, retry_if=retry_if), None
    except Exception as exc:  # noqa: BLE001 - tracking must never cost a result
        if hung(exc):
            exc = _UNANSWERED[uri] = ServerTimeout(
                f"the tracking server {uri} sent no answer within {wait_s} s (MLFLOW_HTTP_REQUEST_TIMEOUT); "
                f"this process asks it no more ({_reason(exc)[:200]})")
        return None, exc


def _attempt_or_warn(results_dir: Path, action, attempts: int | None, backoff_s: float | None, failed: str,
                     *details: str):
    """_attempt, and when it gives up a warning: the headline `failed: <the last error>`, then details."""
    value, exc = _attempt(results_dir, action, attempts, backoff_s)
    if exc is not None:
        _warn(f"{failed}: {_reason(exc)}", *details)
    return value, exc


def _budget(attempts: int | None, backoff_s: float | None) -> tuple[int, float]:
    if attempts is None:
        attempts = int(os.environ.get("PIPELINE_MLFLOW_ATTEMPTS", DEFAULT_ATTEMPTS))
    if backoff_s is None:
        backoff_s = float(os.environ.get("PIPELINE_MLFLOW_BACKOFF_S", DEFAULT_BACKOFF_S))
    return max(1, attempts), backoff_s


def _retrying(action, attempts: int, backoff_s: float, retry_if=None):
    """action(), retried on transient errors (or where retry_if says) with jittered exponential backoff;
    the last error is raised."""
    def say(state) -> None:
        print(f"MLflow: transient error, attempt {state.attempt_number}/{attempts}, retrying in "
              f"{state.upcoming_sleep:.1f} s: {_reason(state.outcome.exception())[:200]}", file=sys.stderr)

    retrying = Retrying(stop=stop_after_attempt(attempts), retry=retry_if_exception(retry_if or _is_transient),
                        wait=wait_random_exponential(multiplier=backoff_s, max=MAX_BACKOFF_S),
                        before_sleep=say, reraise=True)
    return retrying(action)


def _is_transient(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if getattr(exc, "error_code", None) in _TRANSIENT_CODES:
            return True
        if any(text in str(exc).lower() for text in _TRANSIENT_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_timeout(exc: BaseException | None) -> bool:
    """A request that got no answer in time (requests' and urllib3's timeouts, as MLflow words and wraps them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or type(exc).__name__ in ("ReadTimeout", "ConnectTimeout", "ReadTimeoutError",
                                                                  "ConnectTimeoutError", "Timeout"):
            return True
        if any(text in str(exc).lower() for text in ("timed out", "timeout exception")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _warn(headline: str, *details: str) -> None:
    bar = "!" * 78
    body = "".join(f"  {line}\n" for line in details)
    print(f"\n{bar}\nWARNING: {headline}\n{body}{bar}\n", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
