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
