"""The audit: every published number and claim in params/claims.yaml against our runs.

Number claims (one per paper-table cell): `reproduced` when the paper's value lies in the 95%
t-interval of our mean over seeds or within `tolerance` points of it, `differs` otherwise,
`not run` without runs, `scale differs` when the only runs are not at paper scale (a smoke number
is never read as a reproduction). Effect claims compare paired runs (same dataset/model/seed):
`supported` (expected sign, p < alpha), `contradicted` (opposite sign, p < alpha), `inconclusive`.

    python -m pipeline_src audit --claims params/claims.yaml --set-info JSON --out results RUNS_CSV...
"""
from __future__ import annotations

import fnmatch
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from pipeline_src.provenance import write_atomic

PAPER_SCALE = "paper"
AUDIT_COLUMNS = ["claim_id", "table", "row", "column", "paper", "expected", "mean", "std", "n", "ci_low",
                 "ci_high", "delta", "p_value", "verdict", "scale", "note", "evidence"]
SIGNS = {"+": 1, "-": -1}


# ---- statistics: small pure functions ---------------------------------------------------------

def t_interval(values, alpha: float = 0.05) -> tuple[float, float, int, float, float]:
    """Mean, sample std, n and the (1 - alpha) t-interval of the mean; std and CI are NaN when n < 2."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return np.nan, np.nan, 0, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return mean, np.nan, 1, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / np.sqrt(n)
    return mean, std, n, mean - half, mean + half


def number_verdict(paper: float, values, scale: str = PAPER_SCALE, tolerance: float = 1.0,
                   alpha: float = 0.05) -> dict:
    """One published number against our runs' values (top-1 %), at the runs' scale."""
    mean, std, n, low, high = t_interval(values, alpha)
    out = {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high, "delta": mean - paper, "note": ""}
    if n == 0:
        return {**out, "verdict": "not run"}
    matches = abs(mean - paper) <= tolerance or (n >= 2 and low <= paper <= high)
    notes = [f"n = {n} < 2: CI undefined, decided by the {tolerance:g}-point tolerance only"] if n < 2 else []
    if scale != PAPER_SCALE:
        notes.append(f"runs at {scale} scale only: a smoke number, not a reproduction")
        return {**out, "verdict": "scale differs", "note": "; ".join(notes)}
    return {**out, "verdict": "reproduced" if matches else "differs", "note": "; ".join(notes)}


def _quiet(test, *args, **kwargs):
    """scipy warns on zero-variance samples; the result (inf/NaN statistic) is handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


def effect_verdict(treatment, control=None, expected_sign: str = "+", alpha: float = 0.05) -> dict:
    """Paired t-test of treatment - control (ttest_rel), or one-sample test of treatment against 0."""
    treatment = np.asarray(treatment, dtype=float)
    diffs = treatment if control is None else treatment - np.asarray(control, dtype=float)
    mean, std, n, low, high = t_interval(diffs, alpha)
    out = {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high, "p_value": np.nan, "note": ""}
    if n == 0:
        return {**out, "verdict": "not run", "note": "no matched runs"}
    if n < 2:
        return {**out, "verdict": "inconclusive", "note": "n < 2: no test possible"}
    result = (_quiet(stats.ttest_1samp, diffs, 0.0) if control is None
              else _quiet(stats.ttest_rel, treatment, np.asarray(control, dtype=float)))
    p_value = float(result.pvalue)
    out["p_value"] = p_value
    if not p_value < alpha:  # also NaN: identical values, no difference to test
        return {**out, "verdict": "inconclusive"}
    verdict = "supported" if np.sign(mean) == SIGNS[expected_sign] else "contradicted"
    return {**out, "verdict": verdict}


def equivalence_verdict(treatment, control, tolerance: float = 1.0, alpha: float = 0.05) -> dict:
    """'About the same': the (1 - alpha) CI of the paired difference inside +-tolerance (supported),
    wholly outside it (contradicted), or straddling its edge (inconclusive)."""
    diffs = np.asarray(treatment, dtype=float) - np.asarray(control, dtype=float)
    mean, std, n, low, high = t_interval(diffs, alpha)
    out = {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high, "p_value": np.nan,
           "note": f"equivalence band +-{tolerance:g} points"}
    if n == 0:
        return {**out, "verdict": "not run", "note": "no matched runs"}
    if n < 2:
        return {**out, "verdict": "inconclusive", "note": "n < 2: CI undefined"}
    if -tolerance <= low and high <= tolerance:
        return {**out, "verdict": "supported"}
    if high < -tolerance or low > tolerance:
        return {**out, "verdict": "contradicted"}
    return {**out, "verdict": "inconclusive"}


