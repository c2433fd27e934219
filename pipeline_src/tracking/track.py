"""MLflow tracking: one experiment, one parent run per experiment set, one child run per training run.

metrics.json is the record of a run; MLflow is a browsable mirror of it. Tracking therefore never
fails a job: after a bounded number of retries a run gets a `mlflow_pending` marker and `resync()`
logs it later.

Open the UI: mlflow ui --backend-store-uri <tracking_uri(results_dir)> --host 127.0.0.1

Layout. One experiment, "beneficial-noise" ($MLFLOW_EXPERIMENT_NAME overrides, e.g. to keep two
studies apart on a shared server): the study compares sets (baseline vs noise methods), and one
experiment puts all their runs in one table. Each set has a parent run (tags pipeline_role=parent,
experiment_set=<set>); its runs carry `mlflow.parentRunId`. A parent is RUNNING from its creation
until its set has ended (end_set, called once the set's runs are logged), and a live job of a set
that trains again reopens it, so children never run under a finished parent. Each child lists its
dataset as an MLflow dataset input (digest: the prepared data's version; source: its DVC hash).
The audit's verdicts are on one more run, tag pipeline_role=audit (log_audit): its tables as MLflow
tables, the verdict counts as metrics. The default store is
`results_dir/mlflow.db` with artifacts under `results_dir/mlartifacts`, both absolute paths, so a
job's working directory (a Snakemake shadow or temp copy) cannot scatter them.

Identity of a child run: tags run_key = "<experiment_set>/<run_id>" and params_hash. When an
active run with the same key and hash exists:
  - same metrics_sha256 (metrics.json content without mlflow_run_id) and FINISHED: it is reused and
    nothing is logged (a retry, or a resync of a run that was in fact logged);
  - otherwise (the same config rerun with new results, or an attempt that died half-way): a fresh
    run is logged and the old one soft-deleted (tag pipeline_superseded_by; restorable until
    `mlflow gc`). So the store holds one live run per (run_key, params_hash); a changed config
    (new params_hash) is a new run and the old one stays.

Concurrency. MLflow's SqlAlchemyStore creates the schema of a fresh database without any lock, so
processes opening a fresh sqlite store at once race (we measured 7 of 8 runs lost). Every client
here is opened under a file lock (filelock) on `<sqlite file>.lock` (`results_dir/.mlflow.lock`
for other stores), and init_store (run once, before any training job) creates schema, experiment
and parents under that lock. Later writes rely on sqlite's busy timeout (MLflow sets 20 s) plus our
bounded retries (tenacity).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pipeline_src.provenance import git_state, write_atomic, write_json
from pipeline_src.tracking.switch import is_server

EXPERIMENT_NAME = "beneficial-noise"
PENDING_MARKER = "mlflow_pending"
LIVE_MARKER = "mlflow_live_run"  # the id of a job's live run, so a job resumed after a kill reopens it
TRACKING_INFO = "tracking.json"
AUDIT_RUN_NAME = "audit"
# The experiment's kind: training runs, not GenAI traces. MLflow 3 writes this tag when the kind is
# chosen in its UI, and UIs that read it open the experiment on its runs. MLflow 3.17's UI decides by its
# "GenAI / Model training" switch instead (kept per browser; ?workflowType=machine_learning in a link
# sets it): browse.ui_url() gives that link. docs/mlflow.md says both.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
# MLflow's dataset table keeps digests of at most 36 characters (String(36) in its SQL schema); the
# data version is a 64-character sha256, whole in the dataset's profile. 36 hex digits still tell
# any two data versions apart.
DATASET_DIGEST_CHARS = 36

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
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow names allow alphanumerics, _ - . / : and space


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
    info, exc = _attempt(results_dir, lambda: _init_once(results_dir, experiment_sets, params_hash),
                         attempts, backoff_s)
    if exc is None:
        return info
    _warn(f"MLflow store setup FAILED ({tracking_uri(results_dir)}): {_reason(exc)}",
          "Training results are still written to metrics.json; log them later with resync().")
    info = {"tracking_uri": tracking_uri(results_dir), "experiment_id": None, "parents": {}, "error": _reason(exc)}
    write_json(results_dir / TRACKING_INFO, info)
    return info


def log_run(metrics: dict, run_dir, results_dir, *, attempts: int | None = None,
            backoff_s: float | None = None) -> str | None:
    """Log one finished run as a child of its set's parent; return the MLflow run id, or None.

    None means the store stayed unreachable (or refused the run): a warning went to stderr and
    run_dir/mlflow_pending was written for resync(). Never raises for tracking errors. It does not
    edit metrics.json: the caller stores the returned id (resync does so for the runs it logs).
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
    """Log every run under results_dir/runs/*/* that is pending or has no mlflow_run_id.

    Returns (synced, skipped). Synced runs get their MLflow id written into metrics.json and lose
    their marker; skipped counts runs already synced plus any that failed again (those keep their
    marker and were warned about). A run already in the store is found by run_key + params_hash,
    not logged twice.
    """
    results_dir = Path(results_dir).resolve()
    synced = skipped = 0
    for path in sorted(results_dir.glob("runs/*/*/metrics.json")):
        metrics = _read_json(path)
        if metrics is None:
            print(f"WARNING: resync skipped unreadable {path}", file=sys.stderr)
            skipped += 1
            continue
        if metrics.get("mlflow_run_id") and not (path.parent / PENDING_MARKER).exists():
            skipped += 1
            continue
        run_id = log_run(metrics, path.parent, results_dir, attempts=attempts, backoff_s=backoff_s)
        if run_id is None:
            skipped += 1
            continue
        write_json(path, {**metrics, "mlflow_run_id": run_id})
        synced += 1
    return synced, skipped


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

    ended, exc = _attempt(results_dir, once, attempts, backoff_s)
    if exc is not None:
        _warn(f"MLflow: could not end the parent run of set {experiment_set}: {_reason(exc)}",
              "Its runs are logged; the parent stays RUNNING until the set is tracked again.")
        return False
    if not ended:
        print(f"MLflow: set {experiment_set} has no parent run in {tracking_uri(results_dir)}; nothing to end",
              file=sys.stderr)
    return ended


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
    run_id, exc = _attempt(results_dir, lambda: _audit_once(results_dir, tables, files), attempts, backoff_s)
    if exc is not None:
        _warn(f"MLflow logging of the audit FAILED ({tracking_uri(results_dir)}): {_reason(exc)}",
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
    done, exc = _attempt(results_dir, lambda: _summaries_once(results_dir, folder), attempts, backoff_s)
    if exc is not None:
        _warn(f"MLflow: the sets' summaries were NOT logged ({tracking_uri(results_dir)}): {_reason(exc)}",
              f"They are in {folder}; rerun the tracking step to log them.")
    return done or 0


class LiveRun:
    """A training job's own MLflow run, logged while it trains (params tracking.live, a server store).

    start() creates it under the set's parent with status RUNNING (a job resumed after a kill reopens
    the run named in run_dir/mlflow_live_run), sets the parent RUNNING if its set had ended, and starts
    MLflow's system metrics monitor (CPU, memory, disk, network every 10 s; GPUs with pynvml installed)
    on the run; epoch() logs each epoch's values at step=epoch; pause() ends the train job's part (the
    evaluate job starts the run again and finishes it); finish() stops the monitor and
    completes the run (params, final values, dataset input, metrics.json, FINISHED) and returns its id;
    fail() marks it FAILED. Each call is a single try, so a slow or dead server cannot stall training: the
    first error ends live logging for the job with a warning, and finish() then hands the run to
    log_run (retries, then the pending marker for resync). log_run supersedes the partial live run,
    so the store never holds two live runs of one run.
    """

    def __init__(self, results_dir, run_dir, head: dict):
        """head: the run's identity as metrics.json will give it (run_id, experiment_set, params_hash, ...)."""
        self.results_dir, self.run_dir, self.head = Path(results_dir).resolve(), Path(run_dir), head
        self.run_key = f"{head['experiment_set']}/{head['run_id']}"
        self.client = self.run_id = self.parent_id = self.monitor = None
        self.broken = False
        # MLflow's own HTTP retries stay off for the job's whole live run, not only inside our calls:
        # the system metrics monitor talks to the server from its own thread, and with MLflow's
        # retries (minutes per call) a dead server would stall the end of training on its join.
        self._http = contextlib.ExitStack()

    def start(self) -> None:
        self._http.enter_context(_http_defaults())
        self._try("start", self._start)

    def epoch(self, entry: dict) -> None:
        if self.run_id:
            self._try(f"epoch {entry['epoch']}", lambda: self.client.log_batch(
                self.run_id, metrics=_epoch_points(entry, int(time.time() * 1000))))

    def finish(self, metrics: dict) -> str | None:
        self._stop_monitor()
        run_id = self._try("finish", lambda: self._finish(metrics)) if self.run_id else None
        self._http.close()
        if run_id is None:
            run_id = log_run(metrics, self.run_dir, self.results_dir)
        (self.run_dir / LIVE_MARKER).unlink(missing_ok=True)
        return run_id

    def pause(self) -> None:
        """Training is done and its evaluate job finishes the run: stop the monitor, leave it RUNNING
        (start() in that job reopens it from run_dir/mlflow_live_run)."""
        self._stop_monitor()
        self._http.close()

    def fail(self) -> None:
        self._stop_monitor()
        if self.run_id:
            self._try("fail", lambda: self.client.set_terminated(self.run_id, "FAILED"))
        self._http.close()

    def _start_monitor(self, resumed: bool) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as err:  # psutil missing: the run is logged, without system metrics
            print(f"MLflow: no system metrics for {self.run_key} ({err})", file=sys.stderr)
            return
        # resume_logging continues the step count of a run reopened after a kill
        self.monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed,
                                            tracking_uri=tracking_uri(self.results_dir))
        self.monitor.start()

    def _stop_monitor(self) -> None:
        """Stop the monitor before the run's status changes (it logs its last samples on the way out)."""
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            with contextlib.suppress(Exception):  # its own errors are logged by MLflow; training is done
                monitor.finish()

    def _try(self, what: str, action):
        if self.broken:
            return None
        value, exc = _attempt(self.results_dir, action, 1, 0.0)
        if exc is not None:
            self.broken = True
            _warn(f"MLflow live logging stopped for {self.run_key} at {what}: {_reason(exc)}",
                  "Training goes on; the finished run is logged from metrics.json, or marked for resync.")
        return value

    def _start(self) -> None:
        self.client = _open_client(tracking_uri(self.results_dir), self.results_dir)
        experiment_id, self.parent_id = _find_parent(self.client, self.head["experiment_set"])
        if self.parent_id is None:
            info = _init_once(self.results_dir, [self.head["experiment_set"]], None)
            experiment_id, self.parent_id = info["experiment_id"], info["parents"][self.head["experiment_set"]]
        if self.client.get_run(self.parent_id).info.status != "RUNNING":  # the set trains again
            self.client.update_run(self.parent_id, status="RUNNING")
        marker = self.run_dir / LIVE_MARKER
        if marker.is_file():
            with contextlib.suppress(MlflowException):
                earlier = self.client.get_run(marker.read_text().strip())
                if earlier.info.lifecycle_stage == "active":
                    self.client.update_run(earlier.info.run_id, status="RUNNING")
                    self.run_id = earlier.info.run_id
                    self._start_monitor(resumed=True)
                    return
        self.run_id = self.client.create_run(experiment_id, run_name=self.head["run_id"],
                                             tags=_run_tags(self.head, self.run_key, self.parent_id, None)).info.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, self.run_id + "\n")
        self._start_monitor(resumed=False)

    def _finish(self, metrics: dict) -> str:
        client, now_ms = self.client, int(time.time() * 1000)
        logged = {m.step for m in client.get_metric_history(self.run_id, "train_loss")}
        missed = [point for entry in metrics.get("history") or [] if int(entry["epoch"]) not in logged
                  for point in _epoch_points(entry, now_ms)]  # epochs a kill or resume skipped
        tags = _run_tags(metrics, self.run_key, self.parent_id, _content_hash(metrics))
        client.log_batch(self.run_id, params=_params(metrics), metrics=missed + _final_points(metrics, now_ms),
                         tags=[RunTag(key, value) for key, value in tags.items()])
        _log_dataset(client, self.run_id, metrics, self.results_dir)
        _log_files(client, self.run_id, metrics, self.run_dir)
        found = client.search_runs([client.get_run(self.run_id).info.experiment_id],
                                   _filter(run_key=self.run_key, params_hash=metrics["params_hash"]))
        _supersede(client, found, self.run_id)
        client.set_terminated(self.run_id, "FINISHED", end_time=now_ms)
        return self.run_id


