"""The stage packages' import rules, read from the real package with code_hash's ast reader (imports at
module level and inside functions, and registry strings): no module imports itself back through others,
each stage imports only the stages below it, results code reads records and never loads torch, only the
CLI imports training, the job start-up worker imports none of the package, and building the DAG imports
no torch."""
import subprocess
import sys
from pathlib import Path

from pipeline_src.spec import code_hash

from helpers import ENV

REPO_ROOT = Path(__file__).resolve().parents[1]

STAGES = ("spec", "data", "methods", "training", "evaluation", "tracking", "results", "worker")
# stage -> the stages it may import; provenance.py (files, hashes, git) is shared by all
ALLOWED = {
    "spec": set(),
    "data": {"spec"},
    "methods": {"spec"},
    "evaluation": {"spec", "data", "methods"},
    # training.whole (a whole run by hand) evaluates; the train command never imports it
    "training": {"spec", "data", "methods", "evaluation"},
    "tracking": set(),
    "results": {"spec"},
    "worker": set(),  # it runs the CLI in its children by name, and imports none of the package itself
}
HEAVY = ("torch", "torchvision", "timm")


def package_modules() -> dict[str, frozenset[str]]:
    """Every module of the package -> the package modules it imports (sub-package __init__s left out)."""
    graph = {}
    for path in sorted(code_hash.PACKAGE_DIR.rglob("*.py")):
        name = code_hash._module_name(path)
        graph[name] = frozenset(m for m in code_hash._file_imports(path)
                                if m != name and code_hash.module_file(m).name != "__init__.py")
    return graph


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def test_every_module_is_in_a_stage_package_but_the_cli_and_provenance():
    loose = {m for m in package_modules() if stage(m) is None and m.removeprefix("pipeline_src.") not in STAGES}
    assert loose == {"pipeline_src", "pipeline_src.__main__", "pipeline_src.provenance"}


def test_the_package_is_a_regular_one_that_imports_nothing_of_itself():
    """pipeline_src/__init__.py exists (no namespace package spanning two checkouts) and every job, the
    worker's client first, imports it: it imports nothing of the package."""
    assert (code_hash.PACKAGE_DIR / "__init__.py").is_file()
    assert package_modules()["pipeline_src"] == frozenset()
    assert {m for m in package_modules()["pipeline_src.worker"] if stage(m) != "worker"} == set()


def test_no_module_imports_itself_back():
    graph = package_modules()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph.get(module, ())
        return seen

    circles = sorted(m for m in graph if m in reaches(m))
    assert not circles, f"modules on an import circle: {circles}"


def test_each_stage_imports_only_the_stages_below_it():
    crossing = sorted(f"{a} -> {b}" for a, imported in package_modules().items() for b in imported
                      if stage(a) and stage(b) and stage(b) != stage(a) and stage(b) not in ALLOWED[stage(a)])
    assert not crossing, crossing


def test_nothing_but_the_cli_imports_training():
    importers = sorted(a for a, imported in package_modules().items()
                       if stage(a) != "training" and any(stage(b) == "training" for b in imported))
    assert importers == ["pipeline_src.__main__"]


def test_results_code_reads_records_and_never_loads_torch():
    for path in sorted((code_hash.PACKAGE_DIR / "results").glob("*.py")):
        text = path.read_text()
        loads = [lib for lib in HEAVY if f"import {lib}" in text or f"from {lib}" in text]
        assert not loads, f"{path.name} imports {loads}"


def test_building_the_dag_imports_no_torch(tmp_path):
    """A real dry run of the embedded default, with Python's own import log."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "1",
                          "--configfile", "params/default.yaml", "--config", f"results_dir={tmp_path}"],
                         cwd=REPO_ROOT, env={**ENV, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "pipeline_src.spec.config" in imported and "snakemake" in imported  # the log is the DAG build's
    assert not [m for m in imported if m.split(".")[0] in HEAVY]