# ---- the registry and the runs ----------------------------------------------------------------

def load_claims(path: Path) -> dict:
    """{'settings', 'tables': {name: spec}, 'effects': [spec]} from the registry YAML."""
    raw = yaml.safe_load(Path(path).read_text())
    tables, effects = {}, []
    for paper, section in raw.items():  # one section per paper, beside `settings`
        if paper == "settings":
            continue
        for name, spec in section.get("tables", {}).items():
            tables[name] = {"paper": paper, **spec}
        effects += [{"paper": paper, **claim} for claim in section.get("qualitative", [])]
    return {"settings": raw["settings"], "tables": tables, "effects": effects}


def number_claims(tables: dict) -> list[dict]:
    """One claim per table cell, in the table's own row and column order."""
    claims = []
    for table, spec in tables.items():
        for row, values in spec["rows"].items():
            method, eval_mode = spec["row_map"][row]
            for column, value in zip(spec["columns"], values):
                claims.append({"claim_id": f"{spec['paper']}.{table}.{row}.{column}", "table": table,
                               "row": row, "column": column, "paper": value, "method": method,
                               "eval_mode": eval_mode, "kind": spec.get("row_kind", {}).get(row, spec["kind"])})
    return claims


def load_runs(runs_csvs: list[Path], set_info: dict) -> pd.DataFrame:
    """All sets' long run tables, with set, kind and the papers' dataset and model names."""
    frames = []
    for path in runs_csvs:
        frame = pd.read_csv(path)
        name = Path(path).name.removesuffix("_runs.csv")
        info = set_info.get(name, {})
        frame["set"] = name
        frame["kind"] = info.get("kind", name)
        if "scale" not in frame.columns:
            frame["scale"] = info.get("scale", "unknown")
        frames.append(frame)
    columns = ["set", "kind", "dataset", "model", "method", "eval_mode", "seed", "top1", "run_id", "scale"]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    runs["dataset_paper"] = runs["dataset"].map(lambda d: set_info.get("datasets", {}).get(d) or d)
    runs["model_paper"] = runs["model"].map(lambda m: set_info.get("models", {}).get(m) or m)
    runs["evidence"] = runs["set"] + "/" + runs["run_id"].astype(str)
    return runs


