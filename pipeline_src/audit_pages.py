"""The audit's pages: each paper table with our numbers beside the published ones (csv, md, tex) and
audit.md (the rules, the paper tables, every claim with its verdict, the deviations). The verdicts
themselves come from audit.py and verdicts.py; this module only renders them.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline_src.provenance import write_atomic
from pipeline_src.verdicts import PAPER_SCALE


def deviations_markdown(deviations: list[dict], audit: pd.DataFrame) -> str:
    if not deviations:
        return "None registered."
    clean = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731  (markdown table cells)
    marked = audit["deviations"].fillna("").str.split(",")
    table = pd.DataFrame([{"": d["marker"], "id": d["id"], "what": clean(d["what"]), "paper": clean(d["paper"]),
                           "code": clean(d["code"]), "ours": clean(d["ours"]), "why": clean(d["why"]),
                           "cells affected": int(marked.map(lambda m: d["marker"] in m).sum())}
                          for d in deviations])
    return table.to_markdown(index=False)


# ---- rendering --------------------------------------------------------------------------------

def cell_text(line: pd.Series, pm: str = "±", delta: str = "Δ") -> str:
    """'paper vs ours ± sd (n), Δ', or 'paper vs not run'; scale-labelled when not paper scale; then the
    deviation markers."""
    marks = line.get("deviations", "")
    marks = f" [{marks}]" if isinstance(marks, str) and marks else ""
    if line["verdict"] == "not run":
        return f"{line['paper']:.2f} vs not run{marks}"
    spread = f" {pm} {line['std']:.2f}" if line["n"] >= 2 else ""
    text = f"{line['paper']:.2f} vs {line['mean']:.2f}{spread} (n={line['n']}), {delta} {line['delta']:+.2f}"
    return text + (f" [{line['scale']}]" if line["scale"] != PAPER_SCALE else "") + marks


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


def write_paper_table(audit: pd.DataFrame, table: str, spec: dict, paths: dict[str, Path]) -> None:
    """The paper table with our numbers, as csv, md and tex (paths: extension -> file)."""
    title = table_title(audit, table, spec)
    shown = paper_table(audit, table, spec)
    write_atomic(paths["csv"], shown.to_csv())
    write_atomic(paths["md"], f"## {title}\n\nEach cell: paper vs ours (mean ± sd over seeds, n), "
                 f"Δ = ours - paper, {spec.get('metric', 'top1')} %, band ±{spec['tolerance']:g}; [D<i>]: "
                 f"deviations that apply (last section).\n\n{shown.to_markdown()}\n")
    # ASCII marks survive escaping; they become math after it
    tex = paper_table(audit, table, spec, pm="PMMARK", delta="DELTAMARK").rename_axis(None).to_latex(
        escape=True, caption=_latex_escape(title), label=f"tab:paper_{table}")
    write_atomic(paths["tex"], tex.replace("PMMARK", r"$\pm$").replace("DELTAMARK", r"$\Delta$"))


def rules_text(claims: dict, n_tested: int) -> str:
    """The settings and rules the verdicts follow, stated once at the top of audit.md."""
    settings, alpha = claims["settings"], claims["settings"]["alpha"]
    seeds = ", ".join(f"{scale} scale {n}" if scale != "default" else f"other scales {n}"
                      for scale, n in settings["min_seeds"].items())
    bands = "; ".join(f"{name} ±{spec.get('tolerance', settings['tolerance']):g} ({spec.get('metric', 'top1')}; "
                      f"{spec.get('tolerance_reason', 'the default')})" for name, spec in claims["tables"].items())
    level = f"{100 * (1 - alpha):g}%"
    return "\n".join([
        f"- **Seeds needed (min_seeds):** {seeds}; fewer gives `too few seeds` (numbers kept).",
        f"- **Number claims:** the {level} t-interval of our mean over seeds against the band paper ± tolerance: "
        "inside → `reproduced`; wholly above / below → `differs (higher)` / `differs (lower)`; overlapping an "
        "edge → `inconclusive`. Runs not at paper scale: `scale differs`, never `reproduced`.",
        f"- **Tolerances (points):** {bands}; default ±{settings['tolerance']:g}, also the equivalence band of "
        "claims without their own `band`.",
        "- **Effect claims:** runs paired per cell (dataset, model, configuration and eval mode of each side, "
        "same seed); each cell gets a paired t-test (table below). A cell counts with >= min_seeds seeds. Claim "
        "test: each seed's values averaged over the counting cells (seeds all of them have), then a two-sided "
        "one-sample t-test of those seed means (n_seeds - 1 df); seeds are the independent replicates, so cells "
        "sharing a run do not count twice. Variance claims: Pitman-Morgan test (corr(x + y, x - y) = 0) on the "
        f"same seed means. Equivalence claims: the {level} CI of the effect inside the band → `supported`, "
        "wholly outside → `contradicted`. Runs not at paper scale: `smoke scale`.",
        f"- **Multiple testing:** Holm-Bonferroni across the {n_tested} effect claims of this audit with a p-value "
        "(smoke-scale ones included, so the family does not depend on which runs reached paper scale; `p_holm`); "
        f"`supported` / `contradicted` need p_holm < alpha = {alpha:g}. Per-cell p-values are not adjusted and "
        "decide nothing."])


def audit_markdown(audit: pd.DataFrame, cells: pd.DataFrame, claims: dict, table_md: list[str],
                   deviations: list[dict]) -> str:
    numbers, effects = audit[audit["table"] != "effects"], audit[audit["table"] == "effects"]
    board = pd.concat([numbers["verdict"].value_counts().rename("number claims"),
                       effects["verdict"].value_counts().rename("effect claims")], axis=1).fillna(0).astype(int)
    texts = {e["id"]: e["claim"] for e in claims["effects"]}
    shown = effects.assign(claim=effects["claim_id"].map(texts))[
        ["claim_id", "claim", "expected", "mean", "ci_low", "ci_high", "n", "cells", "p_value", "p_holm", "verdict",
         "scale", "deviations", "note"]]
    cell_cols = ["claim_id", "cell", "n", "mean", "ci_low", "ci_high", "p_value", "counts", "scale"]
    return "\n\n".join([
        "# Audit of the published numbers and claims",
        rules_text(claims, int(effects["p_value"].notna().sum())),
        "Evidence (run ids) per claim is in audit.csv, per cell in effects_cells.csv.",
        "## Scoreboard", board.rename_axis("verdict").to_markdown(),
        "## Effect claims", shown.to_markdown(index=False, floatfmt=".3g"),
        "## Effect claims per cell", "mean: treatment - control over seeds (variance claims: log var ratio); "
        "p_value: the cell's own test, unadjusted; counts: the cell has min_seeds seeds and enters the claim test.",
        cells[cell_cols].to_markdown(index=False, floatfmt=".3g") if len(cells) else "No cell has runs.",
        "## Paper tables", *table_md,
        "## Deviations from the papers and the authors' code", deviations_markdown(deviations, audit)]) + "\n"
