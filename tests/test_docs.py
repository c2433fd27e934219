"""The README and docs say what the code and the committed report hold: every departure of the registry,
each number from the report row it names, the report's claim table, and how-to examples that pass `check`."""
import json
import re

import pandas as pd
import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT

README = REPO_ROOT / "README.md"
REPORT = REPO_ROOT / "reports" / "fashion-mnist"


def test_the_departures_page_lists_every_deviation_of_the_registry():
    registry = yaml.safe_load((REPO_ROOT / "params" / "deviations.yaml").read_text())
    page = (REPO_ROOT / "docs" / "departures.md").read_text()
    ids = [entry["id"] for entry in registry["deviations"]]
    assert ids and len(ids) == len(set(ids))
    missing = [i for i in ids if f"`{i}`" not in page]
    assert not missing, f"docs/departures.md does not list {missing}"


# Each bullet of the findings ends in a comment naming where its numbers are read, row by row:
#   <!-- sources f3: tables/<set>.csv[column=value, ...] | effects_cells.csv[claim_id=..., reading=..., cell=...]
#        | params/fashion_mnist.yaml[readings.sgd_code.training.optimizer] -->
# (a csv under reports/fashion-mnist/ and the one row those columns select; or a params file and a dotted key).
# A README bullet of "What we found" ends in <!--f3--> (or <!--f5,f6-->): the sources of those findings bullets.
SOURCES = re.compile(r"<!-- sources (f\d+): (.*?) -->", re.S)
README_SOURCES = re.compile(r"<!--(f\d+(?:,f\d+)*)-->")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _source_numbers(source: str) -> list[float]:
    """The numbers of one source: every cell of the one csv row it selects, or everything under a params key."""
    path, _, selector = source.strip().partition("[")
    selector = selector.removesuffix("]")
    if path.startswith("params/"):
        node = yaml.safe_load((REPO_ROOT / path).read_text())
        for part in selector.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        text = json.dumps(node)
    else:
        wanted = dict(pair.split("=", 1) for pair in re.split(r",\s*(?=\w+=)", selector))
        table = pd.read_csv(REPORT / path, dtype=str, keep_default_na=False)
        rows = table[(table[list(wanted)] == pd.Series(wanted)).all(axis=1)]
        assert len(rows) == 1, f"{source}: selects {len(rows)} rows of {path}, not one"
        text = " ".join(rows.iloc[0])
    return [float(token) for token in NUMBER.findall(text)]


def _as_printed(token: str, value: float) -> bool:
    """Whether `value` rounds to `token` at the places it is printed with (sign aside: prose says 'costs 1.71')."""
    digits, exponent = re.fullmatch(r"[-+]?\d+\.(\d+)(?:e(-?\d+))?", token).groups()
    return abs(abs(value) - abs(float(token))) <= 0.5 * 10 ** (int(exponent or 0) - len(digits)) + 1e-12


def _decimals(text: str) -> list[str]:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", "", text)  # links name threads, not results
    text = re.sub(r"`[^`]*`", "", text)  # code: set and file names
    return re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?:e-?\d+)?", text)


def _unsourced(text: str, marker: re.Pattern, numbers_of) -> list[str]:
    """Numbers of `text` not in the sources of the marker that ends their stretch of text, and numbers after
    the last marker ('<number> (no source)')."""
    missing, start = [], 0
    for match in marker.finditer(text):
        values = numbers_of(match)
        missing += [f"{d} (not in {match.group(1)})" for d in _decimals(text[start:match.start()])
                    if not any(_as_printed(d, v) for v in values)]
        start = match.end()
    return missing + [f"{d} (no source)" for d in _decimals(text[start:])]


def _findings_sources(findings: str) -> dict[str, list[float]]:
    return {m.group(1): [v for source in m.group(2).split(" | ") for v in _source_numbers(source)]
            for m in SOURCES.finditer(findings)}


def test_every_number_in_the_findings_is_in_the_row_it_names():
    """Every number of docs/findings.md (before the section on reruns, which quotes records the report has
    since replaced) and of the README's "What we found" is read from the file and row its bullet names."""
    findings = (REPO_ROOT / "docs" / "findings.md").read_text().split("\n## A rerun can be exact", 1)[0]
    readme = README.read_text().split("## What we found", 1)[1].split("\n## ", 1)[0]
    assert len(_decimals(readme)) > 10 and len(_decimals(findings)) > 30, "the findings should quote the report"
    sources = _findings_sources(findings)
    assert len(sources) >= 7
    missing = _unsourced(findings, SOURCES, lambda m: sources[m.group(1)])
    assert not missing, f"docs/findings.md quotes numbers its sources do not hold: {missing}"
    missing = _unsourced(readme, README_SOURCES,
                         lambda m: [v for name in m.group(1).split(",") for v in sources[name]])
    assert not missing, f"the README's findings quote numbers their sources do not hold: {missing}"