# --- one attempt ---------------------------------------------------------------------------------

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


def _log_dataset(client: MlflowClient, run_id: str, metrics: dict, results_dir: Path) -> None:
    dataset = _dataset_input(metrics)
    if dataset is not None:
        # MLflow looks the dataset up and inserts it if absent, in one transaction that does not lock
        # the table first: two jobs giving a new dataset as input at once both insert it, and the
        # second fails on its unique key. The store lock makes that step one job at a time.
        with _store_lock(tracking_uri(results_dir), results_dir):
            client.log_inputs(run_id, datasets=[dataset])


def _params(metrics: dict) -> list[Param]:
    # the run config, and what the built method resolved beyond it (format 2; format 1 kept it in params)
    logged = {**(metrics.get("params") or {}), **{k: metrics[k] for k in ("method_runtime",) if k in metrics}}
    return [Param(_name(k), _text(v, MAX_PARAM_VAL_LENGTH)) for k, v in _flatten(logged)]


def _supersede(client: MlflowClient, found, run_id: str) -> None:
    """Soft-delete the other runs of this run key and params (restorable until `mlflow gc`)."""
    for old in found:
        if old.info.run_id != run_id:
            client.set_tag(old.info.run_id, "pipeline_superseded_by", run_id)
            client.delete_run(old.info.run_id)


def _log_files(client: MlflowClient, run_id: str, metrics: dict, run_dir: Path) -> None:
    client.log_dict(run_id, metrics, "metrics.json")  # exactly what was logged and hashed
    for extra in [run_dir / "train.log", *sorted(run_dir.glob("*.png"))]:
        if extra.is_file():
            client.log_artifact(run_id, str(extra))


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


# --- store helpers -------------------------------------------------------------------------------

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


@contextlib.contextmanager
def _http_defaults():
    added = [key for key in _HTTP_DEFAULTS if key not in os.environ]
    os.environ.update({key: _HTTP_DEFAULTS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# --- retries and warnings ------------------------------------------------------------------------

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
          "Log it later with pipeline_src.tracking.track.resync(<results_dir>).")


def _warn(headline: str, *details: str) -> None:
    bar = "!" * 78
    body = "".join(f"  {line}\n" for line in details)
    print(f"\n{bar}\nWARNING: {headline}\n{body}{bar}\n", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


# --- values --------------------------------------------------------------------------------------

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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


