"""The training loop: deterministic on CPU, resumes after a kill with identical results."""
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_src.spec.config import REPO_ROOT, RunConfig
from pipeline_src.data.prepared import prepare
from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.spec.predictions import load_predictions
from pipeline_src.data.stream import to_input
from pipeline_src.methods.registry import build_run_method
from pipeline_src.training.train import CHECKPOINT_NAME

from helpers import make_run  # the run table's run; digits_dir comes from conftest.py
from pipeline_src.__main__ import train_and_evaluate


def comparable(metrics: dict) -> dict:
    """Everything but wall-clock times."""
    return {"history": [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]],
            "evaluations": metrics["evaluations"], "params_hash": metrics["params_hash"]}


def test_same_params_and_seed_give_identical_metrics(digits_dir, tmp_path):
    first = train_and_evaluate(make_run(), digits_dir, tmp_path / "a")
    second = train_and_evaluate(make_run(), digits_dir, tmp_path / "b")
    assert comparable(first) == comparable(second)
    assert first["test_top1"] > 50.0, "three epochs of DNN3 on digits should learn something"
    other_seed = train_and_evaluate(make_run(seed=1), digits_dir, tmp_path / "c")
    assert comparable(other_seed)["history"] != comparable(first)["history"]


def test_outputs_are_complete(digits_dir, tmp_path):
    metrics = train_and_evaluate(make_run(epochs=2), digits_dir, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["test_top1"] == metrics["test_top1"]
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert on_disk["params"]["seed"] == 0 and on_disk["provenance"]["data_version"]
    assert on_disk["provenance"]["git_commit"]
    assert (tmp_path / "model.pt").exists()
    assert not (tmp_path / CHECKPOINT_NAME).exists(), "the checkpoint is removed once the run is finished"


def test_predictions_are_stored_per_eval_mode_and_give_the_recorded_accuracy(digits_dir, tmp_path):
    vpn = {"label": "vpn_dnn3", "name": "vpn", "generator": "dnn3", "generator_hidden": 16}
    metrics = train_and_evaluate(make_run(vpn, epochs=1), digits_dir, tmp_path)
    preds, target = load_predictions(tmp_path / "predictions.npz")
    assert set(preds) == set(metrics["evaluations"]) == {"class_enumeration", "no_noise", "class_enumeration_mean_sigma"}
    assert len(target) == 450 and preds["no_noise"].dtype == np.uint8
    for mode, pred in preds.items():
        assert 100.0 * (pred == target).mean() == pytest.approx(metrics["evaluations"][mode], abs=1e-4)  # float32 mean


def test_provenance_names_the_commit_the_run_started_with(digits_dir, tmp_path, monkeypatch):
    """A worktree checked out anew while a long run trains must not relabel that run's code."""
    import pipeline_src.spec.run_record as run_record

    state = {"git_commit": "a" * 40, "git_dirty": False}
    monkeypatch.setattr(run_record, "git_state", lambda: dict(state))
    metrics = train_and_evaluate(make_run(epochs=2), digits_dir, tmp_path,
                        on_epoch=lambda entry: state.update(git_commit="b" * 40))
    assert metrics["provenance"]["git_commit"] == "a" * 40


def test_vpn_history_tracks_its_sigma_each_epoch(digits_dir, tmp_path):
    vpn = {"label": "vpn", "name": "vpn", "generator": "resnet18", "generator_width": 4}
    history = train_and_evaluate(make_run(vpn, epochs=2), digits_dir, tmp_path / "vpn")["history"]
    assert [sorted(h) for h in history] == [["epoch", "seconds", "sigma_mean", "sigma_zero_fraction",
                                             "top1_true_label_noise", "train_loss", "train_top1",
                                             "wrong_label_followed"]] * 2
    assert history[0]["sigma_mean"] > 0 and 0 <= history[0]["sigma_zero_fraction"] < 1
    baseline = train_and_evaluate(make_run(epochs=1), digits_dir, tmp_path / "baseline")["history"]
    assert "sigma_mean" not in baseline[0]


def test_model_file_keeps_the_vpn_generator(digits_dir, tmp_path):
    """A finished VPN run can be measured again: its model.pt restores g as well as f."""
    import torch

    from pipeline_src.data.prepared import load_prepared

    cfg = make_run({"label": "vpn", "name": "vpn", "generator": "resnet18", "generator_width": 4}, epochs=1)
    metrics = train_and_evaluate(cfg, digits_dir, tmp_path)
    data = load_prepared(digits_dir)
    fresh = build_run_method(cfg, data)
    x_test = to_input(data.x_test, torch.device("cpu"))
    remeasure = lambda: fresh.diagnostics(x_test, data.y_test, None, cfg.eval_batch_size)  # noqa: E731
    assert remeasure()["sigma_mean"] != pytest.approx(metrics["diagnostics"]["sigma_mean"])
    fresh.load_state_dict(torch.load(tmp_path / "model.pt")["method"])
    assert remeasure() == pytest.approx(metrics["diagnostics"])


def test_metrics_record_the_method_as_it_ran(digits_dir, tmp_path):
    method = {"label": "q", "name": "noisynn", "noise": {"kind": "circular_shift"}, "apply_at": "test",
              "eval_protocols": ["none", "single"]}
    metrics = json.loads(json.dumps(train_and_evaluate(make_run(method, epochs=1), digits_dir, tmp_path)))
    spec = metrics["params"]["method"]
    # the run's one spec, every default filled: strength, site, test batches and their size
    assert spec["noise"] == {"kind": "circular_shift", "strength": 0.3}
    assert (spec["site"], spec["test_batches"], spec["test_batch_size"]) == ("default", "shuffled", 128)
    assert spec == resolve_method(method, 64, 128) and spec["eval_protocols"] == ["none", "single"]
    # and what only the built model knows: the module the site resolved to
    assert metrics["format"] == 2 and "resolved_method" not in metrics["params"]
    assert metrics["method_runtime"] == {"site_module": "head"}
    assert metrics["eval_plan"]["noise_single"]["test_batch_size"] == 1
    assert list(metrics["eval_plan"]) == list(metrics["evaluations"])


def _train_cli(cfg: RunConfig, data: Path, out: Path):
    return subprocess.run([sys.executable, "-m", "pipeline_src", "run", "--run-json", cfg.to_json(),
                           "--data", str(data), "--out", str(out)], capture_output=True, text=True, cwd=REPO_ROOT)


def _kill_after_first_checkpoint(cfg: RunConfig, data: Path, out: Path) -> None:
    """SIGKILL the training job as soon as its first epoch checkpoint is on disk, like a pre-empted node."""
    job = subprocess.Popen([sys.executable, "-m", "pipeline_src", "run", "--run-json", cfg.to_json(),
                            "--data", str(data), "--out", str(out)], cwd=REPO_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / CHECKPOINT_NAME).exists():
        assert job.poll() is None, "the job ended before its first checkpoint"
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "the kill came after the run had finished"


# epochs of about half a second each (a wide DNN3), so the kill lands inside the run
SLOW = {"epochs": 6, "hidden": 2048}


@pytest.mark.slow
def test_killed_job_resumes_from_checkpoint_with_same_result(digits_dir, tmp_path):
    cfg = make_run(**SLOW)
    uninterrupted = train_and_evaluate(cfg, digits_dir, tmp_path / "whole")

    out = tmp_path / "killed"
    _kill_after_first_checkpoint(cfg, digits_dir, out)
    resumed = _train_cli(cfg, digits_dir, out)
    assert resumed.returncode == 0, resumed.stderr
    done = int(re.search(r"resuming from .* after epoch (\d+)", resumed.stderr).group(1))
    assert 1 <= done < SLOW["epochs"]
    assert f"epoch {done}/{SLOW['epochs']}" not in resumed.stderr, "epochs before the checkpoint were redone"
    assert comparable(json.loads((out / "metrics.json").read_text())) == comparable(uninterrupted)


def test_a_run_resumed_under_other_code_records_both_versions(digits_dir, tmp_path):
    cfg, out = make_run(**SLOW), tmp_path / "run"
    _kill_after_first_checkpoint(cfg, digits_dir, out)
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert state["code_versions"][0]["from_epoch"] == 1 and state["code_versions"][0]["package_hash"]
    older = {"git_commit": "0" * 40, "git_dirty": False, "package_hash": "0" * 16, "from_epoch": 1}
    torch.save({**state, "code_versions": [older]}, out / CHECKPOINT_NAME)  # as if the code changed since
    resumed = _train_cli(cfg, digits_dir, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "under other code than it began with" in resumed.stderr
    versions = json.loads((out / "metrics.json").read_text())["provenance"]["code_versions"]
    assert versions[0] == older and versions[1]["from_epoch"] == state["epoch"] + 1
    assert versions[1]["package_hash"] != older["package_hash"]


def test_checkpoint_of_other_params_is_not_resumed(digits_dir, tmp_path):
    out = tmp_path / "run"
    _kill_after_first_checkpoint(make_run(**SLOW), digits_dir, out)
    changed = _train_cli(make_run(epochs=2), digits_dir, out)
    assert changed.returncode == 0
    assert "belongs to other params" in changed.stderr
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_lr_warms_up_linearly_then_follows_cosine_to_its_floor():
    from pipeline_src.training.train import lr_factor

    spec = {"lr": 1e-3, "schedule": "cosine", "warmup_epochs": 2, "min_lr": 1e-4}
    factors = [lr_factor(e, spec, 6) for e in range(7)]
    assert factors[:2] == [0.0, 0.5]
    # after the warm-up the cosine continues over all 6 epochs (timm's warmup_prefix=False), no restart
    assert factors[2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 6)))
    assert factors[3] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the 6 epochs
    assert factors[6] == pytest.approx(0.1)              # min_lr / lr at the end
    assert [lr_factor(e, {**spec, "schedule": "none", "warmup_epochs": 0}, 5) for e in range(5)] == [1.0] * 5


