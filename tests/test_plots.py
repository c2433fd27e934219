"""Set figures: what each panel draws, read back from the matplotlib figure before it is saved."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from pipeline_src.results import plots


@pytest.fixture
def drawn(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    yield figures
    plt.close("all")


def test_a_set_under_readings_gets_a_panel_per_reading_and_no_bar_pools_two(drawn, tmp_path):
    top1 = {"sgd_code": [83.0, 83.2], "sgd_plain": [73.0, 72.8]}
    long = pd.DataFrame([{"dataset": "fmnist", "model": "dnn3", "method": "vpn_dnn3", "eval_mode": "no_noise",
                          "reading": reading, "seed": seed, "top1": value}
                         for reading, values in top1.items() for seed, value in enumerate(values)])
    plots.plot_bars("vpn_frozen_readings", long, tmp_path / "bars.png")
    heights = {ax.get_title(): [round(bar.get_height(), 6) for bar in ax.patches] for ax in drawn[0].axes}
    assert heights == {"model = dnn3 | reading = sgd_code": [83.1], "model = dnn3 | reading = sgd_plain": [72.9]}


def test_training_curves_under_readings_name_each_reading_and_log_a_diverging_loss(drawn, tmp_path):
    history = pd.DataFrame([{"run_id": f"{reading}-s0", "model": "sr", "method": "baseline", "method_name": "baseline",
                             "reading": reading, "epoch": epoch, "train_loss": loss * epoch, "train_top1": 80.0}
                            for reading, loss in (("adam_code", 500.0), ("sgd_plain", 0.5)) for epoch in (1, 2)])
    plots.plot_training_curves("vpn_joint_readings", history, tmp_path / "curves.png")
    loss_axes = drawn[0].axes[0]
    assert {"adam_code", "sgd_plain"} <= {text.get_text() for text in loss_axes.get_legend().get_texts()}
    assert loss_axes.get_yscale() == "log"


def test_a_model_whose_generator_runs_have_not_landed_gets_a_named_empty_panel(drawn, tmp_path):
    rows = [{"run_id": f"{model}-{method}-s0", "model": model, "method": method, "method_name": method.split("_")[0],
             "reading": "ours", "epoch": epoch, "train_loss": 0.5, "train_top1": 80.0,
             "sigma_zero_fraction": 0.0 if method == "vpn_dnn3" else None}
            for model, methods in (("sr", ("baseline", "vpn_dnn3")), ("dnn3", ("baseline",)))
            for method in methods for epoch in (1, 2)]
    plots.plot_training_curves("vpn_joint", pd.DataFrame(rows), tmp_path / "curves.png")
    sigma_row = drawn[0].axes[4:]
    assert [len(ax.get_lines()) for ax in sigma_row] == [1, 0]
    assert [text.get_text() for text in sigma_row[1].texts] == ["no runs log this yet"]


def test_an_eval_protocol_figure_draws_each_distinct_evaluation_once_named_by_its_batch(drawn, tmp_path):
    """The method's own test batch (512) is also one of its extra sizes: one bar, not two."""
    from pipeline_src.results.aggregate import eval_protocol_columns, summarize

    modes = {"no_noise": ("-", 256), "noise_single": ("single", 1), "noise_class_sorted": ("class_sorted", 512),
             "noise_class_sorted_b10": ("class_sorted", 10), "noise_class_sorted_b512": ("class_sorted", 512),
             "noise_shuffled_b10": ("shuffled", 10)}
    top1 = {"no_noise": 91.0, "noise_single": 91.0, "noise_class_sorted": 96.0, "noise_class_sorted_b10": 95.0,
            "noise_class_sorted_b512": 96.0, "noise_shuffled_b10": 89.0}
    long = pd.DataFrame([{"dataset": "fmnist", "model": "resnet18_w8", "method": "shift_train", "eval_mode": mode,
                          "seed": seed, "top1": top1[mode] + seed, "run_id": f"r-s{seed}", "scale": "paper",
                          "train_noise": True, "test_batches": how, "test_batch_size": size}
                         for mode, (how, size) in modes.items() for seed in (0, 1)])
    table = eval_protocol_columns(summarize(long, ["dataset", "model", "method", "eval_mode"],
                                            extra_first=["train_noise", "test_batches", "test_batch_size"]))
    assert "delta_vs_clean" not in table.columns  # no clean-trained model in this set to differ from
    assert table.set_index("eval_mode")["test_batch_size"].to_dict() == {
        "no_noise": "-", "noise_single": "1", "noise_class_sorted": "512", "noise_class_sorted_b10": "10",
        "noise_class_sorted_b512": "512", "noise_shuffled_b10": "10"}
    plots.plot_eval_protocol("cnn_shift", table, tmp_path / "bars.png")
    ax = drawn[0].axes[0]
    labels = [tick.get_text() for tick in ax.get_xticklabels()]
    assert labels == ["noise at train\n(clean test)", "noise at both\none image at a time",
                      "noise at both\nclass-sorted batches of 10", "noise at both\nclass-sorted batches of 512",
                      "noise at both\nshuffled batches of 10"]
    assert [round(bar.get_height(), 6) for bar in ax.patches] == [91.5, 91.5, 95.5, 96.5, 89.5]
