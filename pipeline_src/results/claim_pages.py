"""The report as pages one can navigate: one page per claim of params/claims.yaml under <report>/claims/
(an effect claim: its verdict per reading, its cells with their per-seed values, figures, departures and
runs; a table of published numbers: the table refilled, each cell's seeds, departures and runs, and where
the cells not run are declared), and the claim table that the report's index and the repository README
show: one row per claim, its best evidence, its verdict per reading or why it is not run.

Everything here reads the written audit.csv, effects_cells.csv and tables/, so a page rebuilt from the
committed files is the same page.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.results.not_run import (SMOKE_PARAMS, datasets_run, effect_kinds, load_params_file,
                                          not_run_reason, smoke_text)
from pipeline_src.results.pages import run_seeds, runs_text
from pipeline_src.results.proxy import proxy_note

SHORT = 70  # characters of a claim's sentence in the claim table


def page_name(claim_id: str) -> str:
    """The file of a claim's page in <report>/claims/ (a table's page: <paper>.<table>.md)."""
    return f"{claim_id}.md"


def short_text(text: str, limit: int = SHORT) -> str:
    """A claim's sentence in a few words: without its 'Hypothesis:' label, its first words while they and
    the space after them fit in `limit` characters, then an ellipsis (a first word longer than that is cut)."""
    text = " ".join(str(text).split()).removeprefix("Hypothesis:").lstrip()
    if len(text) <= limit:
        return text
    kept: list[str] = []
    for word in text.split(" "):
        if len(" ".join([*kept, word])) >= limit:
            break
        kept.append(word)
    return (" ".join(kept) or text[:limit]).rstrip(",;:") + " …"


def _cell(value) -> str:
    """A markdown table cell: no pipes or newlines."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).map(_cell).to_markdown(index=False) if rows else ""


# ---- the claim table --------------------------------------------------------------------------------

def _evidence_text(lines: pd.DataFrame, cells: pd.DataFrame | None = None) -> str:
    """The runs behind a claim's verdicts: datasets (or table columns), scale and seeds."""
    if cells is not None and len(cells):
        where = ", ".join(sorted({f"{d}/{m}" for d, m in zip(cells["dataset"], cells["model"])}))
        seeds = sorted({int(n) for n in cells["n"] if pd.notna(n) and n > 0})
    else:
        where = ", ".join(dict.fromkeys(lines["column"]))
        seeds = sorted({int(n) for n in lines["n"] if pd.notna(n) and n > 0})
    scales = ", ".join(sorted({s for s in lines["scale"] if isinstance(s, str) and s}))
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}" if seeds else "?"
    return f"{where} ({scales} scale, {n} seeds)"


def _verdicts_by_reading(lines: pd.DataFrame, count: bool) -> str:
    """'reading: verdict' per reading (a table: the count of each verdict among its cells with runs)."""
    parts = []
    for reading, part in lines.groupby("reading", sort=False):
        name = reading or "-"
        if count:
            tally = Counter(part["verdict"])
            parts.append(f"{name}: " + ", ".join(f"{n} {v}" for v, n in tally.most_common()))
        else:
            parts.append(f"{name}: {', '.join(dict.fromkeys(part['verdict']))}")
    return "; ".join(parts)


