"""Runtime faults (issue 38, items 5, 10, 12, 13, 15), each on small real data: a damaged file is one line
naming it, what is wrong and what to do, or is survived with nothing lost; `status` counts what exists;
two runs in one results folder cannot collide; a hard kill of Snakemake ends its jobs; a second checkout
sharing the venv never runs this one's modules. (The worker's own faults: tests/test_worker.py.)"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_src.__main__ import main
from pipeline_src.data.prepared import DataError, load_prepared, prepare
from pipeline_src.evaluation.evaluate import evaluate_run
from pipeline_src.results.progress import progress
from pipeline_src.results.report import record_path
from pipeline_src.spec.config import REPO_ROOT, expand_runs, validate_params
from pipeline_src.plumbing.locks import RESULTS_LOCK, hold_results_folder
from pipeline_src.spec.predictions import load_predictions
from pipeline_src.spec.run_record import load_record
from pipeline_src.training.train import CHECKPOINT_NAME, train_run
from helpers import SNAKEMAKE, TINY, make_run

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
ENV.pop("PIPELINE_WORKER_SOCKET", None)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "digits"
    prepare("digits", {"source": "digits", "test_fraction": 0.25, "seed": 0}, out, REPO_ROOT)
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def history(trained: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in trained["history"]]


# ---- 15: one checkout never imports another's code ----------------------------------------------

@pytest.mark.parametrize("found_by", ["PYTHONPATH", "editable install"])
def test_a_second_checkout_never_takes_a_module_from_this_one(tmp_path, found_by):
    """A checkout run from its own folder, with a module moved aside: the import fails there, naming its
    folder, instead of taking this checkout's copy (found through PYTHONPATH, or through the venv's
    editable install, which names one checkout)."""
    other = tmp_path / "other"
    shutil.copytree(REPO_ROOT / "pipeline_src", other / "pipeline_src", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "pipeline_src" / "provenance.py").rename(other / "pipeline_src" / "provenance.py.aside")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    if found_by == "PYTHONPATH":
        env["PYTHONPATH"] = str(REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", "import pipeline_src.provenance as p; print(p.REPO_ROOT)"],
                         cwd=other, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == "", out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        f"ModuleNotFoundError: No module named 'pipeline_src.provenance' in {other / 'pipeline_src'}")
    (other / "pipeline_src" / "provenance.py.aside").rename(other / "pipeline_src" / "provenance.py")
    whole = subprocess.run([sys.executable, "-c", "import pipeline_src.data.prepared as d; print(d.__file__)"],
                           cwd=other, env=env, capture_output=True, text=True, timeout=120)
    assert whole.stdout.strip() == str(other / "pipeline_src" / "data" / "prepared.py"), whole.stderr[-2000:]


# ---- 5: status counts what exists; a cut-short prepared file says how to prepare it again ----------

def test_status_counts_a_run_done_only_while_its_files_exist(tmp_path):
    """A retrain that failed (its data cut short) leaves the metrics.json and Snakemake deletes the
    model.pt: the run is to do, as Snakemake will do it, not done."""
    params = validate_params({**TINY, "results_dir": str(tmp_path / "results")})
    run = expand_runs(params)[0]
    record = record_path(tmp_path / "results", run)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"params": json.loads(run.to_json()), "history": [{"epoch": 1, "seconds": 1.0}]}))
    (record.parent / "trained.json").write_text("{}")
    (record.parent / "predictions.npz").write_bytes(b"")
    assert progress(params)[0].done == 0
    (record.parent / "model.pt").write_bytes(b"")
    assert progress(params)[0].done == 1
    (record.parent / "predictions.npz").unlink()
    assert progress(params)[0].done == 0


def test_status_names_a_damaged_record(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**TINY, "results_dir": str(tmp_path / "results")}))
    run = expand_runs(validate_params({**TINY, "results_dir": str(tmp_path / "results")}))[0]
    record = record_path(tmp_path / "results", run)
    record.parent.mkdir(parents=True)
    record.write_text('{"params": {"run_id": "digits-sr-bas')  # cut short
    for name in ("model.pt", "trained.json", "predictions.npz"):
        (record.parent / name).write_bytes(b"")
    assert main(["status", "--params", str(path)]) == 2
    assert one_error_line(capsys) == (
        f"error: {record}: not valid JSON (Unterminated string starting at: line 1 column 23 (char 22)); delete it "
        "and run Snakemake again: the run's evaluate job writes it anew (a report folder's copy: restore it with "
        "git checkout)")


def test_a_cut_short_prepared_file_says_how_to_prepare_it_again(digits, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    shutil.copytree(digits, prepared)
    data = prepared / "data.npz"
    data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 2])
    with pytest.raises(DataError, match="cut short"):
        load_prepared(prepared)
    assert main(["train", "--run-json", make_run(epochs=1).to_json(), "--data", str(prepared),
                 "--model", str(tmp_path / "run" / "model.pt")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {data}: sha256 ")
    assert line.endswith(f"re-prepare it: delete {data} and run Snakemake again (its prepare_data job writes it "
                         "and manifest.json anew; the runs on it train again)")
    assert not (tmp_path / "run" / "model.pt").exists()


# ---- 10: every damaged file is named, with what to do -----------------------------------------------

def test_a_cut_short_checkpoint_is_moved_aside_and_the_run_trains_from_scratch(digits, tmp_path, capsys):
    """Once damaged, a checkpoint failed every rerun (a PytorchStreamReader traceback naming no file)."""
    cfg = make_run(epochs=2)
    whole = train_run(cfg, digits, tmp_path / "whole")
    out = tmp_path / "damaged"
    out.mkdir()
    model = (tmp_path / "whole" / "model.pt").read_bytes()
    (out / CHECKPOINT_NAME).write_bytes(model[:len(model) // 2])  # a torch.save zip cut short
    capsys.readouterr()
    again = train_run(cfg, digits, out)
    assert history(again) == history(whole)
    assert (out / f"{CHECKPOINT_NAME}.unreadable").stat().st_size == len(model) // 2
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {out / CHECKPOINT_NAME} is unreadable (")
    assert notes[0].endswith(f"moved it to {CHECKPOINT_NAME}.unreadable and training this run from epoch 1")


def test_a_cut_short_model_is_named_at_evaluation(digits, tmp_path):
    cfg = make_run(epochs=1)
    train_run(cfg, digits, tmp_path)
    model = tmp_path / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ValueError) as refused:
        evaluate_run(cfg, digits, model, tmp_path / "metrics.json")
    assert str(refused.value).startswith(f"{model}: not a readable PyTorch file (")
    assert str(refused.value).endswith("delete it and the model.pt beside it and run Snakemake again: the run "
                                       "trains anew")
    assert not (tmp_path / "metrics.json").exists()


def test_a_damaged_metrics_json_is_named_by_the_aggregate_job(tmp_path, capsys):
    record = tmp_path / "runs" / "s" / "r" / "metrics.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"format": 2, "run_id": "r", "params": {"x": [1, 2')
    with pytest.raises(ValueError, match=f"^{record}: not valid JSON"):
        load_record(record)
    out = tmp_path / "tables"
    assert main(["aggregate", "--set", "s", "--kind", "baseline", "--table", str(out / "t.csv"), "--markdown",
                 str(out / "t.md"), "--runs", str(out / "r.csv"), "--figure", str(out / "f.png"), str(record)]) == 2
    assert one_error_line(capsys).startswith(f"error: {record}: not valid JSON (Expecting ")
    assert not out.exists()


def test_a_predictions_file_of_objects_or_other_arrays_is_named(tmp_path):
    path = tmp_path / "predictions.npz"
    np.savez(path, baseline=np.array([{"a": 1}, None, 2], dtype=object), target=np.arange(3), allow_pickle=True)
    with pytest.raises(ValueError) as refused:
        load_predictions(path)
    assert str(refused.value) == (
        f"{path}: not a predictions file (Object arrays cannot be loaded when allow_pickle=False); delete it "
        "and run Snakemake again: the run's evaluate job writes it anew")
    np.savez(path, baseline=np.zeros(3), target=np.arange(3))
    with pytest.raises(ValueError, match=r"array 'baseline' is float64 \(3,\), not one integer label per test image"):
        load_predictions(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"^{path}: not a predictions file"):
        load_predictions(path)


# ---- 12: two runs in one results folder ---------------------------------------------------------------

HOLD = ("import sys, time\nfrom pipeline_src.plumbing.locks import hold_results_folder\n"
        "print(hold_results_folder(sys.argv[1]), flush=True)\ntime.sleep(300)\n")


def test_a_second_run_in_a_results_folder_is_refused_until_the_first_is_gone(tmp_path):
    """The lock is the kernel's (flock): it goes with its process, however that ends (kill -9 too)."""
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO_ROOT, env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "None\n"
        refused = hold_results_folder(tmp_path)
        assert refused == (f"error: another Snakemake (Snakemake pid {first.pid} on host {os.uname().nodename}) is "
                           f"running in results folder {tmp_path} (it holds {tmp_path / RESULTS_LOCK}); wait for it "
                           "to end or stop it, or give this run another results_dir")
    finally:
        first.kill()
        first.wait()
    assert hold_results_folder(tmp_path) is None
    assert hold_results_folder(tmp_path) is None  # held by this process already