@pytest.mark.slow
def test_compiled_training_matches_eager(digits_dir, tmp_path):
    from dataclasses import replace

    method = {"label": "q", "name": "noisynn", "noise": {"kind": "circular_shift"}}
    eager = train_and_evaluate(make_run(method, epochs=2), digits_dir, tmp_path / "eager")
    compiled = train_and_evaluate(replace(make_run(method, epochs=2), compile=True), digits_dir, tmp_path / "compiled")
    assert compiled["params"]["compile"] is True and eager["params"]["compile"] is False
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert compiled["evaluations"] == pytest.approx(eager["evaluations"], abs=0.5)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """DistributedDataParallel on CPU (gloo): 2 processes x 32 samples per step against 1 x 64, on 256
    training images (no batch left over). The gradients are the same means, so the runs agree up to
    the order of float sums: the stated tolerance is 1e-4 relative on every epoch's loss and a tenth of
    a point of test accuracy."""
    from dataclasses import replace

    data = tmp_path / "clutter"
    prepare("clutter", {"source": "synthetic-clutter", "n_train": 256, "n_test": 64, "image_size": 8}, data, REPO_ROOT)
    one = replace(make_run(epochs=3), batch_size=64)
    single = _train_cli(one, data, tmp_path / "one")
    assert single.returncode == 0, single.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "pipeline_src", "run", "--run-json", replace(one, batch_size=32).to_json(),
                          "--data", str(data), "--out", str(tmp_path / "two"), "--threads", "1"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert b["distributed"] == {"world_size": 2, "backend": "gloo", "per_process_batch_size": 32}
    assert [h["train_loss"] for h in b["history"]] == pytest.approx([h["train_loss"] for h in a["history"]], rel=1e-4)
    assert b["evaluations"] == pytest.approx(a["evaluations"], abs=0.1)
    assert not list((tmp_path / "two").glob("*.pt.*"))  # one writer: no stray temporary files