def claim_rows(audit: pd.DataFrame, cells: pd.DataFrame, claims: dict, paper: dict | None = None,
               smoke: dict | None = None) -> list[dict]:
    """One row per claim of the registry, tables of published numbers first per paper as the registry
    orders them: what it says, our best evidence, the verdict per reading or why it is not run, its page."""
    paper = load_params_file() if paper is None else paper
    smoke = load_params_file(SMOKE_PARAMS) if smoke is None else smoke
    have = datasets_run(audit)
    rows = []
    for name, spec in claims["tables"].items():
        claim_id = f"{spec['paper']}.{name}"
        lines = audit[audit["table"] == name]
        ran = lines[lines["verdict"] != "not run"]
        values = [(f"{r} {c}", v) for r, vs in spec["rows"].items() for c, v in zip(spec["columns"], vs)]
        what = spec["source"].split(" (")[0]
        if len(values) <= 3:  # a headline: its numbers
            what += ": " + ", ".join(f"{v:g} ({k})" for k, v in values)
        else:
            what += f": {len(values)} published numbers"
        not_run = lines.loc[lines["verdict"] == "not run", "column"].unique().tolist()
        kinds = {spec["kind"], *spec.get("row_kind", {}).values()}
        verdict = _verdicts_by_reading(ran, count=True) if len(ran) else not_run_reason(paper, kinds, not_run, have)
        if len(ran) and not_run:
            verdict += f"; {len(lines[lines['verdict'] == 'not run'])} cells not run"
        rows.append({"claim": claim_id, "what": what,
                     "evidence": _evidence_text(ran) if len(ran) else smoke_text(smoke, kinds, not_run),
                     "verdict": verdict, "page": page_name(claim_id)})
    for claim in claims["effects"]:
        lines = audit[(audit["table"] == "effects") & (audit["claim_id"] == claim["id"])]
        ran = lines[lines["verdict"] != "not run"]
        mine = cells[cells["claim_id"] == claim["id"]] if len(cells) else cells
        verdict = (_verdicts_by_reading(ran, count=False) if len(ran)
                   else not_run_reason(paper, effect_kinds(claim["test"], paper), have=have))
        rows.append({"claim": claim["id"], "what": short_text(claim["claim"]),
                     "evidence": _evidence_text(ran, mine) if len(ran) else smoke_text(smoke, effect_kinds(claim["test"], smoke)),
                     "verdict": "; ".join(filter(None, [verdict, proxy_note(claim)])),  # a proxy beside, never as, it
                     "page": page_name(claim["id"])})
    return rows


def claim_table(rows: list[dict], link_prefix: str) -> str:
    """The claim table as markdown, each claim linking to its page under link_prefix; cells unpadded, so
    the table costs its text and no more."""
    head = ["claim", "in a few words", "best evidence", "verdict per reading, or why not run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(v) for v in (f"[{r['claim']}]({link_prefix}{r['page']})", r["what"],
                                                    r["evidence"], r["verdict"])) + " |" for r in rows]
    return "\n".join(lines)


# ---- the pages ----------------------------------------------------------------------------------------

def _side_text(side: dict) -> str:
    """A claim side's filters in one line: `noise: [circular_shift, optimal_q], eval_modes: [no_noise]`."""
    return "`" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" if isinstance(v, list) else f"{k}: {v}"
                           for k, v in side.items()) + "`"


def _sets_of(evidence) -> list[str]:
    return list(dict.fromkeys(run.split("/")[0] for text in evidence for run in str(text).split()))


def _figures(report_dir: Path, sets: list[str]) -> list[str]:
    """The figures of these sets, as markdown images relative to a page in claims/."""
    out = []
    for name in sets:
        for suffix in ("", "_test_batches", "_training"):
            figure = report_dir / "figures" / f"{name}{suffix}.png"
            if figure.exists():
                out.append(f"![{figure.stem}](../figures/{figure.name})")
    return out


def _departures(markers: list[str], deviations: list[dict]) -> str:
    """The registry's entries behind these markers: marker, id, what, why."""
    wanted = list(dict.fromkeys(m for text in markers if isinstance(text, str) for m in text.split(",") if m))
    by_marker = {d["marker"]: d for d in deviations}
    rows = [{"": m, "id": f"`{by_marker[m]['id']}`", "what": " ".join(str(by_marker[m]["what"]).split()),
             "why": " ".join(str(by_marker[m]["why"]).split())} for m in wanted if m in by_marker]
    return _table(rows) if rows else "None registered for these cells."


def _fmt(value, digits: int = 3) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.2f}"


def _interval(low, high) -> str:
    """A 95% CI, or '-' for a cell tested without one (exact tests)."""
    return "-" if pd.isna(low) and pd.isna(high) else f"{_fmt(low)} to {_fmt(high)}"


def _seeds(report_dir: Path, evidence) -> dict[str, int]:
    """Each evidence run's seed, from the runs tables (tables/<set>_runs.csv) of the sets it names."""
    paths = [report_dir / "tables" / f"{name}_runs.csv" for name in _sets_of(evidence)]
    frames = [pd.read_csv(path) for path in paths if path.exists()]
    if not frames:
        return {}
    return run_seeds(pd.concat([f.assign(evidence=f["experiment_set"] + "/" + f["run_id"]) for f in frames]))


