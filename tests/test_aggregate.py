"""Per-set summaries over seeds, from metrics.json files as train writes them."""
import copy
import json

import pytest

import pandas as pd

from pipeline_src.results.aggregate import SetFiles, load_histories, load_runs, recipe, summarize, write_table


def write_run(tmp_path, seed, top1, diagnostics):
    metrics = {"run_id": f"d-m-vpn-s{seed}", "experiment_set": "s", "set_kind": "vpn_joint", "dataset": "d",
               "model": "m", "seed": seed, "scale": "paper", "sweep": {},
               "params": {"method": {"label": "vpn", "name": "vpn"}}, "provenance": {"device": "cpu"},
               "evaluations": {"class_enumeration": top1, "no_noise": top1 - 1.0}, "diagnostics": diagnostics,
               "method": "vpn", "method_name": "vpn",
               "history": [{"epoch": e, "train_loss": 1.0 / e, "seconds": 2.0, **diagnostics} for e in (1, 2)]}
    path = tmp_path / f"s{seed}.json"
    path.write_text(json.dumps(metrics))
    return path


def test_a_diagnostic_recorded_by_some_runs_says_how_many(tmp_path):
    paths = [write_run(tmp_path, 0, 80.0, {"sigma_mean": 0.0, "sigma_zero_fraction": 1.0}),
             write_run(tmp_path, 1, 82.0, {})]
    long = load_runs(paths)
    table = summarize(long, ["dataset", "model", "method", "eval_mode"]).set_index("eval_mode")
    assert table.loc["class_enumeration", "n_seeds"] == 2
    assert table.loc["class_enumeration", "top1_mean"] == pytest.approx(81.0)
    assert table.loc["no_noise", "top1_std"] == pytest.approx(2 ** 0.5)
    assert table.loc["no_noise", "sigma_zero_fraction_mean"] == 1.0
    assert table.loc["no_noise", "sigma_zero_fraction_n"] == 1
    assert "top1_n" not in table.columns


def test_histories_hold_every_epoch_of_every_run(tmp_path):
    paths = [write_run(tmp_path, 0, 80.0, {"sigma_mean": 0.0}), write_run(tmp_path, 1, 82.0, {})]
    history = load_histories(paths)
    assert list(zip(history["seed"], history["epoch"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert history["train_loss"].tolist() == [1.0, 0.5, 1.0, 0.5]
    assert history["sigma_mean"].isna().tolist() == [False, False, True, True]
    assert set(history["method_name"]) == {"vpn"}


def test_the_markdown_table_keeps_a_small_sigma_apart_from_none(tmp_path):
    table = pd.DataFrame({"method": ["vpn"], "top1_mean": [82.944], "sigma_mean_mean": [0.00063],
                          "sigma_zero_fraction_mean": [0.0]})
    files = SetFiles.in_results(tmp_path, "s")
    files.table.parent.mkdir(parents=True)
    write_table(table, files, "s")
    row = files.markdown.read_text().splitlines()[-1]
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["vpn", "82.94", "0.0006", "0.0000"]


def noisynn_record(tmp_path, experiment_set, label, apply_at, epochs=10, noise="optimal_q", **noise_keys):
    metrics = {"run_id": f"d-m-{label}-s0", "experiment_set": experiment_set, "set_kind": "eval_protocol",
               "dataset": "d", "model": "m", "seed": 0, "scale": "paper", "sweep": {}, "method": label,
               "method_name": "noisynn", "reading": "",
               "params": {"run_id": f"d-m-{label}-s0", "experiment_set": experiment_set, "dataset": "d",
                          "model_cfg": {"arch": "resnet18"}, "epochs": epochs, "batch_size": 128,
                          "optimizer": {"name": "adam", "lr": 0.001}, "protocol": "paper", "scale": "paper",
                          "label_smoothing": 0.0, "seed": 0, "device": "auto",
                          "method": {"label": label, "name": "noisynn", "noise": {"kind": noise, **noise_keys},
                                     "apply_at": apply_at, "site": "default"}},
               "provenance": {"device": "cpu", "data_version": "abc"}, "evaluations": {"no_noise": 90.0},
               "history": []}
    path = tmp_path / experiment_set / label / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return path


def test_runs_say_what_they_are_and_which_recipe_trained_them(tmp_path):
    long = load_runs([noisynn_record(tmp_path, "a", "clean_train", "test"),
                      noisynn_record(tmp_path, "b", "shift_train", "both", noise="circular_shift"),
                      noisynn_record(tmp_path, "c", "clean_long", "test", epochs=20)]).set_index("method")
    assert long.loc["clean_train", ["noise", "apply_at", "site", "trained_clean"]].tolist() == [
        "optimal_q", "test", "default", True]
    assert long.loc["shift_train", ["noise", "apply_at", "trained_clean"]].tolist() == ["circular_shift", "both", False]
    # one training block in two sets is one recipe (a legitimate pair); more epochs are another
    assert long.loc["clean_train", "recipe"] == long.loc["shift_train", "recipe"] != long.loc["clean_long", "recipe"]


def test_an_older_record_without_the_filled_optimizer_keys_keeps_its_recipe():
    """Committed ViT records trained before the schema filled warmup_epochs, min_lr and label_smoothing
    hashed to another recipe than their bit-identical reruns, so 2 of 5 seeds lost their control."""
    filled = {"params": {"dataset": "d", "model_cfg": {"arch": "vit"}, "epochs": 20, "batch_size": 128,
                         "optimizer": {"name": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0,
                                       "schedule": "cosine", "warmup_epochs": 0, "min_lr": 0.0},
                         "protocol": "paper", "label_smoothing": 0.0, "scale": "paper"},
              "model": "m", "reading": "", "provenance": {"data_version": "abc"}}
    older = copy.deepcopy(filled)
    del older["params"]["optimizer"]["warmup_epochs"], older["params"]["optimizer"]["min_lr"]
    older["params"]["label_smoothing"] = None
    assert recipe(older) == recipe(filled)
    other = copy.deepcopy(filled)
    other["params"]["optimizer"]["warmup_epochs"] = 2
    assert recipe(other) != recipe(filled)


def test_noise_at_strength_zero_is_no_noise_to_select(tmp_path):
    # a strength sweep's first point trains and tests with the identity: no claim about noise may take it
    long = load_runs([noisynn_record(tmp_path, "s", "shift_a0", "both", noise="circular_shift", strength=0.0),
                      noisynn_record(tmp_path, "t", "shift_a4", "both", noise="circular_shift", strength=0.4)])
    assert long.set_index("method")["noise"].to_dict() == {"shift_a0": "", "shift_a4": "circular_shift"}