def at_best_scale(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Paper-scale runs when there are any, else all of them, with the scale label to report."""
    paper = rows[rows["scale"] == PAPER_SCALE]
    if len(paper):
        return paper, PAPER_SCALE
    return rows, "+".join(sorted(rows["scale"].astype(str).unique())) or "none"


# ---- number claims ----------------------------------------------------------------------------

def audit_numbers(claims: list[dict], runs: pd.DataFrame, tolerance: float, alpha: float) -> pd.DataFrame:
    lines = []
    for claim in claims:
        dataset, model = claim["column"].split("/", 1)
        rows = runs[(runs["kind"] == claim["kind"]) & (runs["method"] == claim["method"])
                    & (runs["eval_mode"] == claim["eval_mode"]) & (runs["dataset_paper"] == dataset)
                    & (runs["model_paper"] == model)]
        rows, scale = at_best_scale(rows)
        result = number_verdict(claim["paper"], rows["top1"], scale, tolerance, alpha)
        lines.append({**{k: claim[k] for k in ("claim_id", "table", "row", "column", "paper")},
                      **result, "scale": scale if len(rows) else "", "evidence": " ".join(rows["evidence"])})
    return pd.DataFrame(lines, columns=AUDIT_COLUMNS)


# ---- effect claims ----------------------------------------------------------------------------

def _natural_key(value) -> tuple:
    digits = re.findall(r"-?\d+(?:\.\d+)?", str(value))
    return (float(digits[-1]) if digits else float("inf"), str(value))


def select_side(runs: pd.DataFrame, kind: str, side: dict) -> pd.DataFrame:
    """One line per run: the methods (shell patterns) of `kind`, in the first of `eval_modes` each run
    has; other keys pick a sweep value (`first` / `last` in natural order, or an exact value)."""
    rows = runs[(runs["kind"] == kind)
                & runs["method"].map(lambda m: any(fnmatch.fnmatchcase(m, p) for p in side["methods"]))]
    rows = rows[rows["eval_mode"].isin(side.get("eval_modes", rows["eval_mode"].unique()))]
    if "eval_modes" in side and len(rows):
        rank = rows["eval_mode"].map({mode: i for i, mode in enumerate(side["eval_modes"])})
        rows = rows.loc[rank.groupby([rows["set"], rows["run_id"]]).idxmin()]
    for column, wanted in side.items():
        if column in ("methods", "eval_modes") or not len(rows):
            continue
        if column not in rows.columns:
            return rows.iloc[0:0]
        if wanted in ("first", "last"):  # per set, dataset and model: models may differ in depth
            position = rows[column].map(lambda v: _natural_key(v)[0])
            bound = position.groupby([rows["set"], rows["dataset"], rows["model"]]).transform(
                "min" if wanted == "first" else "max")
            rows = rows[position == bound]
        else:
            rows = rows[rows[column] == wanted]
    return rows


def paired_frame(runs: pd.DataFrame, test: dict, pair_on: list[str]) -> pd.DataFrame:
    """Treatment and control means per pair (several runs on one side of a pair are averaged)."""
    sides = {}
    for name in ("treatment", "control"):
        rows, _ = at_best_scale(select_side(runs, test["kind"], test[name]))
        sides[name] = rows.groupby(pair_on).agg(top1=("top1", "mean"), evidence=("evidence", " ".join),
                                                modes=("eval_mode", lambda m: " ".join(sorted(set(m)))),
                                                scale=("scale", "first"))
    return sides["treatment"].join(sides["control"], how="inner", suffixes=("_t", "_c"))


def _effect_line(claim: dict, result: dict, pairs: pd.DataFrame | None, expected: str) -> dict:
    evidence = "" if pairs is None or not len(pairs) else " ".join(dict.fromkeys(  # once each, in order
        " ".join(pairs["evidence_t"] + " " + pairs["evidence_c"]).split()))
    note = result.get("note", "")
    if pairs is not None and len(pairs):
        note = "; ".join(filter(None, [note, f"treatment modes: {' '.join(sorted(set(pairs['modes_t'])))}"]))
    scale = "" if pairs is None or not len(pairs) else "+".join(sorted(set(pairs["scale_t"]) | set(pairs["scale_c"])))
    return {"claim_id": claim["id"], "table": "effects", "row": claim["id"], "column": "", "paper": np.nan,
            "expected": expected, **{k: result[k] for k in ("mean", "std", "n", "ci_low", "ci_high", "p_value")},
            "delta": np.nan, "verdict": result["verdict"], "scale": scale, "note": note, "evidence": evidence}


def _paired(claim: dict, runs: pd.DataFrame, tolerance: float, alpha: float) -> dict:
    test = claim["test"]
    pairs = paired_frame(runs, test, test.get("pair_on", ["dataset", "model", "seed"]))
    if test["type"] == "equivalence":
        return _effect_line(claim, equivalence_verdict(pairs["top1_t"], pairs["top1_c"], tolerance, alpha),
                            pairs, f"|diff| <= {tolerance:g}")
    return _effect_line(claim, effect_verdict(pairs["top1_t"], pairs["top1_c"], test["expected_sign"], alpha),
                        pairs, test["expected_sign"])


def _one_sample(claim: dict, runs: pd.DataFrame, tolerance: float, alpha: float) -> dict:
    """A per-run diagnostic (one value per run, whatever its eval modes), optionally on a log scale."""
    test = claim["test"]
    rows = select_side(runs, test["kind"], {"methods": test["methods"]})
    rows, scale = at_best_scale(rows.drop_duplicates(["set", "run_id"]))
    values = rows[test["column"]].dropna() if test["column"] in rows.columns else pd.Series(dtype=float)
    values = np.log(values[values > 0]) if test.get("log") else values
    result = effect_verdict(values, None, test["expected_sign"], alpha)
    if len(values) and test.get("log"):
        extra = f"mean and CI of log {test['column']}; geometric mean ratio {np.exp(values.mean()):.3g}"
        result["note"] = "; ".join(filter(None, [result["note"], extra]))
    line = _effect_line(claim, result, None, f"{test['expected_sign']} ({test['column']})")
    return {**line, "scale": scale if len(values) else "", "evidence": " ".join(rows["evidence"])}


def _seed_variance(claim: dict, runs: pd.DataFrame, tolerance: float, alpha: float) -> dict:
    """log(seed variance of treatment / of control) per (dataset, model, control method) cell, tested > 0."""
    test, cells = claim["test"], ["dataset", "model"]
    treat = select_side(runs, test["kind"], test["treatment"]).groupby(cells)["top1"].var(ddof=1)
    ctrl = select_side(runs, test["kind"], test["control"]).groupby(cells + ["method"])["top1"].var(ddof=1)
    ctrl = ctrl.reset_index().join(treat.rename("treat_var"), on=cells).dropna()
    ratios = np.log(ctrl["treat_var"] / ctrl["top1"]).replace([np.inf, -np.inf], np.nan).dropna()
    result = effect_verdict(ratios, None, test["expected_sign"], alpha)
    result["note"] = "; ".join(filter(None, [result["note"], f"log seed-variance ratio over {len(ratios)} cells"]))
    rows = pd.concat([select_side(runs, test["kind"], test[s]) for s in ("treatment", "control")])
    line = _effect_line(claim, result, None, test["expected_sign"])
    return {**line, "scale": "+".join(sorted(set(rows["scale"]))) if len(ratios) else "",
            "evidence": " ".join(rows["evidence"])}


def _gain_by_dataset(claim: dict, runs: pd.DataFrame, tolerance: float, alpha: float) -> dict:
    """Gain (treatment - control) on the large dataset vs on the small one, paired on (model, seed)."""
    test = claim["test"]
    pairs = paired_frame(runs, test, ["dataset_paper", "model", "seed"])
    gains = (pairs["top1_t"] - pairs["top1_c"]).unstack("dataset_paper")
    small, large = test["datasets"]["small"], test["datasets"]["large"]
    if small not in gains.columns or large not in gains.columns:
        result = {**effect_verdict([], None), "note": f"needs runs on both {small} and {large}"}
        return _effect_line(claim, result, None, test["expected_sign"])
    both = gains[[small, large]].dropna()
    return _effect_line(claim, effect_verdict(both[large], both[small], test["expected_sign"], alpha),
                        pairs, test["expected_sign"])


EFFECT_TESTS = {"paired": _paired, "equivalence": _paired, "one_sample": _one_sample,
                "seed_variance": _seed_variance, "gain_by_dataset": _gain_by_dataset}


def audit_effect(claim: dict, runs: pd.DataFrame, tolerance: float, alpha: float) -> dict:
    test_type = claim["test"]["type"]
    if test_type not in EFFECT_TESTS:
        raise ValueError(f"claim {claim['id']}: unknown test type {test_type!r}; known: {', '.join(EFFECT_TESTS)}")
    return EFFECT_TESTS[test_type](claim, runs, tolerance, alpha)


# ---- rendering --------------------------------------------------------------------------------

def cell_text(line: pd.Series, pm: str = "±", delta: str = "Δ") -> str:
    """'paper vs ours ± sd (n), Δ', or 'paper vs not run'; scale-labelled when not paper scale."""
    if line["verdict"] == "not run":
        return f"{line['paper']:.2f} vs not run"
    spread = f" {pm} {line['std']:.2f}" if line["n"] >= 2 else ""
    text = f"{line['paper']:.2f} vs {line['mean']:.2f}{spread} (n={line['n']}), {delta} {line['delta']:+.2f}"
    return text + (f" [{line['scale']}]" if line["scale"] != PAPER_SCALE else "")


def paper_table(audit: pd.DataFrame, table: str, spec: dict, **marks) -> pd.DataFrame:
    """The paper's own layout: its rows and columns, each cell the cell_text of its claim."""
    lines = audit[audit["table"] == table].set_index(["row", "column"])
    return pd.DataFrame([[cell_text(lines.loc[(row, col)], **marks) for col in spec["columns"]] for row in spec["rows"]],
                        index=pd.Index(list(spec["rows"]), name="row"), columns=spec["columns"])


def table_title(audit: pd.DataFrame, table: str, spec: dict) -> str:
    scales = sorted(set(audit.loc[(audit["table"] == table) & (audit["scale"] != ""), "scale"]))
    label = ", ".join(scales) if scales else "not run"
    smoke = "" if scales in ([], [PAPER_SCALE]) else " (smoke numbers, not a reproduction)"
    return f"{spec['paper'].upper()} {table}: {spec['source']} -- scale: {label}{smoke}"


def _latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")


def write_paper_table(audit: pd.DataFrame, table: str, spec: dict, prefix: Path) -> None:
    title = table_title(audit, table, spec)
    shown = paper_table(audit, table, spec)
    write_atomic(prefix.with_suffix(".csv"), shown.to_csv())
    write_atomic(prefix.with_suffix(".md"), f"## {title}\n\nEach cell: paper vs ours (mean ± sd over seeds, n), "
                 f"Δ = ours - paper, top-1 %.\n\n{shown.to_markdown()}\n")
    # ASCII marks survive escaping; they become math after it
    tex = paper_table(audit, table, spec, pm="PMMARK", delta="DELTAMARK").rename_axis(None).to_latex(
        escape=True, caption=_latex_escape(title), label=f"tab:paper_{table}")
    write_atomic(prefix.with_suffix(".tex"), tex.replace("PMMARK", r"$\pm$").replace("DELTAMARK", r"$\Delta$"))


VERDICT_COLOURS = {"reproduced": "#2a9d3f", "supported": "#2a9d3f", "differs": "#d62728", "contradicted": "#d62728",
                   "scale differs": "#ff9f1c", "inconclusive": "#7f7f7f"}


def plot_audit(audit: pd.DataFrame, path: Path) -> None:
    """Per table: ours (mean, 95% CI) against the paper's value, with the diagonal; then the effects."""
    from pipeline_src.plots import plt, save_figure, sns

    numbers = audit[(audit["table"] != "effects") & (audit["n"] > 0)]
    effects = audit[(audit["table"] == "effects") & (audit["n"] > 0)]
    tables = list(dict.fromkeys(numbers["table"]))
    columns = min(3, len(tables) + 1)
    rows = -(-(len(tables) + 1) // columns)
    key_lines = max([len(numbers[numbers["table"] == t]) for t in tables if len(numbers[numbers["table"] == t]) <= 12]
                    + [0])
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, (4.6 + 0.16 * key_lines) * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.35 + 0.04 * key_lines, "wspace": 0.3})
    for ax, table in zip(axes.flat, tables):
        part = numbers[numbers["table"] == table]
        half = (part["ci_high"] - part["mean"]).fillna(0.0)
        ax.errorbar(part["paper"], part["mean"], yerr=half, fmt="none", ecolor="grey", capsize=3, zorder=1)
        sns.scatterplot(data=part, x="paper", y="mean", hue="verdict", palette=VERDICT_COLOURS, ax=ax, s=60, zorder=2)
        values = pd.concat([part["paper"], part["mean"] - half, part["mean"] + half])
        low, high = values.min() - 3, values.max() + 3
        ax.plot([low, high], [low, high], ls="--", color="black", lw=1, label="ours = paper")
        ax.set(xlim=(low, high), ylim=(low, high), xlabel="paper top-1 (%)", ylabel="ours: mean top-1 (%), 95% CI",
               title=f"{table}\nscale: {'+'.join(sorted(set(part['scale'])))}")
        ax.legend(fontsize=8, loc="upper left")
        if len(part) <= 12:  # numbered points and a key below; beyond that audit.csv names every cell
            for number, (_, line) in enumerate(part.iterrows(), 1):
                ax.annotate(str(number), (line["paper"], line["mean"]), fontsize=8, xytext=(5, 2),
                            textcoords="offset points")
            key = "\n".join(f"{i}: {r} {c}" for i, (r, c) in enumerate(zip(part["row"], part["column"]), 1))
            ax.text(0.0, -0.16, key, transform=ax.transAxes, va="top", fontsize=7.5, family="monospace")
    ax = axes.flat[len(tables)]
    if len(effects):
        y = np.arange(len(effects))[::-1]
        errors = [effects["mean"] - effects["ci_low"].fillna(effects["mean"]),
                  effects["ci_high"].fillna(effects["mean"]) - effects["mean"]]
        ax.errorbar(effects["mean"], y, xerr=errors, fmt="none", ecolor="grey", capsize=3)
        ax.scatter(effects["mean"], y, c=[VERDICT_COLOURS.get(v, "black") for v in effects["verdict"]], zorder=2)
        ax.set_yticks(y, [f"{c}\nexpected {e}, {v}" for c, e, v in
                          zip(effects["claim_id"], effects["expected"], effects["verdict"])], fontsize=8)
        ax.yaxis.tick_right()  # the long labels go where no panel is
        ax.axvline(0, color="black", lw=1)
        span = 1.5 * effects["mean"].abs().max() + 5  # very wide CIs (n = 2) run off the edge
        ax.set(xlim=(-span, span), xlabel="mean paired difference, 95% CI (top-1 points;\nlog ratio for "
               "sigma ratios; wide CIs clipped)", title="effect claims (colour = verdict)")
    else:
        ax.text(0.5, 0.5, "no effect claim has runs", ha="center", va="center")
        ax.set_axis_off()
    for ax in axes.flat[len(tables) + 1:]:
        ax.set_axis_off()
    fig.suptitle("Audit: our runs against the papers' published numbers"
                 + ("" if tables else " (no paper-table cell has runs)"), y=1 + 0.35 / fig.get_figheight())
    save_figure(fig, path)