def _per_seed(report_dir: Path, evidence: str, eval_mode: str, metric: str, tables: dict) -> str:
    """A number cell's per-seed values, read from its sets' run tables (tables: path -> frame, read once)."""
    values = []
    for run in str(evidence).split():
        name, run_id = run.split("/", 1)
        path = report_dir / "tables" / f"{name}_runs.csv"
        if path not in tables:
            tables[path] = pd.read_csv(path) if path.exists() else None
        runs = tables[path]
        hit = None if runs is None else runs[(runs["run_id"] == run_id) & (runs["eval_mode"] == eval_mode)]
        if hit is not None and len(hit) and metric in hit:
            values.append(f"{hit[metric].iloc[0]:.2f}")
    return ", ".join(values)


def _proxy_section(claim: dict) -> list[str]:
    """A claim's proxy, linked from its page (tables/ is a sibling of claims/), with why it stands in."""
    note = proxy_note(claim)
    if not note:
        return []
    table = f"tables/{claim['proxy']['table']}.md"
    return ["## Proxy", note.replace(table, f"[{table}](../{table})") + ". Why a proxy: "
            + " ".join(str(claim["proxy"]["reason"]).split())]


def effect_page(claim: dict, audit: pd.DataFrame, cells: pd.DataFrame, deviations: list[dict],
                report_dir: Path, paper: dict, readings: dict | None = None) -> str:
    lines = audit[(audit["table"] == "effects") & (audit["claim_id"] == claim["id"])]
    ran = lines[lines["verdict"] != "not run"]
    test = claim["test"]
    parts = [f"# {claim['id']}", claim["claim"],
             f"Source: {claim['source']} ({claim['provenance']}). Test: `{test['type']}` on runs of "
             + (f"kind `{test['kind']}`" if test["kind"] != "any" else "any set that match its sides, by what they "
                "are: treatment " + _side_text(test["treatment"]) + ", control " + _side_text(test["control"])
                + f", paired on {', '.join(test.get('pair_on', []))}")
             + ". [Back to the report](../README.md); every rule: [audit.md](../audit.md).",
             "## Verdict per reading"]
    if not len(ran):
        parts += [not_run_reason(paper, effect_kinds(test, paper), have=datasets_run(audit)) + ".",
                  *_proxy_section(claim),
                  "## Departures from the papers", _departures(list(lines["deviations"]), deviations)]
        return "\n\n".join(parts) + "\n"
    text = lambda value: value if isinstance(value, str) else ""  # noqa: E731  (a blank csv cell is NaN)
    parts.append(_table([{"reading": r["reading"] or "-", "verdict": r["verdict"], "rule": r["rule"],
                          "cells counting": r["cells"], **({"gated": text(r["gated"])} if "gated" in r else {}),
                          "p_family": _fmt(r["p_family"]), "note": text(r["note"]),
                          "sensitivity": text(r["sensitivity"])} for _, r in lines.iterrows()]))
    # each reading the claim is judged under, with its source (a NoisyNN protocol: the authors' code)
    sources = [f"- `{r}`: {readings[r]}" for r in dict.fromkeys(lines["reading"]) if r in (readings or {})]
    parts += ["\n".join(sources)] if sources else []
    mine = cells[cells["claim_id"] == claim["id"]] if len(cells) else cells
    against_paper = "paper_effect" in mine and mine["paper_effect"].notna().any()
    parts += ["## Cells", "seeds: the per-seed values (treatment - control; a variance claim: treatment vs "
              "control); mean and 95% CI over seeds (and test images where runs stored predictions); test: the "
              "cell's test; p_adj: its p adjusted within its claim; paper: the effect the paper's table implies; "
              + ("p vs paper: the same for our effect against the paper's, its spread and rounding allowed for "
                 "(what `short of the paper's effect` needs); " if against_paper else "")
              + "manipulation: whether the mechanism was at work, measured (where the claim declares a check).",
              _table([{"reading": c["reading"] or "-", "cell": c["cell"], "n": c["n"], "seeds": c["seeds"],
                       "mean": _fmt(c["mean"]), "95% CI": _interval(c["ci_low"], c["ci_high"]),
                       **({"test": text(c["test"])} if "test" in c else {}),
                       "p_adj": _fmt(c["p_adj"]), "paper": _fmt(c["paper_effect"]),
                       **({"p vs paper": _fmt(c["p_paper_adj"])} if against_paper else {}),
                       "verdict": c["verdict"],
                       **({"manipulation": text(c["manipulation"])} if "manipulation" in c else {}),
                       "split": text(c["split"]), "note": text(c["note"])}
                      for _, c in mine.iterrows()]) or "No cell has runs."]
    parts += _proxy_section(claim)
    sets = _sets_of(mine["evidence"] if len(mine) else ran["evidence"])
    figures = _figures(report_dir, sets)
    seeds = _seeds(report_dir, mine["evidence"]) if len(mine) else {}
    parts += ["## Figures", *(figures or ["None drawn for these sets."]),
              "## Departures from the papers", _departures(list(ran["deviations"]), deviations),
              "## Runs", "Each run's `metrics.json` is under `runs/<set>/<run id>/`:",
              "\n".join(f"- {c['reading'] or '-'}, {c['cell']}: {runs_text(c['evidence'], seeds)}"
                        for _, c in mine.iterrows()) or "None."]
    if set(sets):
        parts.append("Sets: " + ", ".join(f"[{s}](../tables/{s}.md)" for s in sets
                                          if (report_dir / "tables" / f"{s}.md").exists()))
    return "\n\n".join(parts) + "\n"


