"""The audit: every published number and claim in params/claims.yaml against our runs.

This module reads the registries and the runs, audits the number claims and writes the results; the
registries live in claims.py, run selection and pairing in selection.py, effect claims in effects.py,
their gates in gates.py, the statistics and verdict rules in verdicts.py, the pages (paper tables,
audit.md) in pages.py.

Number claims (one per paper-table cell) select the runs of the cell's kind, method, eval mode, dataset
and model, and read the table's `metric` column (default top1). Effect claims select a treatment and a
control side and pair them per cell: same dataset, model, configuration of each side (method label and
sweep values, from the run's record) and eval mode, matched on `pair_on` (seed always).

    python -m pipeline_src audit --claims params/claims.yaml --deviations params/deviations.yaml \
        --set-info JSON --csv ... --tables ... --runs RUNS_CSV...
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.results.claims import (deviation_markers, load_claims, load_deviations, number_claims,
                                         proxy_only_datasets)
from pipeline_src.results.effects import AUDIT_COLUMNS, CELL_COLUMNS, EFFECT_TESTS, audit_effects, image_variance
from pipeline_src.results.pages import audit_markdown, run_seeds, write_paper_table
from pipeline_src.results.selection import _with_run_columns, at_best_scale, claim_family, load_runs
from pipeline_src.results.verdicts import number_verdict

# names callers (tests, benchmarks/sim_verdict_rules.py) import from here since the audit was one module
__all__ = ["AUDIT_COLUMNS", "CELL_COLUMNS", "EFFECT_TESTS", "AuditFiles", "audit_effects", "audit_numbers",
           "claim_family", "image_variance", "load_claims", "load_deviations", "load_runs", "main_audit",
           "number_claims", "number_verdict"]


def audit_numbers(claims: list[dict], runs: pd.DataFrame, alpha: float, min_seeds: dict) -> pd.DataFrame:
    """One line per table cell and protocol reading that has runs (one `not run` line for a cell without)."""
    runs = _with_run_columns(runs)
    lines = []
    for claim in claims:
        dataset, model = claim["column"].split("/", 1)
        matching = runs[(runs["kind"] == claim["kind"]) & (runs["method"] == claim["method"])
                        & (runs["eval_mode"] == claim["eval_mode"]) & (runs["dataset_paper"] == dataset)
                        & (runs["model_paper"] == model)]
        metric, note = claim["metric"], ""
        if metric in matching.columns:
            matching = matching[matching[metric].notna()]
        else:
            matching, note = matching.iloc[0:0], f"the runs tables have no {metric} column"
        for reading, rows in (matching.groupby("reading", sort=False) if len(matching) else [("", matching)]):
            rows, scale = at_best_scale(rows)
            result = number_verdict(claim["paper"], rows[metric] if len(rows) else [], scale, claim["tolerance"],
                                    alpha, min_seeds.get(scale, min_seeds["default"]))
            split = f"seeds split: {result['split']}" if result["split"] else ""
            lines.append({**{k: claim[k] for k in ("claim_id", "table", "row", "column", "paper", "metric")},
                          **result, "reading": reading, "note": "; ".join(filter(None, [result["note"], split, note])),
                          "expected": f"±{claim['tolerance']:g}", "scale": scale if len(rows) else "",
                          "evidence": " ".join(rows["evidence"])})
    return pd.DataFrame(lines, columns=AUDIT_COLUMNS)


class AuditFiles(NamedTuple):
    """What main_audit writes; tables: the files paper_<table>.csv, .md and .tex of every table."""

    csv: Path
    cells: Path
    markdown: Path
    figure: Path
    tables: tuple[Path, ...]

    @classmethod
    def in_results(cls, results: Path, table_names: list[str]) -> "AuditFiles":
        """The layout of a results or report folder."""
        results = Path(results)
        return cls(results / "audit.csv", results / "effects_cells.csv", results / "audit.md",
                   results / "figures" / "audit.png",
                   tuple(results / "tables" / f"paper_{t}.{ext}" for t in table_names for ext in ("csv", "md", "tex")))

    def table(self, name: str, ext: str) -> Path:
        wanted = f"paper_{name}.{ext}"
        found = [path for path in self.tables if Path(path).name == wanted]
        if not found:
            raise ValueError(f"no output file {wanted} among the audit's table files; the registry's tables are "
                             "the rule's outputs: rebuild the DAG")
        return Path(found[0])


def main_audit(claims_path: Path, runs_csvs: list[Path], set_info: dict, files: AuditFiles | Path,
               deviations_path: Path) -> pd.DataFrame:
    """Write the audit's files (AuditFiles; a folder stands for its usual layout): audit.csv,
    effects_cells.csv, audit.md, figures/audit.png and tables/paper_<table>.{csv,md,tex}."""
    claims = load_claims(claims_path)
    deviations = load_deviations(deviations_path)
    settings = claims["settings"]
    runs = load_runs([Path(p) for p in runs_csvs], set_info)
    proxy_only = proxy_only_datasets(claims["effects"])
    runs = runs[~runs["dataset"].isin(proxy_only)]
    set_info = {name: info for name, info in set_info.items()  # nor do the sets that run only on them
                if not (isinstance(info, dict) and "kind" in info and set(info.get("datasets") or [None]) <= proxy_only)}
    numbers = audit_numbers(number_claims(claims["tables"], settings["tolerance"]), runs, settings["alpha"],
                            settings["min_seeds"])
    effects, cells = audit_effects(claims["effects"], runs, settings, claim_family(claims["effects"], set_info),
                                   claims["tables"])
    audit = pd.concat([numbers, effects], ignore_index=True)
    audit["deviations"] = deviation_markers(audit, deviations, runs)
    if not isinstance(files, AuditFiles):
        files = AuditFiles.in_results(files, list(claims["tables"]))
    table_md = []
    for table, spec in claims["tables"].items():
        spec = {"tolerance": settings["tolerance"], **spec}
        write_paper_table(audit, table, spec, {ext: files.table(table, ext) for ext in ("csv", "md", "tex")})
        table_md.append(files.table(table, "md").read_text().strip())
    write_atomic(files.csv, audit.to_csv(index=False, float_format="%.6g"))
    write_atomic(files.cells, cells.to_csv(index=False, float_format="%.6g"))
    family_size = int((effects["reading"].fillna("") != "").sum())  # the pairs outside it have no reading
    write_atomic(files.markdown, audit_markdown(audit, cells, claims, table_md, deviations, family_size,
                                                run_seeds(runs), set_info.get("readings")))
    from pipeline_src.results.plots import plot_audit  # matplotlib only when the figure is drawn

    plot_audit(audit, cells, files.figure)
    return audit
