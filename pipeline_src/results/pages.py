"""The audit's pages: each paper table with our numbers beside the published ones (csv, md, tex) and
audit.md (the rules, the paper tables, every claim with its verdict, the deviations). The verdicts
themselves come from audit.py and verdicts.py; this module only renders them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.results.proxy import proxy_note
from pipeline_src.results.verdicts import PAPER_SCALE


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
    """The paper's own layout: its rows and columns, each cell the cell_text of its claim. With several
    protocol readings, each row repeats once per reading that has runs ("baseline [sgd_plain]")."""
    lines = audit[audit["table"] == table]
    readings = [r for r in dict.fromkeys(lines["reading"].fillna("")) if r]
    by_key = {(row, col, r): line for row, col, r, line in
              zip(lines["row"], lines["column"], lines["reading"].fillna(""), (l for _, l in lines.iterrows()))}
    not_run = {(row, col): line for (row, col, r), line in by_key.items() if line["verdict"] == "not run"}
    index, body = [], []
    for row in spec["rows"]:
        for reading in (readings if len(readings) > 1 else [readings[0] if readings else ""]):
            index.append(f"{row} [{reading}]" if len(readings) > 1 else row)
            body.append([cell_text(by_key.get((row, col, reading), not_run.get((row, col))), **marks)
                         if (row, col, reading) in by_key or (row, col) in not_run else "no runs under this reading"
                         for col in spec["columns"]])
    return pd.DataFrame(body, index=pd.Index(index, name="row"), columns=spec["columns"])


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


def rules_text(claims: dict, family_size: int, by_what: list[str] = ()) -> str:
    """The settings and rules the verdicts follow, stated once at the top of audit.md. by_what: the family's
    (claim, reading) pairs whose claims select runs by what the runs are (kind `any`), named because they
    are in the family through sets of any kind."""
    settings, alpha = claims["settings"], claims["settings"]["alpha"]
    seeds = ", ".join(f"{scale} scale {n}" if scale != "default" else f"other scales {n}"
                      for scale, n in settings["min_seeds"].items())
    bands = "; ".join(f"{name} ±{spec.get('tolerance', settings['tolerance']):g} ({spec.get('metric', 'top1')}; "
                      f"{spec.get('tolerance_reason', 'the default')})" for name, spec in claims["tables"].items())
    level = f"{100 * (1 - alpha):g}%"
    return "\n".join([
        f"- **Seeds needed (min_seeds):** {seeds}; variance claims {settings['variance_min_seeds']} "
        f"({settings.get('variance_min_seeds_reason', '')}); fewer gives `too few seeds` (numbers kept).",
        "- **Effect intervals cover the seeds and the test set.** Every seed is scored on the same test images, "
        "so the spread over seeds misses the test set's own sampling error. Where the runs stored per-image "
        "predictions, the seeds × images table of paired differences is a two-way layout, and an effect's "
        "squared standard error is its unbiased two-way estimate s_seeds² / n + (s_images² - MS_interaction / n) "
        "/ N, the images term floored at 0 (s_seeds²: variance of the seed means; s_images²: the variance over "
        "the N test images of each image's seed-averaged difference; MS_interaction: the residual mean square, "
        "which the images' variance also holds and the seeds' already carry, so it is counted once); t with "
        "n - 1 df. Runs without predictions: seeds only; the `uncertainty` column says which, and a cell that "
        "falls back to seeds only says why in its note (no run of it stored predictions.npz, or which runs "
        "lack it).",
        f"- **Number claims:** the {level} t-interval of our mean over seeds against the band paper ± tolerance "
        "(over seeds only: the paper measured its number on the same test set, so that set's sampling error is "
        "no part of the difference): "
        "inside → `reproduced`; wholly above / below → `differs (higher)` / `differs (lower)`; overlapping an "
        "edge → `inconclusive`. Runs not at paper scale: `scale differs`, never `reproduced`.",
        f"- **Tolerances (points):** {bands}; default ±{settings['tolerance']:g}, also the equivalence band of "
        "claims without their own `band`.",
        "- **Protocol readings.** Where a paper leaves a protocol choice open (the VPN text names no optimizer; the "
        "NoisyNN text, how strong the noise is and whether it is on in training), the params declare readings; "
        "every number and claim is judged per reading, never across them. The NoisyNN authors' two protocols are "
        "readings: a NoisyNN cell is judged under the one its treatment's method follows, else under the own "
        "reading (its treatment and control still pair on their training reading).",
        "- **Cells.** A cell is dataset × model × configuration of each side × reading; its seeds are paired "
        "only within it. Each cell gets its own test: paired claims a two-sided t-test against 0 (and, where the "
        "paper's tables imply an effect, against that effect); equivalence claims two one-sided tests (TOST) at "
        "the band; variance claims a paired Brown-Forsythe test (absolute deviations from each side's median, "
        "differenced per seed, t-tested); a side constant over seeds makes the cell `not applicable`. A cell's "
        "verdict uses its p Holm-adjusted over its claim's counting cells (`p_adj`); `test` names the test.",
        "- **No t-test without a variance that describes one population.** A cell whose seeds do not vary "
        "(every seed the same difference), or whose seeds split into two groups (below), gets no t-test and no "
        "t-interval: an exact sign-flip permutation test over seeds (n seeds cannot give p below 2 / 2^n: 0.0625 "
        "at 5 seeds, 0.002 at 10), or, for a cell without seed variance whose runs stored predictions, McNemar's "
        "exact test over the test images it moves; equivalence then uses exact sign-flip tests at each edge of "
        "the band. Such a cell is never tested against the paper's effect.",
        "- **A claim's verdict comes from its cells, by the rule it declares (`rule`).** `all cells` "
        "(intersection-union): the claim's p is its largest cell p. `at least q of cells`: (m - u + 1) times "
        "the u-th smallest cell p, u = ceil(q m) (partial conjunction); a signed verdict needs the cells the rule "
        "rests on (all, or those u) to agree in sign. `mixed` needs cells of both signs that are each decisive "
        "after the family correction (their Holm p times the family size below alpha): a cell that decides "
        "nothing never makes a claim mixed. Cells are never pooled into a verdict. The "
        "claim-level `mean` is the cell's own with one cell; with several, an inverse-variance pooled mean shown "
        "for description only, beside its heterogeneity I² (`pooled_i2`).",
        f"- **Multiple testing, fixed in advance:** Bonferroni over a family of {family_size} (claim, reading) "
        "pairs: every effect claim of the registry whose sides the params file declares runs for, under each "
        "reading it declares, whether or not the runs exist yet (missing runs count as p = 1). "
        + (f"{len(by_what)} of these pairs ({', '.join(by_what)}) belong to claims that select their runs by what "
           "the runs are (kind `any`: noise kind, site, where the noise is on, trained clean, eval mode), not by the "
           "kind of set that declared them, so any set whose runs match puts them in the family: without them it "
           f"would be {family_size - len(by_what)}. Such a claim pairs a model with the clean-trained model of the "
           "same recipe (dataset, model, training block, reading, data version) and seed, tested clean (a model "
           "trained clean with the noise switched on at test: its own no-noise evaluation), and names each side by "
           "its set, so a cell is one setting and never pools two sets' runs. " if by_what else "")
        + f"`supported` / `contradicted` need p_family = {family_size} × p < alpha = {alpha:g}. Bonferroni rather "
        "than Holm: Holm's step-down lets one claim's p move another claim's threshold, so runs arriving for "
        "one claim could change another's verdict; here they cannot.",
        "- **Directions.** A hypothesis worded \"differently\" (expected `±`) is two-sided, and its verdict "
        "names the direction the data shows: `supported (higher)` / `supported (lower)`. A directional claim "
        "significant the other way is `contradicted`.",
        "- **Short of the paper's effect.** Where the paper's own tables imply an effect (a row difference), each "
        "cell is also tested against it: the paper gives no run-to-run spread, so our cell's seed sd over the "
        "paper's 5 seeds stands in for it (added to our standard error), and the distance first gives up 0.01, "
        "the most the rounding of the paper's two 2-decimal table values can move it. Where our effect lies on "
        "the near side in every counting cell and that test holds after the family correction, the claim reads "
        "`short of the paper's effect`: our effect is smaller than the paper's beyond the paper's own spread, "
        "which says nothing on whether the effect is zero (that is the test against 0).",
        "- **Split seeds:** a cell whose sorted seed values leave a gap of at least 5 points and 3 pooled "
        "within-group sds is flagged (benchmarks/sim_verdict_rules.py measures the rule's errors); it gets the "
        "exact tests above, never a t-interval.",
        *manipulation_rules(claims),
        "- **Sensitivity:** `sensitivity` lists, per claim, the cells whose removal alone changes its verdict.",
        "- Runs not at paper scale: `smoke scale`, numbers kept, nothing decided."])


def manipulation_rules(claims: dict) -> list[str]:
    """The gates each paper section declares (claims.yaml `manipulation_check`), one rule line each."""
    checks = {e["paper"]: e["manipulation"] for e in claims["effects"] if e.get("manipulation")}
    return [f"- **Manipulation check ({paper.upper()} effect cells): {check['name']}.** A cell counts only "
            f"when its mechanism is measurably at work; otherwise it is shown, reads `not applicable (<gate>)` and "
            f"decides nothing; `gated` in the claim table counts the cells each gate took out, and each cell's "
            f"`manipulation` column gives the measured outcome. A generator run "
            f"({', '.join(check['generator_methods'])}) "
            f"is active when its mean sigma over the test set is at least {check['min_sigma_mean']:g} or its noise "
            f"changes at least {check['min_changed_share']:.0%} of test predictions (class enumeration against no "
            f"noise); gates: `base at chance` (a configuration's no-noise mean below 100 / C + "
            f"{check['base_margin_points']:g} points), `generator inert` (a generator run with both measured "
            f"below), `no manipulation data` (a generator run that recorded neither). Why: {check['reason']}"
            for paper, check in checks.items()]


def audit_markdown(audit: pd.DataFrame, cells: pd.DataFrame, claims: dict, table_md: list[str],
                   deviations: list[dict], family_size: int, seeds: Mapping[str, int],
                   readings: Mapping[str, str] | None = None) -> str:
    """audit.md; seeds: each evidence run's seed from its record (run_seeds), to fold the runs per cell;
    readings: each reading's source (config.audit_set_info)."""
    numbers, effects = audit[audit["table"] != "effects"], audit[audit["table"] == "effects"]
    board = pd.concat([numbers["verdict"].value_counts().rename("number claims"),
                       effects["verdict"].value_counts().rename("effect claims")], axis=1).fillna(0).astype(int)
    texts = {e["id"]: e["claim"] for e in claims["effects"]}
    # a claim's proxy is named beside its verdict (never as it): the note points to its table
    proxies = effects["claim_id"].map({e["id"]: proxy_note(e) for e in claims["effects"]}).fillna("")
    notes = ["; ".join(filter(None, [n if isinstance(n, str) else "", p])) for n, p in zip(effects["note"], proxies)]
    shown = effects.assign(claim=effects["claim_id"].map(texts), note=notes)[
        ["claim_id", "reading", "claim", "expected", "rule", "mean", "ci_low", "ci_high", "n", "cells", "gated",
         "p_value", "p_family", "verdict", "scale", "uncertainty", "deviations", "sensitivity", "note"]]
    cell_cols = ["claim_id", "reading", "cell", "seeds", "mean", "ci_low", "ci_high", "uncertainty", "test", "p_value",
                 "p_adj", "paper_effect", "verdict", "manipulation", "split", "scale"]
    any_kind = {e["id"] for e in claims["effects"] if e["test"].get("kind") == "any"}
    by_what = [f"{c} [{r}]" for c, r in zip(effects["claim_id"], effects["reading"].fillna(""))
               if r and c in any_kind]
    return "\n\n".join([
        "# Audit of the published numbers and claims",
        rules_text(claims, family_size, by_what),
        "Evidence (run ids) per claim is in audit.csv, per cell in effects_cells.csv; each claim's section below "
        "lists the runs each of its cells pairs.",
        *(["## Readings and their sources", "\n".join(f"- `{name}`: {text}" for name, text in readings.items())]
          if readings else []),
        "## Scoreboard", board.rename_axis("verdict").to_markdown(),
        "## Effect claims", "cells: counting / all; gated: the cells each gate took out (shown, never deciding).",
        _clean(shown).to_markdown(index=False, floatfmt=".3g"),
        "## Manipulation check by reading", gate_summary(cells),
        "## Effect claims per cell", "A cell's verdict is its own (Holm over its claim's cells, no family "
        "correction): it describes the cell and is never a claim's verdict, which is the family-corrected one "
        "above. seeds: the per-seed values (variance claims: treatment vs control); mean: "
        "treatment - control over seeds (variance claims: log var ratio); test: t, or the exact test of a cell "
        "without a usable seed variance; p_value: the cell's own test; p_adj: Holm-adjusted over its claim's "
        "counting cells; paper_effect: the effect the paper's table implies; manipulation: the outcome of the "
        "cell's manipulation check (blank where none is declared).",
        _clean(cells[cell_cols]).to_markdown(index=False, floatfmt=".3g") if len(cells) else "No cell has runs.",
        "## Claims one by one", claim_sections(effects, cells, claims, seeds),
        "## Paper tables", *table_md,
        "## Deviations from the papers and the authors' code", deviations_markdown(deviations, audit)]) + "\n"


