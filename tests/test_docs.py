"""The README lists what the code holds: every departure in the deviations registry."""
import yaml

from pipeline_src.spec.config import REPO_ROOT


def test_readme_lists_every_deviation_of_the_registry():
    registry = yaml.safe_load((REPO_ROOT / "params" / "deviations.yaml").read_text())
    readme = (REPO_ROOT / "README.md").read_text()
    ids = [entry["id"] for entry in registry["deviations"]]
    assert ids and len(ids) == len(set(ids))
    missing = [i for i in ids if f"`{i}`" not in readme]
    assert not missing, f"README.md does not list {missing}"


REPORT = REPO_ROOT / "reports" / "fashion-mnist"


def _report_numbers() -> set[str]:
    """Every number the committed report's generated files hold, as written and at 0 to 3 decimals, sign
    dropped."""
    import re

    numbers = set()
    for path in [*REPORT.glob("*.md"), *REPORT.glob("*.csv"), *REPORT.glob("tables/*")]:
        for token in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", path.read_text()):
            value = abs(float(token))
            numbers.update({token.lstrip("-"), f"{value:.0f}", f"{value:.1f}", f"{value:.2f}", f"{value:.3f}"})
    return numbers


def test_every_number_in_the_findings_is_in_the_committed_report():
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    findings = readme.split("## What we found", 1)[1].split("\n## ", 1)[0]
    findings = re.sub(r"\[[^\]]*\]\([^)]*\)", "", findings)  # links name threads, not results
    findings = re.sub(r"`[^`]*`", "", findings)  # code: set and file names
    decimals = re.findall(r"(?<![\w.])[-+]?\d+\.\d+", findings)
    assert len(decimals) > 30, "the findings should quote the report's numbers"
    known = _report_numbers()
    missing = [d for d in decimals if d.lstrip("+-") not in known]
    assert not missing, f"README findings quote numbers the report does not hold: {missing}"


def test_the_readmes_verdicts_at_a_glance_are_the_committed_reports():
    from pipeline_src.results.pages import glance_table
    from pipeline_src.results.report import read_audit_table

    audit, cells = (read_audit_table(REPORT / name) for name in ("audit.csv", "effects_cells.csv"))
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("(written by the report command) -->\n", 1)[1].split("\n<!-- /verdicts -->", 1)[0]
    assert block == glance_table(audit, cells, "reports/fashion-mnist/audit.md")
    assert "](reports/fashion-mnist/audit.md#vpnimproves-ours)" in block
    assert "### vpn.improves [ours]" in (REPORT / "audit.md").read_text()  # the anchor's heading exists
