"""Harmful noise as evaluation-only runs: Gaussian or impulse noise switched on at test only on a clean-trained
base run's model. Such a run has no train job, its record names the base whose model it measured, `check`
refuses a base that is missing or trained with noise, and the audit pairs each noisy run with its base."""
import copy
import json

import pandas as pd
import pytest
import yaml

from helpers import job_counts, snakemake
from pipeline_src.__main__ import main
from pipeline_src.evaluation.evaluate import evaluate_run
from pipeline_src.spec.config import ParamsError, expand_runs, validate_params
from pipeline_src.spec.preflight import check_runs, model_run_of
from pipeline_src.training.train import train_run

BASE = {"label": "baseline", "name": "baseline"}


def gaussian(strengths: list[float], base_label: str = "baseline", **keys) -> dict:
    return {"label": "gaussian_image", "name": "noisynn", "site": "image", "noise": {"kind": "gaussian"},
            "apply_at": "test", "base_set": "harm", "base_label": base_label, "grid": {"noise.strength": strengths},
            **keys}


def harm_params(results_dir, methods: list[dict], seeds=(0, 1, 2)) -> dict:
    """A set `harm` of dnn3 on digits: a clean base and evaluation-only noise on its model."""
    return {"scale": "embedded_default", "device": "cpu", "results_dir": str(results_dir), "seeds": list(seeds),
            "training": {"epochs": 3, "batch_size": 64, "eval_batch_size": 128},
            "datasets": {"digits": {"source": "digits"}},
            "models": {"dnn3": {"arch": "dnn3", "hidden": 32}},
            "experiment_sets": {"harm": {"kind": "harmful_noise", "datasets": ["digits"], "models": ["dnn3"],
                                         "methods": methods}}}


