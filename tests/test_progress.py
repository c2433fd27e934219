"""`status`: runs declared, done, running and the ETA per set, on a tiny fake results folder."""
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from pipeline_src.__main__ import main
from pipeline_src.spec.config import REPO_ROOT, expand_runs, validate_params
from pipeline_src.results.progress import CHECKPOINT_NAME, TRAIN_LOG, duration, progress
from pipeline_src.results.report import record_path
from pipeline_src.spec.run_record import TRAINED_NAME
from helpers import TINY as WORKFLOW_TINY

# the workflow tests' two-set params, at 3 epochs so a running run can be part-way through
TINY = {**WORKFLOW_TINY, "training": {**WORKFLOW_TINY["training"], "epochs": 3}}


def finished(folder, run, seconds, outputs=True, **changed):
    """A run's metrics.json, with the other files a results folder holds for a finished run (outputs);
    a report folder keeps the record alone."""
    path = record_path(folder, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {**json.loads(run.to_json()), **changed}
    history = [{"epoch": e + 1, "train_loss": 1.0, "seconds": s} for e, s in enumerate(seconds)]
    path.write_text(json.dumps({"params": params, "history": history}))
    for name in ("model.pt", TRAINED_NAME, "predictions.npz") if outputs else ():
        (path.parent / name).write_text("{}")


@pytest.fixture
def fake(tmp_path):
    """baseline: sr s0 done in results (2 s/epoch), dnn3 s0 done in the report only (4 s/epoch), sr s1
    running after 1 of 3 epochs, dnn3 s1 not started; noisynn_main: nothing finished, one run whose
    record has other params (an old epoch count)."""
    params = validate_params({**TINY, "results_dir": str(tmp_path / "results")})
    runs = {(r.experiment_set, r.model, r.seed): r for r in expand_runs(params)}
    results, report = tmp_path / "results", tmp_path / "report"
    finished(results, runs["baseline", "sr", 0], [2.0, 2.0, 2.0])
    finished(report, runs["baseline", "dnn3", 0], [4.0, 4.0, 4.0], outputs=False)
    running = record_path(results, runs["baseline", "sr", 1]).parent
    running.mkdir(parents=True)
    (running / CHECKPOINT_NAME).write_bytes(b"state")
    (running / TRAIN_LOG).write_text("digits-sr-baseline-s1 epoch 1/3:  50%|#####     | 3/6\n"
                                     "epoch 1/3 loss 0.5000 train_top1 80.00\n")
    finished(results, runs["noisynn_main", "dnn3", 0], [9.0], epochs=1)
    # trained, waiting for its evaluate job; and one trained under other params (not counted)
    for key, identity in ((("noisynn_main", "dnn3", 1), runs["noisynn_main", "dnn3", 1]),
                          (("baseline", "dnn3", 1), replace(runs["baseline", "dnn3", 1], epochs=1))):
        trained = record_path(results, runs[key]).with_name(TRAINED_NAME)
        trained.parent.mkdir(parents=True)
        trained.write_text(json.dumps({"params": json.loads(identity.training_identity().to_json())}))
        trained.with_name("model.pt").write_bytes(b"")
    return params, report


def test_done_running_and_eta_per_set(fake):
    params, report = fake
    baseline, noisy = progress(params, report)
    assert (baseline.declared, baseline.done, baseline.running) == (4, 2, 1)
    assert baseline.seconds_per_epoch == 3.0  # mean over the set's finished runs
    # each run timed by its own cell's finished seeds: sr s1 has 2 epochs left at 2 s, dnn3 s1 3 at 4 s
    assert (baseline.epochs_left, baseline.seconds_left, baseline.untimed) == (5, 16.0, 0)
    # a record of other params is not done, nor a time to go by; a trained run is running, no epochs left
    assert (noisy.declared, noisy.done, noisy.running, noisy.epochs_left, noisy.untimed) == (2, 0, 1, 3, 1)
    assert progress(params, report, jobs=2)[0].seconds_left == 8.0
    without_report = progress(params)[0]
    assert (without_report.done, without_report.seconds_left) == (1, 2 * 2.0 + 3 * 2.0 + 3 * 2.0)


def test_a_cell_without_finished_seeds_is_timed_by_the_same_cell_of_another_set(tmp_path):
    params = validate_params({**TINY, "results_dir": str(tmp_path / "results"), "experiment_sets": {
        **TINY["experiment_sets"], "reading": TINY["experiment_sets"]["baseline"]}})
    runs = {(r.experiment_set, r.model, r.seed): r for r in expand_runs(params)}
    finished(tmp_path / "results", runs["baseline", "dnn3", 0], [5.0, 5.0, 5.0])
    reading = progress(params)[2]
    assert (reading.name, reading.seconds_per_epoch, reading.untimed) == ("reading", None, 2)  # the sr runs
    assert reading.seconds_left == 2 * 3 * 5.0  # its two dnn3 runs, 3 epochs each at baseline's 5 s


def test_status_prints_a_line_per_set_and_a_total(fake, tmp_path, capsys):
    params, report = fake
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**TINY, "results_dir": params["results_dir"]}))
    assert main(["status", "--params", str(path), "--report", str(report), "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["set", "declared", "done", "running", "to", "do", "s/epoch", "ETA", "(2", "jobs)"]
    assert lines[1].split() == ["baseline", "4", "2", "1", "2", "3.0", "8", "s"]
    assert lines[2].split()[:6] == ["noisynn_main", "2", "0", "1", "2", "-"] and "unknown (1 run(s)" in lines[2]
    assert lines[3].split()[:5] == ["all", "6", "2", "2", "4"] and lines[3].endswith("8 s + 1 untimed run(s)")
    assert main(["status", "--params", str(path), "--jobs", "0"]) == 2
    assert capsys.readouterr().err == "error: --jobs must be a positive number of parallel jobs, not 0\n"


def test_durations_read_plainly():
    assert [duration(s) for s in (40, 61, 3600 * 35 + 5 * 60 + 20)] == ["40 s", "1 min", "35 h 05 min"]


def test_the_checkpoint_name_is_the_one_training_writes_and_status_needs_no_torch():
    from pipeline_src.training import train

    assert CHECKPOINT_NAME == train.CHECKPOINT_NAME
    code = ("import sys; from pipeline_src.__main__ import main; "
            "main(['status', '--params', 'params/default.yaml']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_an_evaluation_only_set_counts_its_bases_training_while_their_models_are_not_here(tmp_path):
    """A report keeps records, not weights: a base done there must train again before its evaluation-only
    runs measure it, so their set's ETA holds the base's epochs, once per base however many runs share it."""
    noisy = {"label": "gaussian_image", "name": "noisynn", "site": "image", "noise": {"kind": "gaussian"},
             "apply_at": "test", "base_set": "clean", "base_label": "baseline", "grid": {"noise.strength": [0.1, 0.3]}}
    params = validate_params({**TINY, "seeds": [0], "results_dir": str(tmp_path / "results"), "experiment_sets": {
        "clean": {"datasets": ["digits"], "models": ["dnn3"], "methods": [{"label": "baseline", "name": "baseline"}]},
        "harm": {"kind": "harmful_noise", "datasets": ["digits"], "models": ["dnn3"], "methods": [noisy]}}})
    runs = {r.experiment_set: r for r in expand_runs(params)}
    finished(tmp_path / "report", runs["clean"], [4.0, 4.0, 4.0], outputs=False)
    clean, harm = progress(params, tmp_path / "report")
    assert (clean.done, clean.seconds_left) == (1, 0.0)
    assert (harm.declared, harm.done, harm.epochs_left, harm.seconds_left) == (2, 0, 3, 12.0)  # one base, 3 x 4 s
    finished(tmp_path / "results", runs["clean"], [4.0, 4.0, 4.0])  # the base trained here: its model is here
    assert progress(params, tmp_path / "report")[1].seconds_left == 0.0