def audit_markdown(audit: pd.DataFrame, claims: dict, table_md: list[str]) -> str:
    numbers, effects = audit[audit["table"] != "effects"], audit[audit["table"] == "effects"]
    board = pd.concat([numbers["verdict"].value_counts().rename("number claims"),
                       effects["verdict"].value_counts().rename("effect claims")], axis=1).fillna(0).astype(int)
    texts = {e["id"]: e["claim"] for e in claims["effects"]}
    shown = effects.assign(claim=effects["claim_id"].map(texts))[
        ["claim_id", "claim", "expected", "mean", "ci_low", "ci_high", "n", "p_value", "verdict", "scale", "note"]]
    settings = claims["settings"]
    return "\n\n".join([
        "# Audit of the published numbers and claims",
        f"Tolerance ±{settings['tolerance']:g} top-1 points, alpha {settings['alpha']:g}. Evidence (run ids) per claim "
        "is in audit.csv. `scale differs`: only smoke-scale runs exist, so the cell is not a reproduction.",
        "## Scoreboard", board.rename_axis("verdict").to_markdown(),
        "## Effect claims", shown.to_markdown(index=False, floatfmt=".3g"),
        "## Paper tables", *table_md]) + "\n"


def main_audit(claims_path: Path, runs_csvs: list[Path], set_info: dict, out_dir: Path) -> pd.DataFrame:
    """Write audit.csv, audit.md, figures/audit.png and tables/paper_<table>.{csv,md,tex} under out_dir."""
    claims = load_claims(claims_path)
    tolerance, alpha = claims["settings"]["tolerance"], claims["settings"]["alpha"]
    runs = load_runs([Path(p) for p in runs_csvs], set_info)
    numbers = audit_numbers(number_claims(claims["tables"]), runs, tolerance, alpha)
    effects = pd.DataFrame([audit_effect(c, runs, tolerance, alpha) for c in claims["effects"]], columns=AUDIT_COLUMNS)
    audit = pd.concat([numbers, effects], ignore_index=True)
    out_dir = Path(out_dir)
    table_md = []
    for table, spec in claims["tables"].items():
        write_paper_table(audit, table, spec, out_dir / "tables" / f"paper_{table}")
        table_md.append((out_dir / "tables" / f"paper_{table}.md").read_text().strip())
    write_atomic(out_dir / "audit.csv", audit.to_csv(index=False, float_format="%.6g"))
    write_atomic(out_dir / "audit.md", audit_markdown(audit, claims, table_md))
    plot_audit(audit, out_dir / "figures" / "audit.png")
    return audit