def gate_summary(cells: pd.DataFrame) -> str:
    """Per reading, how many cells under a manipulation check pass it and how many each gate takes out
    (counted over every claim: one set of runs used by three claims is three cells)."""
    if "manipulation_check" not in cells:
        return "No cell has a manipulation check."
    checked = cells[cells["manipulation_check"].fillna("").astype(str) != ""]
    if checked.empty:
        return "No cell has a manipulation check."
    outcome = checked["verdict"].where(checked["verdict"].str.startswith("not applicable ("), "passes")
    table = pd.crosstab(checked["reading"], outcome.rename("outcome"))
    return ("Cells under a manipulation check, per protocol reading, over all claims (a set of runs that three "
            "claims use counts three times): those that pass take part in the verdicts; the others are shown and "
            "decide nothing. Each generator's sigma by epoch and the predictions its noise changed: "
            "[tables/generator_activity.md](tables/generator_activity.md).\n\n"
            + table.rename_axis(index="reading", columns=None).to_markdown())


def runs_text(evidence: str, seeds: Mapping[str, int]) -> str:
    """A cell's runs, seeds folded: 'vpn_joint/fmnist-sr-baseline-s{0,1,2,3,4}'. seeds: '<set>/<run id>' ->
    the seed its record gives (run_seeds); a run id ends in its seed (config.format_run_id), so the runs of
    one configuration share what comes before it. A run without a known seed is shown whole."""
    groups: dict[str, list[str]] = {}
    for run in str(evidence).split():
        seed = seeds.get(run)
        stem = run if seed is None else run.removesuffix(str(seed))
        groups.setdefault(stem, []).append("" if seed is None else str(seed))
    return "; ".join(f"{stem}{{{','.join(folded)}}}" if folded != [""] else stem for stem, folded in groups.items())


