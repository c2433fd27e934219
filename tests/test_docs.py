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


# ---- the how-to's examples run as written ---------------------------------------------------------

HOWTO = REPO_ROOT / "docs" / "howto.md"
PARAMS_KEYS = {"datasets", "models", "experiment_sets", "readings", "own_reading"}


def _yaml_blocks(path):
    """Every ```yaml block of a markdown file, dedented (a block inside a list item is indented)."""
    import re
    import textwrap

    return [yaml.safe_load(textwrap.dedent(body))
            for body in re.findall(r"^[ \t]*```yaml\n(.*?)^[ \t]*```", path.read_text(), re.M | re.S)]


def test_every_params_example_of_the_howto_passes_check(tmp_path):
    """Each params example, merged into the embedded default, passes `python -m pipeline_src check`; a new
    dataset or model is used by a set of the example, so check builds it at that dataset's shape."""
    import os
    import subprocess
    import sys

    examples = [b for b in _yaml_blocks(HOWTO) if isinstance(b, dict) and set(b) <= PARAMS_KEYS]
    assert len(examples) >= 3  # a model, a dataset, a reading
    default = yaml.safe_load((REPO_ROOT / "params" / "default.yaml").read_text())
    for i, example in enumerate(examples):
        sets = example.get("experiment_sets") or {}
        used = {name for spec in sets.values() for key in ("datasets", "models") for name in spec.get(key, [])}
        new = set(example.get("datasets", {})) | set(example.get("models", {}))
        assert new <= used, f"example {i} of {HOWTO.name} declares {sorted(new - used)} but no set uses them"
        params = {**default, **{k: v for k, v in example.items() if k in ("own_reading",)},
                  **{k: {**default.get(k, {}), **example[k]} for k in ("datasets", "models", "readings") if k in example},
                  "experiment_sets": sets or default["experiment_sets"], "results_dir": str(tmp_path / f"results{i}")}
        path = tmp_path / f"example{i}.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "pipeline_src", "check", "--params", str(path)],
                              capture_output=True, text=True, cwd=REPO_ROOT,
                              env={**os.environ, "PIPELINE_RESULTS_ANYWHERE": "1"})  # the preflight cache in tmp_path
        assert done.returncode == 0, f"example {i} of {HOWTO.name}: {done.stdout}{done.stderr}"


def test_the_howtos_claims_table_example_is_a_shortened_copy_of_the_registry():
    """The table example copies a table of params/claims.yaml: every key it shows (its source abridged)
    holds the registry's value, its lists a prefix and its mappings a subset of the registry's."""
    registry = yaml.safe_load((REPO_ROOT / "params" / "claims.yaml").read_text())
    tables = {name: spec for section in registry.values() if isinstance(section, dict)
              for name, spec in section.get("tables", {}).items()}
    examples = [b for b in _yaml_blocks(HOWTO) if isinstance(b, dict) and set(b) <= set(tables)]
    assert examples

    def covered(shown, real):
        if isinstance(shown, dict):
            return isinstance(real, dict) and all(k in real and covered(v, real[k]) for k, v in shown.items())
        if isinstance(shown, list):
            return isinstance(real, list) and all(covered(a, b) for a, b in zip(shown, real)) and len(shown) <= len(real)
        return shown == real

    for example in examples:
        for name, shown in example.items():
            assert covered({k: v for k, v in shown.items() if k != "source"}, tables[name]), name
