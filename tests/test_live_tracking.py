"""Live tracking (params tracking.live) against a real `mlflow server` on 127.0.0.1: a training job's
epochs and system metrics appear while it trains under a RUNNING parent, a server killed mid-run loses
nothing once resync has run, and the server's REST API lists a set's dataset inputs and the audit table."""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline_src.tracking.entities import _content_hash
from pipeline_src.tracking.live import LIVE_MARKER
from pipeline_src.tracking.ids import read_set_ids, set_ids_path
from pipeline_src.tracking.runs import PENDING_MARKER, log_run, resync
from pipeline_src.tracking.store import EXPERIMENT_NAME
from pipeline_src.spec.config import REPO_ROOT, RunConfig
from pipeline_src.tracking.switch import LIVE_ENV, live_store, switch_on

from helpers import make_run  # the run table's run; digits_dir comes from conftest.py

EPOCHS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, port: int):
    """A real tracking server on a sqlite store in folder; killed (SIGKILL) on exit unless already dead."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / f"server-{time.time_ns()}.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                               "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, (folder / log.name).read_text()[-2000:]
        assert time.time() < deadline, "mlflow server did not come up in 120 s"
        time.sleep(0.5)
    try:
        yield server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _run() -> RunConfig:
    # a wide DNN3: about half a second per epoch, so there is time to look while it trains
    run = make_run({"label": "live", "name": "baseline"}, epochs=EPOCHS, hidden=2048, experiment_set="live",
                   optimizer={"schedule": "none"})
    assert run.run_id == "digits-dnn3-live-s0"  # the run key the checks below search MLflow for
    return run


def _start_job(cfg: RunConfig, data: Path, run_dir: Path, results: Path, uri: str,
               attempts: int | None = 1) -> subprocess.Popen:
    # system metrics every 0.2 s instead of 10 s: the job trains for a few seconds only; attempts None: the
    # retry budget as shipped
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_HTTP_", "PIPELINE_MLFLOW_"))}
    env.update({"MLFLOW_TRACKING_URI": uri, LIVE_ENV: str(results), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2",
                **({"PIPELINE_MLFLOW_ATTEMPTS": str(attempts)} if attempts else {})})
    # the DAG's two jobs: train opens the live run and leaves it RUNNING, evaluate finishes it
    run = [shlex.quote(a) for a in ("--run-json", cfg.to_json(), "--data", str(data), "--model", str(run_dir / "model.pt"))]
    cli = f"{shlex.quote(sys.executable)} -m pipeline_src"
    return subprocess.Popen(["bash", "-c", f"{cli} train {' '.join(run)} && {cli} evaluate {' '.join(run)} "
                             f"--metrics {shlex.quote(str(run_dir / 'metrics.json'))}"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _live_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)  # None until the job creates it
    return client.search_runs([experiment.experiment_id], "tags.run_key = 'live/digits-dnn3-live-s0'") if experiment else []


def _first_epoch_while_running(job: subprocess.Popen, client: MlflowClient):
    """Poll the server until the job's run shows an epoch; the job must still be training then."""
    deadline = time.time() + 180
    while time.time() < deadline:
        assert job.poll() is None, "the job ended before any epoch appeared in MLflow:\n" + job.stdout.read()
        runs = _live_runs(client)
        if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
            return runs[0]
        time.sleep(0.1)
    raise AssertionError("no epoch appeared in MLflow within 180 s")


