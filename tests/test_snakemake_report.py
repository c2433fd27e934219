"""Snakemake's HTML report carries the numbers: a tiny workflow run, then `snakemake --report`, and each set
table and paper table is an HTML table in its item's caption, with the captions stating the current rules."""
import copy
import json
import re

import pandas as pd
import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT

from helpers import TINY, snakemake

CAPTIONS = REPO_ROOT / "workflow" / "report"


def test_every_paper_table_of_the_registry_has_its_caption_and_no_other():
    registry = yaml.safe_load((REPO_ROOT / "params" / "claims.yaml").read_text())
    tables = {name for section, spec in registry.items() if section != "settings" for name in spec.get("tables", {})}
    captions = {path.stem for path in (CAPTIONS / "paper_tables").glob("*.rst")}
    assert captions == tables
    for name in tables:
        assert f'{{% set table = "{name}" %}}' in (CAPTIONS / "paper_tables" / f"{name}.rst").read_text()


def test_the_audit_caption_names_the_verdicts_the_code_gives():
    """The audit item's caption states the rules in words; each verdict the code can give is named there."""
    from pipeline_src.results import verdicts

    caption = (CAPTIONS / "audit.rst").read_text()
    words = [*verdicts.NUMBER_VERDICTS.values(), verdicts.SHORT_OF_PAPER, "mixed", "not applicable", "too few seeds",
             "not run", "Bonferroni"]
    missing = [w for w in words if w not in " ".join(caption.split())]
    assert not missing, f"workflow/report/audit.rst does not name {missing}"
    assert "Holm-adjusted p-values across all effect claims" not in caption


def _captions(html: str) -> dict[str, str]:
    """Report item file name -> its rendered caption (the report embeds its results as one JSON object)."""
    for match in re.finditer(r"(\{\"[^\n]*?\"caption\":.*?\})\s*;?\s*$", html, re.M):
        try:
            results = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if all(isinstance(v, dict) and "caption" in v for v in results.values()):
            return {str(path).rsplit("/", 1)[-1]: entry["caption"] for path, entry in results.items()}
    raise AssertionError("no results object with captions in the report")


@pytest.mark.slow
def test_the_report_shows_set_and_paper_tables_as_html_tables_with_the_current_rules(tmp_path):
    params = copy.deepcopy(TINY)
    params["experiment_sets"] = {"baseline": params["experiment_sets"]["baseline"]}
    params["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake("--cores", "2", "--configfile", str(path))
    snakemake("--configfile", str(path), "--report", str(tmp_path / "report.html"))
    captions = _captions((tmp_path / "report.html").read_text())

    table = pd.read_csv(tmp_path / "results" / "tables" / "baseline.csv", dtype=str)
    shown = captions["baseline.csv"]
    assert "<table" in shown and "top1_std" in shown
    for mean, std in zip(table["top1_mean"], table["top1_std"]):  # every row's numbers, as cells
        assert re.search(rf"<td>(<p>)?{re.escape(mean)}(</p>)?</td>", shown), mean
        assert re.search(rf"<td>(<p>)?{re.escape(std)}(</p>)?</td>", shown), std

    paper = pd.read_csv(tmp_path / "results" / "tables" / "paper_joint_fmnist_cifar10.csv", dtype=str)
    shown = captions["paper_joint_fmnist_cifar10.csv"]
    assert "<table" in shown and len(paper) > 1
    first = paper.iloc[0, 1]  # e.g. "74.97 vs not run [D22,D23]": the paper's number beside ours
    assert re.search(rf"<td>(<p>)?{re.escape(first)}(</p>)?</td>", shown), first
    assert all(f"paper_{name}.csv" in captions for name in ("imagenet_headline", "joint_tinyimagenet"))

    rules = captions["audit.md"]
    assert "Bonferroni over a family fixed in advance" in rules and "Holm-adjusted" not in rules
