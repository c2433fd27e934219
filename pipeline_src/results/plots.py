"""Figures (seaborn and matplotlib, PNG, written atomically): the experiment-set tables and the audit.
A VPN run's own figure of its noise scale is drawn by the training job (methods/vpn_figure.py)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline_src.fileio import save_figure  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _block_index(site: str) -> int:
    """The depth of a swept site (block:<i> or stage:<i>); -1 for other sites."""
    kind, _, index = site.partition(":") if isinstance(site, str) else ("", "", "")
    return int(index) if kind in ("block", "stage") else -1


def plot_layer_sweep(name: str, long: pd.DataFrame, path: Path) -> None:
    data = long[long["eval_mode"] == long.groupby("run_id")["eval_mode"].transform("first")].copy()
    data["block"] = data["site"].map(_block_index)
    grid = sns.relplot(data=data, x="block", y="top1", hue="model", col="dataset", kind="line", marker="o",
                       errorbar="sd", height=3.6, aspect=1.3, facet_kws={"sharey": False})
    grid.set_axis_labels("noise injected before block (0 = first)", "test top-1 (%)")
    for ax in grid.axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    grid.figure.suptitle(f"{name}: accuracy vs injection depth (mean ± sd over seeds)", y=1.04)
    save_figure(grid.figure, path)


def plot_strength_sweep(name: str, long: pd.DataFrame, path: Path) -> None:
    """Accuracy vs noise strength per method; runs without a strength (the clean baseline) as a dashed line."""
    strength_cols = [c for c in ("strength", "p") if c in long.columns]
    data = long[long["eval_mode"] == long.groupby("run_id")["eval_mode"].transform("first")].copy()
    xlabel = "noise strength (a or s; p for impulse)"
    data[xlabel] = data[strength_cols].bfill(axis=1).iloc[:, 0]
    swept = data.dropna(subset=[xlabel])
    grid = sns.relplot(data=swept, x=xlabel, y="top1", hue="method", col="dataset", row="model", kind="line",
                       marker="o", errorbar="sd", height=3.4, aspect=1.4, facet_kws={"sharey": False, "sharex": False})
    clean = data[data[xlabel].isna()].groupby(["dataset", "model"])["top1"].mean()
    for (model, dataset), ax in grid.axes_dict.items() if grid.axes.ndim == 2 and len(grid.row_names) else []:
        if (dataset, model) in clean:
            ax.axhline(clean[(dataset, model)], color="grey", linestyle="--")
    grid.set_ylabels("test top-1 (%)")
    title = f"{name}: accuracy vs noise strength (mean ± sd over seeds)"
    grid.figure.suptitle(title + ("\n(dashed line: the clean baseline)" if len(clean) else ""), y=1.1)
    save_figure(grid.figure, path)


def plot_eval_protocol(name: str, table: pd.DataFrame, path: Path) -> None:
    """One bar per distinct evaluation: a method's own test batch is also among its extra sizes."""
    data = table.drop_duplicates(["dataset", "model", "method", "apply_at", "test_batches", "test_batch_size"]).copy()
    order = pd.DataFrame({"method": data["method"].map({m: i for i, m in enumerate(data["method"].unique())}),
                          "protocol": data["test_batches"].map({"-": 0, "single": 1, "class_sorted": 2, "shuffled": 3}),
                          "size": pd.to_numeric(data["test_batch_size"], errors="coerce")})
    data = data.loc[order.sort_values(["method", "protocol", "size"]).index]
    batches = data["test_batches"].str.replace("_", "-") + " batches of " + data["test_batch_size"]
    data["setting"] = "noise at " + data["apply_at"] + "\n" + batches
    data.loc[data["test_batches"] == "single", "setting"] = "noise at " + data["apply_at"] + "\none image at a time"
    data.loc[data["test_batches"] == "-", "setting"] = "noise at " + data["apply_at"] + "\n(clean test)"
    panels = data.groupby(["dataset", "model"], sort=False)
    width = max(6.5, 0.6 * panels.size().max())  # room for each bar's two-line label
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 4.2), squeeze=False)
    for ax, ((dataset, model), part) in zip(axes[0], panels):
        ax.bar(part["setting"], part["top1_mean"], yerr=part["top1_std"], capsize=3,
               color=sns.color_palette("deep", len(part)))
        ax.set_title(f"{dataset} / {model}")
        ax.set_ylabel("test top-1 (%), mean ± sd")
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
        low = max(0.0, (part["top1_mean"] - part["top1_std"]).min() - 5)
        ax.set_ylim(low, min(100.0, (part["top1_mean"] + part["top1_std"]).max() + 3))
    fig.suptitle(f"{name}: the same trained models under each evaluation protocol")
    save_figure(fig, path)