def test_switch_needs_a_server_and_stays_out_of_the_rules(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert switch_on(True, str(tmp_path), env) is None and live_store(env) == tmp_path.resolve()
    assert switch_on(False, str(tmp_path), env) is None and LIVE_ENV not in env
    local = {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    note = switch_on(True, str(tmp_path), local)
    assert "needs MLFLOW_TRACKING_URI to name a tracking server" in note and "\n" not in note
    assert live_store(local) is None


@pytest.mark.slow
def test_epochs_appear_while_the_job_trains_and_the_run_finishes(digits_dir, tmp_path):
    port, results = _free_port(), tmp_path / "results"
    uri = f"http://127.0.0.1:{port}"
    with mlflow_server(tmp_path / "server", port):
        client = MlflowClient(uri)
        run_dir = results / "runs" / "live" / "digits-dnn3-live-s0"
        job = _start_job(_run(), digits_dir, run_dir, results, uri)
        seen = _first_epoch_while_running(job, client)
        assert seen.info.status == "RUNNING"
        assert seen.data.tags["mlflow.parentRunId"] and seen.data.tags["params_hash"] == _run().params_hash()
        assert client.get_run(seen.data.tags["mlflow.parentRunId"]).info.status == "RUNNING"
        assert job.wait(timeout=300) == 0, job.stdout.read()

        metrics = json.loads((run_dir / "metrics.json").read_text())
        [run] = _live_runs(client)
        assert run.info.run_id == seen.info.run_id
        assert f"digits-dnn3-live-s0: MLflow run {run.info.run_id}" in job.stdout.read()
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
        assert run.data.metrics["test_top1"] == pytest.approx(metrics["test_top1"])
        assert run.data.tags["metrics_sha256"] == _content_hash(metrics)
        assert "system/cpu_utilization_percentage" in run.data.metrics
        assert "system/system_memory_usage_megabytes" in run.data.metrics
        assert not (run_dir / LIVE_MARKER).exists()
        # the set's batched logging afterwards finds the run instead of logging it twice
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            assert log_run(metrics, run_dir, results) == run.info.run_id
        assert len(_live_runs(client)) == 1


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing_after_resync(digits_dir, tmp_path):
    port, results = _free_port(), tmp_path / "results"
    uri = f"http://127.0.0.1:{port}"
    run_dir = results / "runs" / "live" / "digits-dnn3-live-s0"
    with mlflow_server(tmp_path / "server", port) as server:
        job = _start_job(_run(), digits_dir, run_dir, results, uri)
        partial = _first_epoch_while_running(job, MlflowClient(uri))
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        assert job.wait(timeout=300) == 0, "training must go on without the server"
        output = job.stdout.read()
    assert "MLflow live logging stopped" in output
    assert "digits-dnn3-live-s0: NOT logged to MLflow" in output and (run_dir / PENDING_MARKER).exists()
    record = (run_dir / "metrics.json").read_bytes()
    metrics = json.loads(record)

    with mlflow_server(tmp_path / "server", port), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        assert resync(results) == (1, 0)
        client = MlflowClient(uri)
        [run] = _live_runs(client)  # one active run: the partial live run is superseded, not duplicated
        assert run.info.run_id != partial.info.run_id and run.info.status == "FINISHED"
        assert client.get_run(partial.info.run_id).info.lifecycle_stage == "deleted"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
        assert run.data.metrics["test_top1"] == pytest.approx(metrics["test_top1"])
        assert read_set_ids(set_ids_path(results, "live")) == {"digits-dnn3-live-s0": run.info.run_id}
        assert (run_dir / "metrics.json").read_bytes() == record  # the id went to the set's tracking file


@pytest.mark.slow
def test_a_live_job_against_a_server_that_never_answers_loses_seconds_not_minutes(digits_dir, tmp_path):
    """Live tracking with the retry budget and HTTP settings as shipped: the train job's start and the evaluate
    job's start each wait one 10 s timeout, the finished run goes straight to its pending marker (b9881d5: 20 s
    per start, then six tries of 20 s for the run itself), and the result is intact."""
    from tracking_fakes import silent_server

    results, run_dir = tmp_path / "results", tmp_path / "results" / "runs" / "live" / "digits-dnn3-live-s0"
    with silent_server() as uri:
        started = time.monotonic()
        job = _start_job(_run(), digits_dir, run_dir, results, uri, attempts=None)
        assert job.wait(timeout=400) == 0, job.stdout.read()
        elapsed = time.monotonic() - started
        output = job.stdout.read()
    # b9881d5 spent 3 to 7 minutes per run on tracking alone; the tiny job itself takes 30 to 130 s on a
    # loaded 2-core machine, so the bound tells the two apart without timing the job
    assert elapsed < 240, f"{elapsed:.0f} s:\n{output[-3000:]}"
    assert output.count("sent no answer within 10 s") >= 2  # train's start, evaluate's start
    assert "digits-dnn3-live-s0: NOT logged to MLflow" in output and (run_dir / "metrics.json").exists()
    assert "no answer in time, not retried" in (run_dir / PENDING_MARKER).read_text()


def _rest(uri: str, path: str, body: dict | None = None) -> dict:
    """One call of the tracking server's REST API (GET, or POST with a JSON body)."""
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_rest_api_lists_a_sets_dataset_inputs_and_the_audit_table(tmp_path):
    """The pipeline's own commands (track-init, track-set, track-audit) against a server; then only
    what the UI would read: the server's REST API."""
    from tracking_fakes import make_metrics, write_audit, write_run

    port, results = _free_port(), tmp_path / "results"
    uri = f"http://127.0.0.1:{port}"
    paths = []
    for seed in (0, 1):
        metrics = make_metrics(seed=seed)
        metrics["provenance"] = {**metrics["provenance"], "data_version": "5e" * 32, "dvc_hash": "dd" * 16 + ".dir"}
        paths.append(write_run(results, metrics) / "metrics.json")
    audit, cells, markdown = write_audit(results, ["supported", "not run"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_MLFLOW_ATTEMPTS": "1"}

    def command(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "pipeline_src", *args, "--results", str(results)], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "WARNING" not in done.stderr, done.stdout + done.stderr

    with mlflow_server(tmp_path / "server", port):
        command("track-init", "--sets", "baseline")
        command("track-set", "--set", "baseline", "--out", str(results / "tracking" / "baseline.json"),
                *map(str, paths))
        command("track-audit", "--tables", str(audit), str(cells), "--files", str(markdown),
                "--out", str(results / "tracking_audit.json"))

        experiment = _rest(uri, f"experiments/get-by-name?experiment_name={EXPERIMENT_NAME}")["experiment"]

        def search(query: str) -> list[dict]:
            return _rest(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": query})["runs"]

        [parent] = search("tags.pipeline_role = 'parent' and tags.experiment_set = 'baseline'")
        assert parent["info"]["status"] == "FINISHED"  # ended by track-set, once the set's runs were in
        children = search("tags.pipeline_role = 'child' and tags.experiment_set = 'baseline'")
        assert len(children) == 2
        for child in children:
            [dataset_input] = child["inputs"]["dataset_inputs"]
            dataset = dataset_input["dataset"]
            assert (dataset["name"], dataset["digest"], dataset["source_type"]) == ("digits", ("5e" * 32)[:36], "dvc")
            assert json.loads(dataset["source"])["dvc_hash"] == "dd" * 16 + ".dir"

        [audit_run] = search("tags.pipeline_role = 'audit'")
        run_id = audit_run["info"]["run_id"]
        listed = {f["path"] for f in _rest(uri, f"artifacts/list?run_id={run_id}")["files"]}
        assert {"audit.json", "effects_cells.json", "audit.csv", "audit.md"} <= listed
        logged = json.loads({t["key"]: t["value"] for t in audit_run["data"]["tags"]}["mlflow.loggedArtifacts"])
        assert {"path": "audit.json", "type": "table"} in logged  # what makes the UI show it as a table
        with urllib.request.urlopen(f"{uri}/get-artifact?path=audit.json&run_uuid={run_id}", timeout=30) as reply:
            table = json.loads(reply.read())
        assert [row[1] for row in table["data"]] == ["supported", "not run"]
        assert {m["key"]: m["value"] for m in audit_run["data"]["metrics"]} == {"verdicts.supported": 1.0,
                                                                               "verdicts.not_run": 1.0}


@pytest.mark.slow
def test_track_set_against_a_server_that_never_answers_takes_seconds(tmp_path):
    """The rule's own command with MLflow's settings as we leave them (a 10 s request timeout): a server that
    accepts and never answers costs one timeout for the whole set, not minutes per run (b9881d5: 6 tries of
    20 s per run, then the set's end); both runs are pending, and track-resync logs them once it can."""
    from tracking_fakes import make_metrics, silent_server, write_run

    results = tmp_path / "results"
    paths = [write_run(results, make_metrics(seed=seed)) / "metrics.json" for seed in (0, 1)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_MLFLOW_"))}
    with silent_server() as uri:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pipeline_src", "track-set", "--results", str(results),
                               "--set", "baseline", "--out", str(results / "tracking" / "baseline.json"),
                               *map(str, paths)], cwd=REPO_ROOT, env={**env, "MLFLOW_TRACKING_URI": uri},
                              capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < 45, f"{elapsed:.0f} s"  # one 10 s timeout, and the start-up of python, torch-free
    assert "NOT logged (run track-resync later): digits-dnn3-baseline-s0 digits-dnn3-baseline-s1" in done.stdout
    assert "sent no answer within 10 s" in done.stderr
    assert all((path.parent / PENDING_MARKER).is_file() for path in paths)

    resynced = subprocess.run([sys.executable, "-m", "pipeline_src", "track-resync", "--results", str(results)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "resynced 2 runs" in resynced.stdout, resynced.stdout + resynced.stderr
    assert not any((path.parent / PENDING_MARKER).exists() for path in paths)


@pytest.mark.slow
def test_ui_on_the_committed_report_serves_its_runs_on_an_experiment_of_training_runs(tmp_path):
    """`make ui REPORT=reports/fashion-mnist` (`python -m pipeline_src ui --report ...`): the committed report's
    runs loaded into a store of their own and served on 127.0.0.1; only what the UI reads is checked: the
    server's REST API lists every run of the report, under an experiment of kind "training runs", with each
    set's summary on its parent, and the printed link opens the runs view."""
    report = REPO_ROOT / "reports" / "fashion-mnist"
    expected = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in report.glob("runs/*/*/metrics.json"))
    assert len(expected) > 100
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log_path = tmp_path / "ui.log"
    with open(log_path, "w") as log:
        # `timeout`: the server stops itself after 10 minutes, even if this test is killed first
        ui = subprocess.Popen(["timeout", "600", sys.executable, "-m", "pipeline_src", "ui", "--report", str(report),
                               "--store", str(tmp_path / "store"), "--port", str(port)],
                              cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 540  # loading 215 runs takes about a minute and a half on a busy machine
        while True:
            assert ui.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the UI did not come up in 540 s:\n" + log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(1)

        experiment = _rest(uri, f"experiments/get-by-name?experiment_name={EXPERIMENT_NAME}")["experiment"]
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        assert f"{uri}/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning" in \
            log_path.read_text()

        def search(query: str) -> list[dict]:
            found, token = [], None
            while True:
                page = _rest(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": query,
                                                  "max_results": 1000, **({"page_token": token} if token else {})})
                found += page.get("runs", [])
                token = page.get("next_page_token")
                if not token:
                    return found

        children = search("tags.pipeline_role = 'child'")
        assert sorted({t["key"]: t["value"] for t in run["data"]["tags"]}["run_key"] for run in children) == expected
        parents = {run["info"]["run_name"]: run for run in search("tags.pipeline_role = 'parent'")}
        assert sorted(parents) == sorted({key.split("/")[0] for key in expected})
        assert {m["key"]: m["value"] for m in parents["vpn_joint"]["data"]["metrics"]}["audit_rows"] > 0
        for name, parent in parents.items():
            metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
            assert metrics["runs"] == sum(key.startswith(f"{name}/") for key in expected)
            # the audit rows citing the set's runs, by verdict (test_batch_study_cnn_shift: no claim cites it)
            assert metrics["audit_rows"] == sum(v for k, v in metrics.items() if k.startswith("verdicts.")), name
            assert {p["key"] for p in parent["data"]["params"]} >= {"set_kind", "datasets", "models", "methods"}
            logged = json.loads({t["key"]: t["value"] for t in parent["data"]["tags"]}["mlflow.loggedArtifacts"])
            assert {"path": f"{name}.json", "type": "table"} in logged
        [audit] = search("tags.pipeline_role = 'audit'")
        assert {m["key"] for m in audit["data"]["metrics"]} >= {"verdicts.not_run"}
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