def test_a_results_folder_on_a_filesystem_without_locks_runs_as_before(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert hold_results_folder(tmp_path) is None
    assert capsys.readouterr().err == (f"note: {tmp_path / RESULTS_LOCK} cannot be locked (No locks available); "
                                       "nothing keeps a second run out of this results folder\n")


def snakemake_params(tmp_path: Path, epochs: int) -> Path:
    params = {**TINY, "seeds": [0], "training": {**TINY["training"], "epochs": epochs},
              "results_dir": str(tmp_path / "results"),
              "experiment_sets": {"baseline": {**TINY["experiment_sets"]["baseline"], "models": ["dnn3"]}},
              "models": {"dnn3": {"arch": "dnn3", "hidden": 2048}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def snakemake_command(params: Path) -> list[str]:
    return [SNAKEMAKE, "--cores", "1", "--configfile", str(params)]


def own_snakemake_locks(tmp_path: Path) -> list[Path]:
    """The Snakemake lock files in the checkout's .snakemake/locks/ naming this test's files: other tests'
    runs may hold their own there meanwhile, which this test leaves alone."""
    return [lock for lock in (REPO_ROOT / ".snakemake" / "locks").glob("*.lock") if str(tmp_path) in lock.read_text()]


def first_epoch_logged(tmp_path: Path) -> Path | None:
    return next((p for p in (tmp_path / "results" / "runs").glob("*/*/train.log") if "epoch 1/200 loss" in p.read_text()),
                None)


def wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


@pytest.mark.slow
def test_a_run_whose_snakemake_locks_another_run_removed_keeps_its_results_folder(tmp_path):
    """Snakemake removes all of .snakemake/locks/ when any run in the folder ends: a second run of the same
    results folder then found nothing in its way, trained the same run and truncated its train.log.
    Our lock refuses it in one line, and leaves the first run's files alone."""
    command = snakemake_command(snakemake_params(tmp_path, epochs=200))
    env = {**ENV, "PYTHONPATH": str(REPO_ROOT), "PIPELINE_WORKER": "off"}
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        log = wait_until(lambda: first_epoch_logged(tmp_path), 300, "no epoch trained")
        held = own_snakemake_locks(tmp_path)
        assert held
        for lock in held:  # what another run's end does (it removes the whole folder)
            lock.unlink()
        second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith("error: another Snakemake (Snakemake pid "
                                                                  f"{first.pid} on host ")
        assert "epoch 1/200 loss" in log.read_text(), "the second run truncated the first run's log"
        assert first.poll() is None
        assert not own_snakemake_locks(tmp_path), "the refused run left its Snakemake locks behind"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        for lock in own_snakemake_locks(tmp_path):
            lock.unlink()


# ---- 13: a hard kill of Snakemake ends its jobs ------------------------------------------------------

def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def processes_naming(text: str) -> list[str]:
    """Command lines of the running (not zombie) processes whose arguments hold `text`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.slow
def test_a_hard_killed_snakemake_s_jobs_end_and_leave_no_folder(tmp_path):
    """kill -9 of Snakemake alone (not its process group): its training job (shell, client, and the
    worker's child) kept training beside an immediate rerun, and a /tmp/pw-* folder stayed."""
    snakemake = subprocess.Popen(snakemake_command(snakemake_params(tmp_path, epochs=200)), cwd=REPO_ROOT,
                                 env={**ENV, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: first_epoch_logged(tmp_path), 300, "no epoch trained")
        worker_log = (tmp_path / "results" / "logs" / "worker.log").read_text()
        folder = Path(worker_log.split(" on ", 1)[1].split()[0].rstrip(",")).parent
        # the forked child training the run: "worker: job <pid>: python -m pipeline_src train"
        child = int(next(line.split()[2].rstrip(":") for line in worker_log.splitlines()
                         if line.startswith("worker: job ") and line.endswith("pipeline_src train")))
        assert folder.name.startswith("pw-") and folder.is_dir()
        job = str(tmp_path / "results" / "runs")  # named by the job's shell and client
        assert processes_naming(job) and running(child)
        snakemake.kill()
        snakemake.wait()
        wait_until(lambda: not processes_naming(job) and not running(child) and not folder.exists(), 60,
                   f"left: {processes_naming(job)}, child {running(child)}, folder {folder.exists()}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(snakemake.pid, signal.SIGKILL)
        for lock in own_snakemake_locks(tmp_path):  # a killed Snakemake leaves them; the next run would say so
            lock.unlink()
    log = next((tmp_path / "results" / "runs").glob("*/*/train.log")).read_text()
    assert "was killed by SIGTERM" in log


def test_a_weights_file_that_is_not_the_model_s_weights_is_named(tmp_path):
    """A file of other bytes was reported as an unknown model name; a state_dict of other keys loaded
    nothing, with a warning only, and the run trained from random weights."""
    import torch

    from pipeline_src.methods.models import build_model

    weights = tmp_path / "resnet10t.pth"
    weights.write_text("not weights\n")
    with pytest.raises(ValueError, match=f"^{weights}: not a readable PyTorch file .*; give weights_file a state_dict "
                                         r"of this model \(torch.save\(model.state_dict\(\), path\)\)$"):
        build_model("resnet10t", (3, 32, 32), 10, weights_file=str(weights))
    torch.save({"x": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match=f"^weights_file {weights}: none of its 1 tensors " r"\(x, ...\) is a parameter of resnet10t"):
        build_model("resnet10t", (3, 32, 32), 10, weights_file=str(weights))
    torch.save(["a", "list"], weights)
    with pytest.raises(ValueError, match=f"^weights_file {weights}: holds a list, not a state_dict of tensors"):
        build_model("resnet10t", (3, 32, 32), 10, weights_file=str(weights))
    own = build_model("resnet10t", (3, 32, 32), 10).state_dict()
    torch.save({"state_dict": {f"module.{k}": v + 1 for k, v in own.items() if k.startswith("conv1.")}}, weights)
    loaded = build_model("resnet10t", (3, 32, 32), 10, weights_file=str(weights))
    assert torch.equal(loaded.state_dict()["conv1.0.weight"], own["conv1.0.weight"] + 1)


def test_a_damaged_runs_table_is_named_by_the_audit(tmp_path):
    from pipeline_src.results.audit import load_runs

    table = tmp_path / "tables" / "baseline_runs.csv"
    table.parent.mkdir()
    table.write_text("run_id,experiment_set,eval_mode,top1\nr0,baseline,clean,90.0\nr1,baseline,clean,91.0,extra,x\n")
    with pytest.raises(ValueError) as refused:
        load_runs([table], {})
    assert str(refused.value) == (f"{table}: not a readable CSV table (Error tokenizing data. C error: Expected 4 "
                                  "fields in line 3, saw 6); delete it and run Snakemake again: the set's aggregate "
                                  "job writes it anew")
    table.write_text("")
    with pytest.raises(ValueError, match=f"^{table}: not a readable CSV table \\(No columns to parse from file\\)"):
        load_runs([table], {})


def test_a_damaged_record_is_named_when_a_report_collects_it(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**TINY, "results_dir": str(tmp_path / "results")}))
    run = expand_runs(validate_params({**TINY, "results_dir": str(tmp_path / "results")}))[0]
    record = record_path(tmp_path / "results", run)
    record.parent.mkdir(parents=True)
    record.write_text('{"format": 2, "params": {')
    assert main(["report", "--params", str(path), "--out", str(tmp_path / "report"),
                 "--results", str(tmp_path / "results")]) == 2
    assert one_error_line(capsys).startswith(f"error: {record}: not valid JSON (Expecting ")