def check_lines(tmp_path, params: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    code = main(["check", "--params", str(path)])
    return code, capsys.readouterr().err.splitlines()


# ---------------------------------------------------------------- check: the base must exist and train clean

def test_an_evaluation_only_run_measures_its_base_of_the_same_seed(tmp_path):
    params = validate_params(harm_params(tmp_path, [BASE, gaussian([0.1, 0.5])], seeds=[0, 1]))
    runs = expand_runs(params)
    check_runs(params, runs, models=False)
    noisy = {r.run_id: r for r in runs if r.method["name"] == "noisynn"}
    assert model_run_of(noisy["digits-dnn3-gaussian_image-strength0.5-s1"]) == ("harm", "digits-dnn3-baseline-s1")
    base = next(r for r in runs if r.method["name"] == "baseline")
    assert model_run_of(base) == ("harm", base.run_id)


def test_check_refuses_a_missing_base_in_one_line(tmp_path, capsys):
    params = harm_params(tmp_path / "results", [BASE, gaussian([0.1], base_label="clean")])
    code, lines = check_lines(tmp_path, params, capsys)
    assert code == 2 and lines == [
        "error: invalid params: experiment_sets.harm run digits-dnn3-gaussian_image-strength0.1-s0: base_set 'harm', "
        "base_label 'clean': no run 'digits-dnn3-clean-s0' in the params to take the trained model from"]


@pytest.mark.parametrize("base, why", [
    ({"label": "noisy", "name": "noisynn", "noise": {"kind": "gaussian", "strength": 0.1}, "apply_at": "both"},
     "base run 'digits-dnn3-noisy-s0' (method 'noisy') trains with noise"),
    ({"label": "noisy", "name": "baseline", "augment": {"kind": "random_noise"}},
     "base run 'digits-dnn3-noisy-s0' (method 'noisy') trains with noise"),
    ({"label": "noisy", "name": "vpn", "generator": "dnn3", "generator_hidden": 16},
     "base run 'digits-dnn3-noisy-s0' (method 'noisy') trains with noise"),
])
def test_check_refuses_a_base_trained_with_noise_in_one_line(base, why, tmp_path, capsys):
    params = harm_params(tmp_path / "results", [base, gaussian([0.1], base_label="noisy")])
    code, lines = check_lines(tmp_path, params, capsys)
    assert code == 2 and len(lines) == 1
    run = "experiment_sets.harm run digits-dnn3-gaussian_image-strength0.1-s0"
    assert lines[0].startswith(f"error: invalid params: {run}: {why}")


def test_check_refuses_noise_in_training_or_another_training_block(tmp_path):
    params = harm_params(tmp_path, [BASE, gaussian([0.1], apply_at="both")])
    with pytest.raises(ParamsError, match=r"run digits-dnn3-gaussian_image-strength0\.1-s0: apply_at 'both'"):
        check_runs(validate_params(params), expand_runs(validate_params(params)), models=False)
    # a base in another set with another training block: its model is not what the run's params describe
    params = harm_params(tmp_path, [gaussian([0.1], base_set="clean_set")])
    params["experiment_sets"]["clean_set"] = {"datasets": ["digits"], "models": ["dnn3"], "methods": [BASE],
                                              "training": {"epochs": 5}}
    params = validate_params(params)
    with pytest.raises(ParamsError, match=r"epochs 3 differs from base run 'digits-dnn3-baseline-s0'\'s 5"):
        check_runs(params, expand_runs(params), models=False)


# ---------------------------------------------------------------- the evaluate step on its base's model

def test_the_record_names_its_base_and_refuses_another_runs_model(tmp_path, digits_dir):
    params = validate_params(harm_params(tmp_path, [BASE, gaussian([3.0]),
                                                    {**BASE, "label": "other"}], seeds=[0]))
    runs = {r.method["label"]: r for r in expand_runs(params)}
    train_run(runs["baseline"], digits_dir, tmp_path / "base")
    record = evaluate_run(runs["gaussian_image"], digits_dir, tmp_path / "base" / "model.pt",
                          tmp_path / "noisy" / "metrics.json")
    assert record["model_from"]["experiment_set"] == "harm"
    assert record["model_from"]["run_id"] == "digits-dnn3-baseline-s0"
    assert record["history"] == []  # the base's epochs stay in the base's record
    assert json.loads((tmp_path / "noisy" / "metrics.json").read_text())["model_from"] == record["model_from"]
    own = evaluate_run(runs["baseline"], digits_dir, tmp_path / "base" / "model.pt", tmp_path / "base" / "metrics.json")
    assert own["model_from"]["run_id"] == own["run_id"] and own["history"]
    assert record["evaluations"]["noise_shuffled"] < own["evaluations"]["no_noise"]
    # a model trained by another run, even a clean one of the same recipe, is not this run's base
    train_run(runs["other"], digits_dir, tmp_path / "other")
    with pytest.raises(ValueError, match="not of run digits-dnn3-gaussian_image-strength3.0-s0's base "
                                         "harm/digits-dnn3-baseline-s0"):
        evaluate_run(runs["gaussian_image"], digits_dir, tmp_path / "other" / "model.pt",
                     tmp_path / "noisy2" / "metrics.json")


# ---------------------------------------------------------------- through Snakemake: train once, evaluate many

@pytest.mark.slow
def test_tiny_run_pairs_noise_with_its_base_and_a_new_strength_only_evaluates(tmp_path):
    results = tmp_path / "results"
    params = harm_params(results, [BASE, gaussian([3.0])])
    path = tmp_path / "harm.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))

    first = snakemake("-n", "--cores", "2", "--configfile", str(path))
    counts = job_counts(first.stdout + first.stderr)
    assert counts["train"] == 3 and counts["evaluate"] == 6  # the three bases train; the noisy runs only evaluate
    snakemake("--cores", "2", "--configfile", str(path))

    runs = results / "runs" / "harm"
    for seed in (0, 1, 2):
        base, noisy = runs / f"digits-dnn3-baseline-s{seed}", runs / f"digits-dnn3-gaussian_image-strength3.0-s{seed}"
        assert not (noisy / "model.pt").exists() and not (noisy / "train.log").exists()
        record = json.loads((noisy / "metrics.json").read_text())
        assert (record["model_from"]["experiment_set"], record["model_from"]["run_id"]) == ("harm", base.name)
        clean = json.loads((base / "metrics.json").read_text())["evaluations"]["no_noise"]
        assert record["evaluations"]["noise_shuffled"] < clean - 10  # std 3 on [0, 1] pixels: far below clean

    cells = pd.read_csv(results / "effects_cells.csv", keep_default_na=False)
    gaussian_cells = cells[cells["claim_id"] == "noisynn.gaussian_hurts"]
    assert list(gaussian_cells["treatment"]) == ["harm/gaussian_image-strength3.0 [noise_shuffled]"]
    assert list(gaussian_cells["control"]) == ["harm/baseline [no_noise]"]
    assert int(gaussian_cells["n"].iloc[0]) == 3 and float(gaussian_cells["mean"].iloc[0]) < -10
    evidence = gaussian_cells["evidence"].iloc[0].split()
    assert {f"harm/digits-dnn3-baseline-s{s}" for s in (0, 1, 2)} <= set(evidence)

    # one more strength: evaluate jobs on the trained bases, no training
    more = copy.deepcopy(params)
    more["experiment_sets"]["harm"]["methods"][1]["grid"]["noise.strength"] = [3.0, 0.05]
    path.write_text(yaml.safe_dump(more, sort_keys=False))
    again = snakemake("-n", "--cores", "2", "--configfile", str(path))
    counts = job_counts(again.stdout + again.stderr)
    assert "train" not in counts and counts["evaluate"] == 3
    assert counts == {"evaluate": 3, "track_set": 1, "aggregate_set": 1, "audit": 1, "track_audit": 1, "all": 1}


# ---------------------------------------------------------------- the audit: a noisy run's control is its base

def run_line(set_name, label, eval_mode, seed, top1, model_from="", noise="", apply_at="", trained_clean=True):
    run_id = f"fmnist-vit6-{label}-s{seed}"
    return {"set": set_name, "kind": "any_kind", "dataset": "fmnist", "model": "vit6", "method": label,
            "eval_mode": eval_mode, "seed": seed, "top1": top1, "run_id": run_id, "scale": "paper",
            "dataset_paper": "fashion-mnist", "model_paper": "vit6", "config": label,
            "evidence": f"{set_name}/{run_id}", "model_from": model_from.format(seed=seed), "noise": noise,
            "apply_at": apply_at, "site": "image" if noise else "", "trained_clean": trained_clean,
            "recipe": "r1", "reading": "ours", "predictions": ""}


def test_the_claim_pairs_an_evaluation_only_run_with_its_base_before_any_other_clean_model():
    from pipeline_src.results.audit import load_claims
    from pipeline_src.results.selection import paired_values
    from pipeline_src.spec.config import REPO_ROOT

    claim = next(c for c in load_claims(REPO_ROOT / "params" / "claims.yaml")["effects"]
                 if c["id"] == "noisynn.gaussian_hurts")
    lines = []
    for s in range(3):
        lines += [run_line("base", "baseline", "no_noise", s, 90.0 + s),
                  # a clean model of the same recipe in the noisy run's own set: same seed, other weights
                  run_line("noisy", "other_clean", "no_noise", s, 80.0),
                  run_line("noisy", "gaussian_image", "noise_single", s, 85.0 + s,
                           model_from="base/fmnist-vit6-baseline-s{seed}", noise="gaussian", apply_at="test")]
    pairs = paired_values(pd.DataFrame(lines), claim["test"])
    assert set(pairs["control"]) == {"base/baseline [no_noise]"}
    assert list(pairs["value"]) == [-5.0, -5.0, -5.0]
    # a record from before model_from (an empty field) measured its own model: the same-set control is nearest
    lines = [{**line, "model_from": ""} for line in lines]
    assert set(paired_values(pd.DataFrame(lines), claim["test"])["control"]) == {"noisy/other_clean [no_noise]"}


def test_an_evaluation_only_run_tested_clean_is_its_bases_control_not_a_second_one():
    from pipeline_src.results.audit import load_claims
    from pipeline_src.results.selection import paired_values
    from pipeline_src.spec.config import REPO_ROOT

    claim = next(c for c in load_claims(REPO_ROOT / "params" / "claims.yaml")["effects"]
                 if c["id"] == "noisynn.linear_helps")
    lines = []
    for s in range(3):
        lines += [run_line("base", "clean_train", "no_noise", s, 92.0),
                  # evaluation-only on the base's model (its clean evaluation: the base's weights again)
                  run_line("branch", "branch_only", "no_noise", s, 92.0, model_from="base/fmnist-vit6-clean_train-s{seed}",
                           noise="optimal_q", apply_at="test"),
                  run_line("shift", "shift_train", "noise_shuffled", s, 89.0 + s, noise="circular_shift",
                           apply_at="both", trained_clean=False)]
    lines = [{**line, "site": "default" if line["noise"] else ""} for line in lines]
    pairs = paired_values(pd.DataFrame(lines), claim["test"])
    assert set(pairs["control"]) == {"base/clean_train [no_noise]"} and len(pairs) == 3
    # without its base among the runs, the evaluation-only run's clean evaluation is the control
    alone = [line for line in lines if line["set"] != "base"]
    assert set(paired_values(pd.DataFrame(alone), claim["test"])["control"]) == {"branch/branch_only [no_noise]"}