def run_seeds(runs: pd.DataFrame) -> dict[str, int]:
    """'<set>/<run id>' (a run's `evidence`) -> its seed, from runs tables as the audit reads them."""
    return {run: int(seed) for run, seed in zip(runs["evidence"], runs["seed"])}


def claim_heading(claim_id: str, reading: str) -> str:
    return f"{claim_id} [{reading}]" if reading else claim_id


def anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def claim_sections(effects: pd.DataFrame, cells: pd.DataFrame, claims: dict, seeds: Mapping[str, int]) -> str:
    """One section per effect claim and reading with runs: the claim, its verdict and why, and its cells."""
    texts = {e["id"]: e["claim"] for e in claims["effects"]}
    parts = []
    for _, line in effects[effects["verdict"] != "not run"].iterrows():
        mine = cells[(cells["claim_id"] == line["claim_id"]) & (cells["reading"] == line["reading"])]
        shown = mine[["cell", "seeds", "mean", "ci_low", "ci_high", "uncertainty", "test", "p_adj", "paper_effect",
                      "verdict"]]
        gated = line.get("gated")
        facts = [f"claim-level (family-corrected): **{line['verdict']}** (rule: {line['rule']}; {line['cells']} "
                 f"cells count; p_family {line['p_family']:.3g})",
                 f"cells lost to gates: {gated if isinstance(gated, str) and gated else 'none'}",
                 *(f"{key}: {line[key]}" for key in ("note", "sensitivity", "deviations")
                   if isinstance(line[key], str) and line[key])]
        # per cell: the manipulation check's outcome, and why an interval is over seeds only or has no t-test
        for column in ("manipulation", "note"):
            facts += [f"{cell}: {text}" for cell, text in zip(mine["cell"], mine[column]) if isinstance(text, str) and text]
        # which committed runs each cell pairs (sets and run ids, seeds folded): a claim may draw on any set
        runs = [f"- {cell}: {runs_text(evidence, seeds)}" for cell, evidence in zip(mine["cell"], mine["evidence"])]
        parts += [f"### {claim_heading(line['claim_id'], line['reading'])}", texts.get(line["claim_id"], ""),
                  "\n".join(f"- {fact}" for fact in facts), _clean(shown).to_markdown(index=False, floatfmt=".3g"),
                  "Runs per cell (`runs/<set>/<run id>/`):\n\n" + "\n".join(runs)]
    return "\n\n".join(parts) if parts else "No effect claim has runs."


