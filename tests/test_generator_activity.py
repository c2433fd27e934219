"""The generator-activity table: each VPN generator run's sigmas and changed predictions, read from real
committed records, and its state under the declared manipulation check."""
import json
import shutil

import numpy as np
import pandas as pd

from pipeline_src.results.generator_activity import activity_table, manipulation_check, run_activity
from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.spec.predictions import load_predictions, save_predictions

REPORT = REPO_ROOT / "reports" / "fashion-mnist"
CLAIMS = REPO_ROOT / "params" / "claims.yaml"
RUN = REPORT / "runs" / "vpn_joint_default_recipe" / "fmnist-sr-vpn_dnn3.sgd_default-s0"


def _copy(tmp_path, sigma=None, same_predictions=False, predictions=True):
    """A committed generator run, its test sigma and predictions altered as asked."""
    target = tmp_path / "runs" / RUN.parent.name / RUN.name
    shutil.copytree(RUN, target)
    record = json.loads((target / "metrics.json").read_text())
    if sigma is not None:
        record["diagnostics"]["sigma_mean"] = sigma
    (target / "metrics.json").write_text(json.dumps(record))
    if same_predictions:
        preds, truth = load_predictions(target / "predictions.npz")
        save_predictions(target / "predictions.npz", {m: preds["no_noise"] for m in preds}, truth)
    if not predictions:
        (target / "predictions.npz").unlink()
    return target / "metrics.json", record


def test_a_run_line_reads_training_sigma_by_epoch_test_sigma_and_the_predictions_its_noise_changed(tmp_path):
    path, record = _copy(tmp_path)
    line = run_activity(path, manipulation_check(CLAIMS), "ours")
    history = {h["epoch"]: h["sigma_mean"] for h in record["history"]}
    assert line["sigma_epoch1"] == history[1] and line["sigma_epoch10"] == history[10]
    assert line["last_epoch"] == 40 and line["sigma_last_epoch"] == history[40]
    assert line["sigma_test"] == record["diagnostics"]["sigma_mean"]
    preds, _ = load_predictions(path.with_name("predictions.npz"))
    assert line["changed_share"] == np.mean(preds["class_enumeration"] != preds["no_noise"]) > 0
    assert line["state"] == "active" and line["reading"] == "sgd_default"


def test_a_run_is_inert_only_when_both_measures_are_below_and_unknown_without_predictions(tmp_path):
    check = manipulation_check(CLAIMS)
    low = check["min_sigma_mean"] / 2
    inert = run_activity(_copy(tmp_path / "a", sigma=low, same_predictions=True)[0], check, "ours")
    assert inert["state"] == "inert" and inert["changed_share"] == 0.0
    loud = run_activity(_copy(tmp_path / "b", sigma=2 * check["min_sigma_mean"], same_predictions=True)[0], check, "ours")
    assert loud["state"] == "active"  # sigma alone reaches its threshold
    blind = run_activity(_copy(tmp_path / "c", sigma=low, predictions=False)[0], check, "ours")
    assert blind["state"] == "unknown" and blind["changed_share"] is None


def test_baselines_are_left_out_and_a_run_without_a_reading_takes_the_params_own(tmp_path):
    check = manipulation_check(CLAIMS)
    baseline = REPORT / "runs" / "vpn_joint_default_recipe" / "fmnist-sr-baseline.sgd_default-s0" / "metrics.json"
    assert run_activity(baseline, check, "ours") is None
    # a record from before readings and diagnostics: no reading, no sigma, no predictions
    path, record = _copy(tmp_path, predictions=False)
    record.pop("reading")
    record.pop("diagnostics")
    path.write_text(json.dumps(record))
    table = activity_table({"old": [path]}, check, "ours")
    assert table[["reading", "runs", "unknown"]].values.tolist() == [["ours", 1, 1]]


def test_the_committed_table_is_what_the_committed_runs_give():
    committed = pd.read_csv(REPORT / "tables" / "generator_activity.csv", keep_default_na=False, na_values=[""])
    by_set = {}
    for path in sorted((REPORT / "runs").glob("vpn_*/*/metrics.json")):
        by_set.setdefault(path.parent.parent.name, []).append(path)
    rebuilt = activity_table(by_set, manipulation_check(CLAIMS), "ours")
    key = ["experiment_set", "reading", "dataset", "model", "method"]
    committed, rebuilt = (t.sort_values(key).reset_index(drop=True) for t in (committed, rebuilt))
    assert committed[key + ["runs", "active", "inert", "unknown"]].equals(rebuilt[key + ["runs", "active", "inert", "unknown"]])
    assert np.allclose(committed["sigma_test"], rebuilt["sigma_test"], rtol=1e-5, equal_nan=True)