def test_a_changed_number_in_the_findings_is_caught():
    """The check above fails on a number moved in its last printed place, in each bullet with numbers."""
    findings = (REPO_ROOT / "docs" / "findings.md").read_text().split("\n## A rerun can be exact", 1)[0]
    sources = _findings_sources(findings)
    for match in SOURCES.finditer(findings):
        bullet = findings[:match.start()].rsplit("\n- **", 1)[1]
        number = max(_decimals(bullet), key=len)  # the longest: the least likely to recur in its rows
        places = len(number.split(".")[1].split("e")[0])
        moved = f"{abs(float(number)) + 7 * 10 ** -places:.{places}f}"
        edited = findings.replace(bullet, bullet.replace(number, moved, 1), 1)
        assert _unsourced(edited, SOURCES, lambda m: sources[m.group(1)]), f"{match.group(1)}: {number} -> {moved}"


def test_the_readme_is_a_front_door_with_the_reports_claim_table():
    """At most 15,000 bytes; the first 40 lines link both papers and give both commands; the claim table is
    the one the committed report writes, one row per claim of the registry, each linking a page that exists."""
    from pipeline_src.results.audit import load_claims
    from pipeline_src.results.claim_pages import claim_rows, claim_table
    from pipeline_src.results.report import CLAIMS_BEGIN, CLAIMS_END, read_audit_table

    text = README.read_text()
    assert len(text.encode()) <= 15_000
    first = "\n".join(text.splitlines()[:40])
    for needed in ("https://arxiv.org/abs/2309.10625", "https://arxiv.org/abs/2306.07651", "make reproduce", "make test"):
        assert needed in first, needed
    audit, cells = (read_audit_table(REPORT / name) for name in ("audit.csv", "effects_cells.csv"))
    claims = load_claims(REPO_ROOT / "params" / "claims.yaml")
    block = text.split(CLAIMS_BEGIN.format(report="reports/fashion-mnist") + "\n", 1)[1].split("\n" + CLAIMS_END, 1)[0]
    assert block == claim_table(claim_rows(audit, cells, claims), "reports/fashion-mnist/claims/")
    rows = block.splitlines()[2:]
    ids = [f"{spec['paper']}.{name}" for name, spec in claims["tables"].items()] + [c["id"] for c in claims["effects"]]
    assert [row.split("[", 1)[1].split("]", 1)[0] for row in rows] == ids
    assert any("not run: needs imagenet" in row for row in rows)  # what is not tested says so, and why
    for claim_id in ids:
        assert (REPORT / "claims" / f"{claim_id}.md").exists(), claim_id


# ---- the how-to's examples run as written ---------------------------------------------------------

HOWTO = REPO_ROOT / "docs" / "howto.md"
PARAMS_KEYS = {"datasets", "models", "experiment_sets", "readings", "own_reading", "noisynn_protocols"}


def _yaml_blocks(path):
    """Every ```yaml block of a markdown file, dedented (a block inside a list item is indented)."""
    import re
    import textwrap

    return [yaml.safe_load(textwrap.dedent(body))
            for body in re.findall(r"^[ \t]*```yaml\n(.*?)^[ \t]*```", path.read_text(), re.M | re.S)]


@pytest.mark.slow  # three checks, each building its models in a subprocess: about 40 s
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
        params = {**default, **{k: v for k, v in example.items() if k in ("own_reading", "noisynn_protocols")},
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


def test_links_of_the_readme_and_docs_resolve():
    import re

    for page in [README, *(REPO_ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (page.parent / target).exists(), f"{page.relative_to(REPO_ROOT)} links {target}, which is not there"


@pytest.mark.slow  # imports torch and timm in a subprocess
def test_the_howtos_site_listing_command_prints_what_the_page_says():
    """The one-line command that lists a model's noise sites, run as written, prints the comment under it."""
    import re
    import subprocess

    block = re.search(r"```bash\n\s*(\.venv/bin/python -c .*valid_sites.*)\n\s*# (.*)\n", HOWTO.read_text())
    assert block, "the how-to's site-listing command is gone"
    command, said = block.group(1).strip(), block.group(2).strip()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == said


VERDICT_WORDS = ("reproduced", "differs", "inconclusive", "supported", "contradicted", "mixed", "short of",
                 "too few seeds", "not applicable", "smoke scale", "scale differs")


def test_every_verdict_the_findings_quote_is_one_the_committed_report_gives():
    """A verdict quoted in the findings (in backticks) is a verdict of the committed report, so findings
    written before a change of the rules fail here once the report is rebuilt under the new rules."""
    import re

    import pandas as pd

    given = set()
    for name in ("audit.csv", "effects_cells.csv"):
        given |= set(pd.read_csv(REPORT / name, keep_default_na=False)["verdict"])
    given |= {verdict.split(" (")[0] for verdict in given}  # `not applicable` for all its kinds
    for path in (README, REPO_ROOT / "docs" / "findings.md"):
        quoted = {" ".join(q.split()) for q in re.findall(r"`([^`]+)`", path.read_text()) if q.startswith(VERDICT_WORDS)}
        stale = sorted(quoted - given)
        assert not stale, f"{path.relative_to(REPO_ROOT)} quotes verdicts the report does not give: {stale}"
