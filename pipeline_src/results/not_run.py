"""Where a claim that has no runs in a report is declared: the sets of params/paper.yaml that would run it,
the datasets and GPU they need, and whether the embedded default runs it at smoke scale. The claim pages
and the claim table say this for every claim or table cell without runs (claim_pages.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipeline_src.provenance import REPO_ROOT

PAPER_PARAMS = REPO_ROOT / "params" / "paper.yaml"  # where the full protocol of both papers is declared
SMOKE_PARAMS = REPO_ROOT / "params" / "default.yaml"  # the embedded default: every method at smoke scale


def load_params_file(path: Path = PAPER_PARAMS) -> dict:
    """A params file as written (no validation: only its sets' kinds, datasets and models are read); {} if absent."""
    return yaml.safe_load(Path(path).read_text()) if Path(path).exists() else {}


def declared_in(paper: dict, kinds: set[str]) -> list[tuple[str, list[str], list[str]]]:
    """The sets of params/paper.yaml of these kinds: (set, the datasets' and the models' paper names)."""
    out = []
    for name, spec in (paper.get("experiment_sets") or {}).items():
        if spec.get("kind", name) in kinds:
            datasets = [(paper["datasets"].get(d) or {}).get("paper_name", d) for d in spec.get("datasets", [])]
            models = [(paper["models"].get(m) or {}).get("paper_name", m) for m in spec.get("models", [])]
            out.append((name, datasets, models))
    return out


def _declared_for(params: dict, kinds: set[str], columns: list[str] | None) -> list:
    """declared_in, narrowed to sets that run one of these table columns (dataset/model) when given."""
    sets = declared_in(params, kinds)
    if columns is not None:
        wanted = {tuple(c.split("/", 1)) for c in columns}
        sets = [(n, d, m) for n, d, m in sets if any((x, y) in wanted for x in d for y in m)]
    return sets


def not_run_reason(paper: dict, kinds: set[str], columns: list[str] | None = None,
                   have: frozenset[str] = frozenset()) -> str:
    """Why a claim (or a table's cells, `columns` as dataset/model) has no runs in this report: the sets of
    params/paper.yaml that declare it, the datasets they need beyond those this report has runs on (`have`),
    and the GPU when that file asks for one."""
    sets = _declared_for(paper, kinds, columns)
    if not sets:
        return "not run: no params file declares its runs"
    datasets = {c.split("/", 1)[0] for c in columns} if columns is not None else None
    needs = [d for d in dict.fromkeys(d for _, ds, _ in sets for d in ds)
             if d not in have and (datasets is None or d in datasets)]
    if paper.get("device", "auto") == "cuda":
        needs.append("a GPU")
    what = ", ".join(needs[:-1]) + f" and {needs[-1]}" if len(needs) > 1 else "".join(needs)
    where = f"params/paper.yaml, set{'s' if len(sets) > 1 else ''} {', '.join(n for n, _, _ in sets)}"
    return f"not run: needs {what} ({where})" if needs else f"not run here ({where})"


def datasets_run(audit: pd.DataFrame) -> frozenset[str]:
    """The datasets (papers' names) this report has number cells with runs on."""
    ran = audit[(audit["table"] != "effects") & (audit["verdict"] != "not run")]
    return frozenset(str(c).split("/", 1)[0] for c in ran["column"])


def smoke_text(smoke: dict, kinds: set[str], columns: list[str] | None = None) -> str:
    """For a claim without runs here: whether the embedded default runs its sets, at smoke scale, and on what
    (smoke numbers decide nothing, so this is where to see it run, not evidence)."""
    sets = _declared_for(smoke, kinds, columns)
    if not sets:
        return "none"
    datasets = ", ".join(dict.fromkeys(d for _, ds, _ in sets for d in ds))
    return f"none here; its sets run at smoke scale in `make reproduce` ({datasets})"


def _matching_kinds(side: dict, params: dict) -> set[str]:
    """The kinds of the params' sets with a method that fits a side of kind `any` (its grid points each)."""
    from pipeline_src.results.selection import method_fits
    from pipeline_src.spec.config import expand_methods
    from pipeline_src.spec.schema import filled

    return {spec.get("kind", name) for name, spec in (params.get("experiment_sets") or {}).items()
            if any(method_fits(side, method["label"], filled(method, "method"))
                   for method, _, _ in expand_methods(spec.get("methods") or []))}


def effect_kinds(test: dict, params: dict | None = None) -> set[str]:
    """Every set kind a claim's test reads runs of; a claim of kind `any`: the kinds of the params' sets
    whose methods fit its treatment."""
    if test["kind"] == "any":
        return _matching_kinds(test["treatment"], params or {})
    kinds = {test["kind"]}

    def walk(side):
        if isinstance(side, dict):
            if "kind" in side and isinstance(side["kind"], str):
                kinds.add(side["kind"])
            for value in side.values():
                walk(value)

    walk({k: v for k, v in test.items() if k != "kind"})
    return kinds
