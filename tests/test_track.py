"""MLflow tracking against real sqlite stores in tmp dirs (no mocks): parallel jobs, outage + resync, a
server that never answers, nesting, tags, idempotence, the experiment's kind, the sets' summaries."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline_src.tracking.audit import log_audit, log_set_summaries
from pipeline_src.__main__ import main
from pipeline_src.tracking.ids import read_set_ids, set_ids_path
from pipeline_src.tracking.runs import PENDING_MARKER, end_set, log_run, resync
from pipeline_src.tracking.store import EXPERIMENT_NAME, TRACKING_INFO, init_store, tracking_uri
from tracking_fakes import DIAGNOSTICS, EPOCHS, EVALUATIONS, make_metrics, silent_server, write_audit, write_run

REPO_ROOT = Path(__file__).resolve().parents[1]
POINTS_PER_RUN = 3 * EPOCHS + 1 + len(EVALUATIONS) + len(DIAGNOSTICS)  # history keys x epochs + finals

CHILD = """
import json, sys, time
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store  # loaded up front so import time does not stagger the writes
from pipeline_src.tracking.runs import log_run
run_dir, results, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(run_dir / "ready").touch()
while not go.exists():  # all 8 start writing at once
    time.sleep(0.005)
print("RUN_ID", log_run(json.loads((run_dir / "metrics.json").read_text()), run_dir, results))
"""


@pytest.fixture(autouse=True, scope="module")
def _clean_env():
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "PIPELINE_MLFLOW_ATTEMPTS",
                     "PIPELINE_MLFLOW_BACKOFF_S"):
            patch.delenv(name, raising=False)
        yield


def children(results: Path, **tags) -> list:
    client = MlflowClient(tracking_uri(results))
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    query = " and ".join([f"tags.{k} = '{v}'" for k, v in {"pipeline_role": "child", **tags}.items()])
    return client.search_runs([experiment.experiment_id], query)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One initialised store shared by the read-only checks (creating a schema costs ~2 s)."""
    results = tmp_path_factory.mktemp("shared") / "results"
    info = init_store(results, ["baseline", "noise"], "study1")
    ids = {}
    for experiment_set in ("baseline", "noise"):
        metrics = make_metrics(experiment_set)
        run_dir = write_run(results, metrics)
        (run_dir / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        ids[experiment_set] = log_run(metrics, run_dir, results)
    return results, info, ids


@pytest.mark.slow
def test_parallel_jobs_on_fresh_store_lose_nothing(tmp_path):
    results, go = tmp_path / "results", tmp_path / "go"
    expected = [make_metrics(seed=seed) for seed in range(8)]
    run_dirs = [write_run(results, m) for m in expected]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(results), str(go)], cwd=REPO_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in run_dirs]
    init_store(results, ["baseline"], "study1")  # fresh store; children are still importing
    deadline = time.time() + 45
    while not all((d / "ready").exists() for d in run_dirs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "children did not start"
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-2000:] for _, err in outputs]
    returned = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("RUN_ID")]

    client = MlflowClient(tracking_uri(results))
    runs = {r.data.tags["run_key"]: r for r in children(results)}
    points_read = 0
    for metrics in expected:
        run = runs[f"baseline/{metrics['run_id']}"]
        for key in ("train_loss", "train_top1", "seconds"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == [(h["epoch"], h[key]) for h in metrics["history"]]
            points_read += len(history)
        finals = {"test_top1": metrics["test_top1"],
                  **{f"evaluations.{k}": v for k, v in metrics["evaluations"].items()},
                  **{f"diagnostics.{k}": v for k, v in metrics["diagnostics"].items()}}
        assert {k: run.data.metrics[k] for k in finals} == finals
        points_read += len(finals)
    pending = [d for d in run_dirs if (d / PENDING_MARKER).exists()]
    print(f"\nparallel: runs written 8 (ids returned {len([r for r in returned if r != 'None'])}), "
          f"read back {len(runs)}; metric points written {8 * POINTS_PER_RUN}, read back {points_read}; "
          f"pending markers {len(pending)}")
    assert sorted(returned) == sorted(r.info.run_id for r in runs.values())
    assert len(runs) == 8 and points_read == 8 * POINTS_PER_RUN and not pending


DATASET_CHILD = """
import json, sys, time
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store
from mlflow import MlflowClient
from pipeline_src.tracking.runs import _log_dataset
from pipeline_src.tracking.store import tracking_uri
run_id, results, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
client = MlflowClient(tracking_uri(results))
metrics = json.loads(sys.stdin.read())
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
_log_dataset(client, run_id, metrics, results)
"""


@pytest.mark.slow
def test_first_inputs_of_one_dataset_at_once_all_land(tmp_path):
    """MLflow looks a dataset up, then inserts it: eight runs giving a new dataset as their input at
    the same moment must not collide on its unique key (this failed 1 run in 8 under load)."""
    results, go = tmp_path / "results", tmp_path / "go"
    info = init_store(results, ["baseline"], "study1")
    client = MlflowClient(tracking_uri(results))
    metrics = make_metrics()
    run_ids = [client.create_run(info["experiment_id"]).info.run_id for _ in range(8)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", DATASET_CHILD, run_id, str(results), str(go)], cwd=REPO_ROOT,
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for run_id in run_ids]
    for proc in procs:
        proc.stdin.write(json.dumps(metrics))
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    go.touch()
    errors = [proc.stderr.read()[-600:] for proc in procs if proc.wait(timeout=90) != 0]
    assert not errors, errors
    inputs = [client.get_run(run_id).inputs.dataset_inputs for run_id in run_ids]
    assert [len(found) for found in inputs] == [1] * 8
    assert len({found[0].dataset.digest for found in inputs}) == 1


def test_outage_marks_pending_then_resync_logs_once(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    init_store(results, ["baseline"], "study1")
    metrics = make_metrics()
    run_dir = write_run(results, metrics)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.time()
    down = init_store(tmp_path / "elsewhere", ["baseline"], "study1", attempts=1)
    assert down["parents"] == {} and "error" in down  # warned, not raised: training goes on
    assert log_run(metrics, run_dir, results, attempts=2, backoff_s=0.01) is None
    assert time.time() - started < 10
    err = capsys.readouterr().err
    assert "WARNING: MLflow store setup FAILED" in err
    assert "WARNING: MLflow logging FAILED for baseline/digits-dnn3-baseline-s0" in err
    assert "MLflow: transient error, attempt 1/2, retrying in" in err  # a refused connection is retried
    assert "after 2 attempt(s)" in (run_dir / PENDING_MARKER).read_text()
    assert (run_dir / PENDING_MARKER).exists()

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resync(results) == (1, 0)
    assert not (run_dir / PENDING_MARKER).exists()
    run_id = read_set_ids(set_ids_path(results, "baseline"))[metrics["run_id"]]
    assert [r.info.run_id for r in children(results)] == [run_id]
    assert resync(results) == (0, 1)
    assert len(children(results)) == 1


def test_a_server_that_never_answers_costs_one_timeout_then_pending_and_resync(tmp_path, monkeypatch, capsys):
    """Store setup, three runs and the set's end against a server that accepts and never answers: one
    request timeout in all (not one per call, nor per retry), every run pending; resync logs them later."""
    results = tmp_path / "results"
    run_dirs = [write_run(results, make_metrics(seed=seed)) for seed in range(3)]
    with silent_server() as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the user's setting wins over ours (10 s)
        started = time.monotonic()
        info = init_store(results, ["baseline"], "study1")  # the default retry budget: 6 attempts
        ids = [log_run(json.loads((d / "metrics.json").read_text()), d, results) for d in run_dirs]
        ended = end_set(results, "baseline")
        elapsed = time.monotonic() - started
    assert "error" in info and ids == [None] * 3 and ended is False
    assert elapsed < 2 + 4, f"{elapsed:.1f} s: more than one 2 s timeout"
    err = capsys.readouterr().err
    assert f"the tracking server {uri} sent no answer within 2 s" in err
    assert "transient error" not in err  # no retry of a request that timed out
    for run_dir in run_dirs:
        assert "no answer in time, not retried" in (run_dir / PENDING_MARKER).read_text()

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store is reachable again (here: a local one)
    assert resync(results) == (3, 0)
    assert len(children(results)) == 3 and not list(results.glob(f"runs/*/*/{PENDING_MARKER}"))


def test_resync_finds_logged_run_instead_of_duplicating(tmp_path):
    results = tmp_path / "results"
    metrics = make_metrics()
    run_dir = write_run(results, metrics)
    run_id = log_run(metrics, run_dir, results)  # no init_store: log_run creates experiment + parent
    assert run_id is not None  # ...but the caller never stored the id in the set's tracking file
    record = (run_dir / "metrics.json").read_bytes()
    assert resync(results) == (1, 0)
    assert read_set_ids(set_ids_path(results, "baseline")) == {metrics["run_id"]: run_id}
    assert (run_dir / "metrics.json").read_bytes() == record
    assert len(children(results)) == 1


def test_tracking_a_set_writes_its_ids_apart_and_leaves_every_record_as_it_was(tmp_path, capsys):
    """metrics.json is the evaluate job's output, written once: track-set (and a later resync) put the
    MLflow ids in the set's tracking file, so no stage after evaluate sees its input change."""
    results = tmp_path / "results"
    init_store(results, ["baseline"], "study1")
    run_dirs = [write_run(results, make_metrics(seed=seed)) for seed in range(2)]
    records = [(d / "metrics.json").read_bytes() for d in run_dirs]
    out = set_ids_path(results, "baseline")
    main(["track-set", "--results", str(results), "--set", "baseline", "--out", str(out),
          *(str(d / "metrics.json") for d in run_dirs)])
    ids = read_set_ids(out)
    assert sorted(ids) == [d.name for d in run_dirs]
    assert sorted(ids.values()) == sorted(r.info.run_id for r in children(results))
    assert [(d / "metrics.json").read_bytes() for d in run_dirs] == records
    assert resync(results) == (0, 2)  # every run has its id: nothing logged again, nothing written
    assert [(d / "metrics.json").read_bytes() for d in run_dirs] == records


def test_children_nest_under_their_set_parent(store):
    results, info, ids = store
    client = MlflowClient(info["tracking_uri"])
    for experiment_set, run_id in ids.items():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == info["parents"][experiment_set]
    assert json.loads((results / TRACKING_INFO).read_text()) == info


def test_tags_params_metrics_and_artifacts(store):
    results, info, ids = store
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(ids["baseline"])
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == "0123abcd" * 5
    assert tags["mlflow.source.name"] == "snakemake:train"
    assert tags["run_key"] == "baseline/digits-dnn3-baseline-s0"
    assert (tags["params_hash"], tags["git_dirty"], tags["data_version"]) == ("ab12", "false", "d" * 64)
    assert (tags["seed"], tags["device"], tags["torch_version"]) == ("0", "cpu", "2.5.1")
    assert tags["snakemake_rule"] == "train"
    assert tags["wildcards.run_id"] == "digits-dnn3-baseline-s0"
    params = run.data.params
    assert params["training.optimizer.lr"] == "0.001" and params["method.layers"] == "[1, 2]"
    assert len(params["note"]) == 6000  # MLflow's param value limit
    # the method as it ran, every default filled, is searchable in MLflow too
    assert params["resolved_method.noise.strength"] == "0.3" and params["resolved_method.test_batch_size"] == "10"
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((results.resolve() / "mlartifacts").as_uri())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "train.log", "curves.png"}


def test_init_store_twice_reuses_parents(store):
    results, info, _ = store
    again = init_store(results, ["baseline", "noise"], "study2")
    assert again["parents"] == info["parents"]
    client = MlflowClient(info["tracking_uri"])
    parents = client.search_runs([info["experiment_id"]], "tags.pipeline_role = 'parent'")
    assert len(parents) == 2
    assert {r.data.tags["params_hash"] for r in parents} == {"study2"}


def test_rerun_reuses_or_replaces_never_duplicates(tmp_path):
    results = tmp_path / "results"
    init_store(results, ["baseline"], "study1")
    metrics = make_metrics()
    run_dir = write_run(results, metrics)
    first = log_run(metrics, run_dir, results)
    assert log_run(metrics, run_dir, results) == first  # same content: reused

    rerun = {**metrics, "history": [{**h, "seconds": 0.6} for h in metrics["history"]]}
    second = log_run(rerun, run_dir, results)  # same config, new results: replaces
    assert second != first
    assert [r.info.run_id for r in children(results)] == [second]
    assert MlflowClient(tracking_uri(results)).get_run(first).info.lifecycle_stage == "deleted"

    changed = log_run({**metrics, "params_hash": "cd34"}, run_dir, results)  # new config: new run
    assert {r.info.run_id for r in children(results)} == {second, changed}


def test_a_parent_runs_until_its_set_ends(tmp_path):
    results = tmp_path / "results"
    info = init_store(results, ["baseline"], "study1")
    client = MlflowClient(info["tracking_uri"])
    parent = info["parents"]["baseline"]
    assert client.get_run(parent).info.status == "RUNNING"  # not FINISHED at creation
    metrics = make_metrics()
    log_run(metrics, write_run(results, metrics), results)
    assert client.get_run(parent).info.status == "RUNNING"
    assert end_set(results, "baseline") is True
    ended = client.get_run(parent).info
    assert ended.status == "FINISHED" and ended.end_time >= ended.start_time
    assert end_set(results, "no_such_set") is False


def test_the_dataset_is_an_input_with_the_data_version_as_digest(tmp_path):
    results = tmp_path / "results"
    client = MlflowClient(tracking_uri(results))
    from_files = make_metrics()
    from_files["provenance"] = {**from_files["provenance"], "data_version": "a" * 64, "dvc_hash": "f" * 32 + ".dir"}
    generated = make_metrics(seed=1)  # data_version "d" * 64 and no dvc_hash: a generated dataset
    ids = [log_run(m, write_run(results, m), results) for m in (from_files, generated)]
    [[first], [second]] = [client.get_run(i).inputs.dataset_inputs for i in ids]
    assert (first.dataset.name, first.dataset.digest) == ("digits", "a" * 36)
    assert first.dataset.source_type == "dvc" and json.loads(first.dataset.source)["dvc_hash"] == "f" * 32 + ".dir"
    assert json.loads(first.dataset.profile)["data_version"] == "a" * 64  # whole, beyond the 36-character digest
    assert {t.key: t.value for t in first.tags} == {"mlflow.data.context": "train+test"}
    assert (second.dataset.digest, second.dataset.source_type) == ("d" * 36, "generated")


def test_the_audit_run_holds_the_tables_and_verdict_counts(tmp_path):
    results = tmp_path / "results"
    audit, cells, markdown = write_audit(tmp_path / "audit", ["supported", "differ (higher)", "differ (higher)"])
    client = MlflowClient(tracking_uri(results))
    run_id = log_audit(results, [audit, cells], [markdown])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline_role"] == "audit"
    assert run.data.metrics == {"verdicts.supported": 1.0, "verdicts.differ_higher": 2.0}
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "audit.json", "effects_cells.json", "audit.csv", "effects_cells.csv", "audit.md"}
    table = json.loads(Path(client.download_artifacts(run_id, "audit.json", str(tmp_path / "dl"))).read_text())
    assert table["columns"] == ["claim_id", "verdict", "p_holm"]
    assert table["data"][0] == ["vpn.claim0", "supported", None]  # NaN logged as null: strict JSON for the UI
    assert log_audit(results, [audit, cells], [markdown]) == run_id  # same audit: reused

    write_audit(tmp_path / "audit", ["inconclusive"])
    newer = log_audit(results, [audit, cells], [markdown])
    assert newer != run_id and client.get_run(run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(FileNotFoundError, match="do not exist"):
        log_audit(results, [tmp_path / "none.csv"])


def test_the_experiment_is_of_kind_model_training(tmp_path):
    """What MLflow 3 reads for an experiment's kind: set on a new experiment, added to one made without it,
    and a kind someone chose by hand is left alone."""
    results = tmp_path / "results"
    info = init_store(results, ["baseline"], "study1")
    client = MlflowClient(tracking_uri(results))
    assert client.get_experiment(info["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"

    client.delete_experiment_tag(info["experiment_id"], "mlflow.experimentKind")
    init_store(results, ["baseline"], "study1")
    assert client.get_experiment(info["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(info["experiment_id"], "mlflow.experimentKind", "finetuning")
    init_store(results, ["baseline"], "study1")
    assert client.get_experiment(info["experiment_id"]).tags["mlflow.experimentKind"] == "finetuning"


def write_set_files(results: Path, verdict: str) -> None:
    (results / "tables").mkdir(parents=True, exist_ok=True)
    (results / "tables" / "baseline.csv").write_text("dataset,model,method,top1_mean,n\ndigits,dnn3,baseline,91.7,2\n")
    evidence = "baseline/digits-dnn3-baseline-s0 baseline/digits-dnn3-baseline-s1"
    (results / "audit.csv").write_text("claim_id,reading,verdict,evidence\n"
                                       f"vpn.a,ours,{verdict},{evidence}\n"
                                       "vpn.b,ours,not run,\n"
                                       "vpn.c,ours,differs (higher),noise/digits-dnn3-noise-s0\n")


def test_a_parent_carries_its_sets_summary(tmp_path):
    """n, what the set crossed, the verdicts of the audit rows citing its runs, its table: on the parent run,
    logged once, and replaced (not appended to) when the audit changes."""
    results = tmp_path / "results"
    init_store(results, ["baseline"], "study1")
    for seed in (0, 1):
        write_run(results, make_metrics(seed=seed))
    write_set_files(results, "supported")
    assert log_set_summaries(results, results) == 1
    client = MlflowClient(tracking_uri(results))
    [parent] = client.search_runs([client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id],
                                  "tags.pipeline_role = 'parent'")
    assert parent.data.params == {"set_kind": "baseline", "scale": "embedded_default", "datasets": "digits",
                                  "models": "dnn3", "methods": "baseline"}
    assert parent.data.metrics == {"runs": 2.0, "seeds": 2.0, "audit_rows": 1.0, "verdicts.supported": 1.0}
    logged = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "baseline.json", "type": "table"} in logged and {"path": "verdicts.json", "type": "table"} in logged

    def table(name: str) -> dict:
        folder = tmp_path / f"dl-{time.time_ns()}"
        return json.loads(Path(client.download_artifacts(parent.info.run_id, name, str(folder))).read_text())

    assert table("baseline.json")["data"] == [["digits", "dnn3", "baseline", 91.7, 2]]
    assert [row[:3] for row in table("verdicts.json")["data"]] == [["vpn.a", "ours", "supported"]]
    assert log_set_summaries(results, results) == 0  # unchanged: nothing logged again

    write_set_files(results, "inconclusive")
    assert log_set_summaries(results, results) == 1
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics == {"runs": 2.0, "seeds": 2.0, "audit_rows": 1.0, "verdicts.supported": 0.0,
                                   "verdicts.inconclusive": 1.0}
    assert [row[:3] for row in table("verdicts.json")["data"]] == [["vpn.a", "ours", "inconclusive"]]