def plot_test_batch_study(name: str, table: pd.DataFrame, path: Path) -> None:
    """Accuracy vs test batch size, class-sorted and shuffled, per model and training; the same
    model's clean accuracy as a line and one image per batch as a marker (report.batch_size_table)."""
    panels = table.groupby(["model", "method"], sort=False)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    colours = {"class_sorted": sns.color_palette("deep")[3], "shuffled": sns.color_palette("deep")[0]}
    for ax, ((model, method), part) in zip(axes[0], panels):
        for how, colour in colours.items():
            line = part[part["test_batches"] == how].sort_values("test_batch_size").astype({"test_batch_size": float})
            ax.errorbar(line["test_batch_size"], line["top1_mean"], yerr=line["top1_std"].fillna(0), marker="o",
                        capsize=3, color=colour, label=f"{how.replace('_', '-')} test batches")
        clean = part[part["test_batches"] == "clean"]
        if len(clean):
            ax.axhline(clean["top1_mean"].iloc[0], color="black", linestyle="--", label="clean (noise off)")
        single = part[part["test_batches"] == "single"]
        if len(single):
            ax.scatter([1], single["top1_mean"], marker="s", color="grey", zorder=3, label="one image per batch")
        ax.axvline(10, color="grey", linestyle=":", lw=1)
        ax.set_xscale("log")
        ax.set(xlabel="test batch size (log; dotted: 10, the NoisyNN ViT headline's)", title=f"{model}, {method.replace('_', ' ')}")
    axes[0][0].set_ylabel("test top-1 (%), mean ± sd over seeds")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"{name}: test-time noise vs how test batches are formed")
    fig.tight_layout()
    save_figure(fig, path)


def plot_vpn_background(name: str, long: pd.DataFrame, run_dirs: dict, path: Path) -> None:
    """Each generator's Figure-1-style panel (image, sigma, one draw) from its first seed, with the set's ratio."""
    one_mode = long[long["eval_mode"] == long["eval_mode"].iloc[0]]  # diagnostics repeat per eval mode
    first = one_mode.sort_values("seed").groupby(["dataset", "model", "method"], sort=False).head(1)
    panels = [(row, run_dirs[row["run_id"]] / "vpn_sigma.png") for _, row in first.iterrows()]
    panels = [(row, png) for row, png in panels if png.exists()]
    if not panels:
        return plot_bars(name, long, path)
    ratio = one_mode.groupby(["dataset", "model", "method"])["bg_fg_sigma_ratio"].agg(["mean", "std", "count"])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 8), squeeze=False)
    for ax, (row, png) in zip(axes[0], panels):
        stats = ratio.loc[(row["dataset"], row["model"], row["method"])]
        ax.imshow(plt.imread(png))
        ax.set_axis_off()
        ax.set_title(f"{row['dataset']} / {row['model']} / {row['method']} (seed {row['seed']})\n"
                     f"mean sigma background / object = {stats['mean']:.2f} ± {stats['std']:.2f} "
                     f"over {int(stats['count'])} seeds", fontsize=11)
    fig.suptitle(f"{name}: where the learned noise goes (ratio > 1: more noise on the background)")
    save_figure(fig, path)