def table_page(name: str, spec: dict, audit: pd.DataFrame, deviations: list[dict], report_dir: Path,
               paper: dict) -> str:
    lines = audit[audit["table"] == name]
    ran = lines[lines["verdict"] != "not run"]
    refilled = report_dir / "tables" / f"paper_{name}.md"
    parts = [f"# {spec['paper']}.{name}", f"{spec['paper'].upper()}, {spec['source']}.",
             f"Band: paper ± {spec.get('tolerance', 1):g} points ({spec.get('tolerance_reason', 'the default')}). "
             "[Back to the report](../README.md); every rule: [audit.md](../audit.md).",
             "## The table refilled with our numbers",
             refilled.read_text().split("\n", 2)[2].strip() if refilled.exists() else "Not written."]
    parts += ["## Cells with runs"]
    tables: dict = {}
    if len(ran):
        seeds = _seeds(report_dir, ran["evidence"])
        parts.append(_table([{"row": r["row"], "column": r["column"], "reading": r["reading"] or "-",
                              "paper": f"{r['paper']:g}", "ours": f"{r['mean']:.2f} ± {r['std']:.2f}",
                              "95% CI": _interval(r["ci_low"], r["ci_high"]), "n": int(r["n"]),
                              "per seed": _per_seed(report_dir, r["evidence"], spec["row_map"][r["row"]][1],
                                                    spec.get("metric", "top1"), tables),
                              "verdict": r["verdict"], "departures": r["deviations"] or "",
                              "runs": runs_text(r["evidence"], seeds)} for _, r in ran.iterrows()]))
        figures = _figures(report_dir, _sets_of(ran["evidence"]))
        parts += ["## Figures", *(figures or ["None drawn for these sets."])]
    else:
        parts.append("None.")
    missing = lines[lines["verdict"] == "not run"]
    if len(missing):
        kinds = {spec["kind"], *spec.get("row_kind", {}).values()}
        parts += ["## Cells not run", "\n".join(
            f"- {column} (cells: {len(part)}): {not_run_reason(paper, kinds, [column], datasets_run(audit))}"
            for column, part in missing.groupby("column", sort=False))]
    parts += ["## Departures from the papers", _departures(list(lines["deviations"]), deviations)]
    return "\n\n".join(parts) + "\n"


def write_claim_pages(report_dir: Path, audit: pd.DataFrame, cells: pd.DataFrame, claims: dict,
                      deviations: list[dict], paper: dict | None = None, readings: dict | None = None) -> list[Path]:
    """One page per claim under <report_dir>/claims/; pages of claims no longer in the registry go.
    readings: each reading's source (config.audit_set_info), listed under a claim's verdicts."""
    paper = load_params_file() if paper is None else paper
    folder = Path(report_dir) / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    pages = {}
    for name, spec in claims["tables"].items():
        pages[page_name(f"{spec['paper']}.{name}")] = table_page(name, spec, audit, deviations, report_dir, paper)
    for claim in claims["effects"]:
        pages[page_name(claim["id"])] = effect_page(claim, audit, cells, deviations, report_dir, paper, readings)
    for stale in folder.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()
    for file, text in pages.items():
        write_atomic(folder / file, text)
    return [folder / file for file in pages]
