"""The evaluate stage: a trained model.pt measured in a job of its own scores exactly what the same run
scores in one process, takes new test protocols without retraining, and refuses a model of other params."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline_src.data.prepared import load_prepared, prepare
from pipeline_src.data.stream import to_input
from pipeline_src.evaluation.evaluate import evaluate_run
from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.methods.registry import build_run_method
from pipeline_src.spec.predictions import load_predictions
from pipeline_src.training.train import train_run
from pipeline_src.__main__ import train_and_evaluate

from helpers import make_run

VPN = {"label": "vpn_dnn3", "name": "vpn", "generator": "dnn3", "generator_hidden": 16}
NOISY = {"label": "clean_train", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "test",
         "test_batches": "class_sorted"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline_src", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT)


def test_train_and_evaluate_as_two_jobs_score_what_one_job_scored(digits_dir, tmp_path):
    """Before evaluation was a stage, a run was measured in its training process, with the global RNG
    where training had left it; the VPN class enumeration draws from it. The evaluate job continues that
    stream (model.pt "rng"), so splitting a run changes none of its per-image predictions."""
    cfg = make_run(VPN, epochs=2)
    train_run(cfg, digits_dir, tmp_path / "here")
    ended_on = torch.get_rng_state()
    data = load_prepared(digits_dir)
    method = build_run_method(cfg, data)
    method.load_state_dict(torch.load(tmp_path / "here" / "model.pt", weights_only=True)["method"])
    x_test = to_input(data.x_test, torch.device("cpu"))
    torch.set_rng_state(ended_on)
    one_job = {m: p.numpy() for m, p in method.eval_predictions(x_test, data.y_test, cfg.eval_batch_size).items()}
    torch.manual_seed(cfg.seed)
    other_stream = method.eval_predictions(x_test, data.y_test, cfg.eval_batch_size)["class_enumeration"]
    assert (other_stream.numpy() != one_job["class_enumeration"]).any(), "the enumeration draws from the stream"

    model = tmp_path / "jobs" / "model.pt"
    trained = cli("train", "--run-json", cfg.training_identity().to_json(), "--data", digits_dir, "--model", model)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert not (model.parent / "metrics.json").exists(), "train measures nothing on the test set"
    evaluated = cli("evaluate", "--run-json", cfg.to_json(), "--data", digits_dir, "--model", model,
                    "--metrics", model.parent / "metrics.json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]

    preds, target = load_predictions(model.parent / "predictions.npz")
    assert preds.keys() == one_job.keys() and all(np.array_equal(preds[m], one_job[m]) for m in preds)
    metrics = json.loads((model.parent / "metrics.json").read_text())
    assert metrics["evaluations"] == pytest.approx({m: 100.0 * (p == target).mean() for m, p in one_job.items()},
                                                   abs=1e-4)
    assert metrics["provenance"]["evaluation"]["snakemake_rule"] == "evaluate"
    assert len(metrics["history"]) == 2 and metrics["params_hash"] == cfg.params_hash()


def test_more_test_protocols_measure_the_same_trained_model_again(digits_dir, tmp_path):
    """The evaluation-only keys are not in the training identity: one model serves every protocol, and its
    new modes score what a run trained with them from the start scores."""
    first = make_run(NOISY, epochs=1)
    original = train_and_evaluate(first, digits_dir, tmp_path / "run")
    wider = replace(first, method=resolve_method({**NOISY, "eval_protocols": ["none", "shuffled", "single"],
                                                  "eval_batch_sizes": [4]}, 64, 128))
    assert wider.training_identity() == first.training_identity() and wider.params_hash() != first.params_hash()

    again = evaluate_run(wider, digits_dir, tmp_path / "run" / "model.pt", tmp_path / "run" / "metrics.json")
    assert list(again["evaluations"]) == ["noise_class_sorted", "no_noise", "noise_shuffled", "noise_single",
                                          "noise_shuffled_b4"]
    assert again["evaluations"]["noise_class_sorted"] == original["evaluations"]["noise_class_sorted"]
    assert again["history"] == original["history"]
    from_scratch = train_and_evaluate(wider, digits_dir, tmp_path / "scratch")
    assert from_scratch["evaluations"] == again["evaluations"]


def test_a_model_trained_under_other_params_is_refused_in_one_line(digits_dir, tmp_path):
    cfg = make_run(epochs=1)
    train_and_evaluate(cfg, digits_dir, tmp_path)
    other = replace(cfg, seed=1)
    out = cli("evaluate", "--run-json", other.to_json(), "--data", digits_dir, "--model", tmp_path / "model.pt",
              "--metrics", tmp_path / "other.json")
    assert out.returncode == 2 and not (tmp_path / "other.json").exists()
    assert out.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'trained.json'} was trained under other params than run {cfg.run_id} "
        "(differing: seed); retrain it (delete its model.pt)"]