def _method_colours(methods: pd.Series) -> dict:
    """One colour per method for every panel of a figure, whichever methods a panel happens to draw."""
    names = list(dict.fromkeys(methods))
    return dict(zip(names, sns.color_palette(n_colors=len(names))))


def plot_training_curves(name: str, history: pd.DataFrame, path: Path) -> None:
    """Per epoch and per run: the training loss (on noisy inputs for VPN), the clean train accuracy and,
    where the runs logged it, the share of pixels on which the generator's sigma is exactly 0.

    A generator that writes the label into its noise shows as a training loss far below the baseline's
    with a clean accuracy that falls; one that switched itself off follows the baseline, and its share
    of sigma = 0 climbs to 1. Under protocol readings, each reading has its own line style."""
    data = history[(history["method"] == "baseline") | (history["method_name"] == "vpn")]
    models = list(dict.fromkeys(data["model"]))
    measures = {"train_loss": "training loss\n(inputs + generated noise)", "train_top1": "train top-1 (%)\nclean inputs"}
    if "sigma_zero_fraction" in data and data["sigma_zero_fraction"].notna().any():  # runs since 34a4ddd log it
        measures["sigma_zero_fraction"] = "generator off: share of\ntraining pixels with sigma = 0"
    colours = _method_colours(data["method"])
    readings = sorted(data["reading"].unique()) if _has_readings(data) else []
    fig, axes = plt.subplots(len(measures), len(models), figsize=(5.5 * len(models), 3.25 * len(measures)),
                             squeeze=False, sharex=True, sharey="row")
    for col, model in enumerate(models):
        for row, (measure, label) in enumerate(measures.items()):
            ax = axes[row][col]
            part = data[(data["model"] == model) & data[measure].notna()]
            if part.empty:  # e.g. a model whose generator runs have not landed yet
                ax.text(0.5, 0.5, "no runs log this yet", ha="center", va="center", transform=ax.transAxes)
            else:
                sns.lineplot(data=part, x="epoch", y=measure, hue="method", units="run_id", estimator=None, lw=1,
                             alpha=0.8, ax=ax, legend=row == 0 and col == 0, hue_order=list(colours),
                             palette=colours, style="reading" if readings else None, style_order=readings or None)
            values = part[measure]
            if measure == "train_loss" and len(values) and (values > 0).all() and values.max() > 100 * values.min():
                ax.set_yscale("log")  # a diverging run would flatten every other curve
            ax.set(ylabel=label if col == 0 else "", title=model if row == 0 else "")
    fig.suptitle(f"{name}: training per epoch, one line per run")
    fig.tight_layout()
    save_figure(fig, path)


def _has_readings(frame: pd.DataFrame) -> bool:
    return "reading" in frame and frame["reading"].ne("").any()


def plot_bars(name: str, long: pd.DataFrame, path: Path) -> None:
    """Bars of mean top-1 per method; a set run under protocol readings gets one column of panels per
    reading, so no bar averages runs of two readings."""
    hue = "eval_mode" if long["eval_mode"].nunique() > 1 else None
    data, col = long, "dataset"
    if _has_readings(long):
        col = "reading"
        if long["dataset"].nunique() > 1:
            data = long.assign(method=long["dataset"] + "/" + long["method"])
    grid = sns.catplot(data=data, x="method", y="top1", hue=hue, col=col, row="model", kind="bar",
                       errorbar="sd", capsize=0.1, height=3.2, aspect=1.6, sharey=False)
    grid.set_axis_labels("", "test top-1 (%)")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=45)
        if not ax.patches:  # a reading or dataset this model has no runs under yet
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_yticks([])
    grid.figure.suptitle(f"{name}: test accuracy per method (mean ± sd over seeds)", y=1.02)
    save_figure(grid.figure, path)