def _ours(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f} (n={n})" if n >= 2 else f"{mean:.2f} (n={n})"


def glance_table(audit: pd.DataFrame, cells: pd.DataFrame, audit_link: str = "audit.md") -> str:
    """Verdicts at a glance: every claim and reading with runs; the paper's number (an effect claim: the
    effects its tables imply, per cell), ours, the verdict, and a link to it in audit.md."""
    rows = []
    for _, line in audit[audit["verdict"] != "not run"].iterrows():
        if line["table"] != "effects":
            rows.append({"claim": f"{line['table']}: {line['row']}, {line['column']}", "reading": line["reading"],
                         "paper": f"{line['paper']:.2f}", "ours": _ours(line["mean"], line["std"], int(line["n"])),
                         "verdict": line["verdict"], "where": f"[paper tables]({audit_link}#paper-tables)"})
            continue
        mine = cells[(cells["claim_id"] == line["claim_id"]) & (cells["reading"] == line["reading"])]
        names = [f"{m} {str(t).split(' [')[0]}" for m, t in zip(mine["model"], mine["treatment"])]
        paper = "; ".join(f"{c} {e:+.2f}" for c, e in zip(names, mine["paper_effect"]) if pd.notna(e))
        ours = "; ".join(f"{c} {m:+.2f}" for c, m in zip(names, mine["mean"]) if pd.notna(m))
        heading = claim_heading(line["claim_id"], line["reading"])
        rows.append({"claim": line["claim_id"], "reading": line["reading"], "paper": paper or "-", "ours": ours,
                     "verdict": line["verdict"], "where": f"[{heading}]({audit_link}#{anchor(heading)})"})
    if not rows:
        return "No claim has runs yet."
    return _clean(pd.DataFrame(rows)).to_markdown(index=False)


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Markdown table cells: no pipes or newlines in text, blank for NaN text."""
    return frame.apply(lambda col: col.map(lambda v: str(v).replace("|", "\\|").replace("\n", " "))
                       if col.dtype == object else col)
