"""A training job's live MLflow run (params tracking.live with a tracking server), spanning its train
and evaluate jobs."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from pipeline_src.fileio import write_atomic
from pipeline_src.tracking.entities import _content_hash, _epoch_points, _final_points, _params, _run_tags
from pipeline_src.tracking.runs import _log_dataset, _log_files, log_run
from pipeline_src.tracking.store import (_attempt, _filter, _find_parent, _http_defaults, _init_once, _open_client,
                                         _reason, _supersede, _warn, tracking_uri)

LIVE_MARKER = "mlflow_live_run"  # the id of a job's live run, so a job resumed after a kill reopens it


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