def plot_set(kind: str, name: str, long: pd.DataFrame, table: pd.DataFrame, path: Path,
             run_dirs: dict | None = None) -> None:
    if kind == "vpn_background" and "bg_fg_sigma_ratio" in long.columns:
        plot_vpn_background(name, long, run_dirs or {}, path)
    elif kind == "layer_sweep":
        plot_layer_sweep(name, long, path)
    elif kind in ("strength_sweep", "harmful_noise"):
        plot_strength_sweep(name, long, path)
    elif kind == "eval_protocol":
        plot_eval_protocol(name, table, path)
    else:
        plot_bars(name, long, path)


# ---- the audit's figure ------------------------------------------------------------------

GREEN, RED, ORANGE, GREY, LIGHT = "#2a9d3f", "#d62728", "#ff9f1c", "#7f7f7f", "#bdbdbd"
VERDICT_COLOURS = {"reproduced": GREEN, "supported": GREEN, "differs (higher)": RED, "differs (lower)": RED,
                   "contradicted": RED, "scale differs": ORANGE, "smoke scale": ORANGE, "inconclusive": GREY,
                   "too few seeds": LIGHT, "not run": LIGHT}


def verdict_colour(verdict: str) -> str:
    """Colours by what a verdict says: `supported (higher)` as `supported`, any `contradicted (...)` as red."""
    for key, colour in VERDICT_COLOURS.items():
        if str(verdict) == key:
            return colour
    word = str(verdict).split(" (")[0]
    return VERDICT_COLOURS.get(word, GREY if word in ("mixed", "not applicable") else "black")


def plot_audit(audit: pd.DataFrame, cells: pd.DataFrame, path: Path) -> None:
    """Per table: ours (mean, 95% CI) against the paper's value, with the diagonal; then the effect claims'
    cells on two axes of their own: differences in accuracy points, and log variance ratios."""
    numbers = audit[(audit["table"] != "effects") & (audit["n"] > 0)]
    shown = cells[(cells["n"] > 0) & np.isfinite(cells["mean"].astype(float))] if len(cells) else cells
    kinds = shown["test_type"].isin(["seed_variance", "one_sample"]) if len(shown) else pd.Series(dtype=bool)
    effect_axes = [("accuracy points", shown[~kinds]), ("log ratios", shown[kinds])] if len(shown) else []
    effect_axes = [(unit, part) for unit, part in effect_axes if len(part)]
    tables = list(dict.fromkeys(numbers["table"]))
    # paper tables three to a row; each effect panel a whole row, as tall as its cells need
    table_rows = -(-len(tables) // 3)
    key_lines = max([len(numbers[numbers["table"] == t]) for t in tables if len(numbers[numbers["table"] == t]) <= 12]
                    + [0])
    heights = [4.6 + 0.16 * key_lines] * table_rows + [max(2.5, 0.22 * len(part) + 1.2) for _, part in effect_axes]
    heights = heights or [3.0]
    fig = plt.figure(figsize=(17, sum(heights) + 0.8 * len(heights)))
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights, hspace=0.35 + 0.04 * key_lines, wspace=0.3)
    table_axes = [fig.add_subplot(grid[i // 3, i % 3]) for i in range(len(tables))]
    panel_axes = [fig.add_subplot(grid[table_rows + i, :2]) for i in range(len(effect_axes))]
    for ax, table in zip(table_axes, tables):
        part = numbers[numbers["table"] == table]
        half = (part["ci_high"] - part["mean"]).fillna(0.0)
        ax.errorbar(part["paper"], part["mean"], yerr=half, fmt="none", ecolor="grey", capsize=3, zorder=1)
        sns.scatterplot(data=part, x="paper", y="mean", hue="verdict",
                        palette={v: verdict_colour(v) for v in part["verdict"]}, ax=ax, s=60, zorder=2)
        values = pd.concat([part["paper"], part["mean"] - half, part["mean"] + half])
        low, high = values.min() - 3, values.max() + 3
        ax.plot([low, high], [low, high], ls="--", color="black", lw=1, label="ours = paper")
        ax.set(xlim=(low, high), ylim=(low, high), xlabel="paper (%)", ylabel="ours: mean (%), 95% CI",
               title=f"{table}\nscale: {'+'.join(sorted(set(part['scale'])))}")
        ax.legend(fontsize=8, loc="upper left")
        if len(part) <= 12:  # numbered points and a key below; beyond that audit.csv names every cell
            for number, (_, line) in enumerate(part.iterrows(), 1):
                ax.annotate(str(number), (line["paper"], line["mean"]), fontsize=8, xytext=(5, 2),
                            textcoords="offset points")
            key = "\n".join(f"{i}: {r} {c}" for i, (r, c) in enumerate(zip(part["row"], part["column"]), 1))
            ax.text(0.0, -0.16, key, transform=ax.transAxes, va="top", fontsize=7.5, family="monospace")
    for ax, (unit, part) in zip(panel_axes, effect_axes):
        _effect_cells_panel(ax, part, unit)
    if not effect_axes:
        ax = fig.add_subplot(grid[-1, :])
        ax.text(0.5, 0.5, "no effect claim has runs", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle("Audit: our runs against the papers' published numbers"
                 + ("" if tables else " (no paper-table cell has runs)"), y=1 + 0.35 / fig.get_figheight())
    save_figure(fig, path)


def plot_specification_curve(cells: pd.DataFrame, path: Path) -> None:
    """Each paired effect claim, per protocol reading and cell: our effect with its 95% CI beside the effect
    the paper's tables imply; grouped by claim, then cell, then reading, so a reading that moves an effect
    shows as a shift within its group."""
    part = cells[cells["test_type"].isin(["paired", "equivalence"]) & (cells["n"] > 0)] if len(cells) else cells
    fig, ax = plt.subplots(figsize=(14, max(3.0, 0.24 * len(part) + 1.5)))
    if len(part):
        part = part.sort_values(["claim_id", "cell", "reading"], kind="stable")
        _effect_cells_panel(ax, part, "accuracy points, symmetric log scale beyond ±1")
        ax.set_xscale("symlog", linthresh=1.0)  # effects of 0.1 and of 60 points on one axis
        ax.set_title("specification curve: each effect per claim, cell and protocol reading (colour = cell verdict)")
    else:
        ax.text(0.5, 0.5, "no effect claim has runs", ha="center", va="center")
        ax.set_axis_off()
    save_figure(fig, path)


def _effect_cells_panel(ax, part: pd.DataFrame, unit: str) -> None:
    """One row per cell (claim and reading named), its mean and 95% CI where it has one, the paper's implied
    effect as a cross; colour: the cell's verdict."""
    part = part.reset_index(drop=True)
    y = np.arange(len(part))[::-1]
    mean = part["mean"].astype(float)
    low, high = part["ci_low"].astype(float).fillna(mean), part["ci_high"].astype(float).fillna(mean)
    ax.errorbar(mean, y, xerr=[mean - low, high - mean], fmt="none", ecolor="grey", capsize=3)
    ax.scatter(mean, y, c=[verdict_colour(v) for v in part["verdict"]], zorder=2)
    paper = part["paper_effect"].astype(float) if "paper_effect" in part else pd.Series(np.nan, index=part.index)
    if paper.notna().any():
        ax.scatter(paper, y, marker="x", color="black", zorder=3, label="paper's implied effect")
        ax.legend(fontsize=7, loc="lower left")
    labels = [f"{c} [{r}] {cell}: {v}" for c, r, cell, v in
              zip(part["claim_id"], part["reading"], part["cell"], part["verdict"])]
    ax.set_yticks(y, labels, fontsize=7)
    ax.yaxis.tick_right()  # the long labels go where no panel is
    ax.axvline(0, color="black", lw=1)
    span = 1.2 * np.nanmax(np.abs(np.concatenate([low, high, paper.fillna(0)]))) + 0.5
    ax.set(xlim=(-span, span), xlabel=f"effect per cell, 95% CI ({unit})",
           title=f"effect claims, cell by cell: {unit} (colour = cell verdict)")
