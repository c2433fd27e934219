"""The stage packages' import rules, read from the real package with code_hash's ast reader (imports at
module level and inside functions, and registry strings): no module imports itself back through others,
each stage imports only the stages below it, results code reads records and never loads torch, only the
CLI imports training, the job start-up worker imports none of the package, and building the DAG imports
no torch."""
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline_src.plumbing import code_hash

from helpers import ENV

REPO_ROOT = Path(__file__).resolve().parents[1]

STAGES = ("plumbing", "spec", "data", "methods", "training", "evaluation", "tracking", "results")
# stage -> the stages it may import; provenance.py (git, environment) and fileio.py (atomic writes,
# readers) are shared by all
ALLOWED = {
    "plumbing": set(),  # the Snakemake process's own code: rule code hashes, locks, the start-up worker
    "spec": {"plumbing"},  # preflight caches the model check under the code hash of check-models
    "data": {"spec"},
    "methods": {"spec"},
    "evaluation": {"spec", "data", "methods"},
    "training": {"spec", "data", "methods"},
    "tracking": set(),
    "results": {"spec"},
}
# the start-up worker runs the CLI in its children by name and imports none of the package itself; Python
# runs its parent packages' __init__.py first, so they import nothing of the package either
WORKER = "pipeline_src.plumbing.worker"
WORKER_PARENTS = ("pipeline_src", "pipeline_src.plumbing")
HEAVY = ("torch", "torchvision", "timm")


def package_modules(package_dir: Path | None = None) -> dict[str, frozenset[str]]:
    """Every module of the package, sub-package __init__s included -> the package modules it imports,
    sub-packages (their __init__.py) included. A module's own parent packages are left out: Python runs
    them before the module whatever it imports. package_dir: a copy of the package to read instead."""
    package_dir = package_dir or code_hash.PACKAGE_DIR
    graph = {}
    with _reading(package_dir):
        for path in sorted(package_dir.rglob("*.py")):
            name = code_hash._module_name(path)
            parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
            graph[name] = frozenset(code_hash._file_imports(path) - parents - {name})
    return graph


@contextlib.contextmanager
def _reading(package_dir: Path):
    """code_hash's reader pointed at package_dir (a planted copy), then back at the real package."""
    real = code_hash.PACKAGE_DIR
    code_hash.PACKAGE_DIR = package_dir
    try:
        yield
    finally:
        code_hash.PACKAGE_DIR = real


def stage(module: str) -> str | None:
    """The stage package a module (or the sub-package itself, its __init__.py) belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def crossings(graph: dict[str, frozenset[str]]) -> list[str]:
    """Imports from one stage into a stage it may not import."""
    return sorted(f"{a} -> {b}" for a, imported in graph.items() for b in imported
                  if stage(a) and stage(b) and stage(b) != stage(a) and stage(b) not in ALLOWED[stage(a)])


def in_worker(module: str) -> bool:
    return module == WORKER or module.startswith(WORKER + ".")


def worker_imports(graph: dict[str, frozenset[str]]) -> list[str]:
    """Package modules outside plumbing/worker/ that the start-up worker's files import (its __init__.py,
    which every job's client runs, among them), and any package module its parent packages' __init__.py
    import. There must be none: the worker would hold a module imported before the fork, and an edited
    module would not be the code that runs. (worker/__init__.py names worker.server as a string: the
    command of a process of its own.)"""
    return sorted(f"{a} -> {b}" for a, imported in graph.items() if in_worker(a) or a in WORKER_PARENTS
                  for b in imported if not (in_worker(b) and in_worker(a)))


def test_every_module_is_in_a_stage_package_but_the_cli_and_the_shared_files():
    loose = {m for m in package_modules() if stage(m) is None}
    assert loose == {"pipeline_src", "pipeline_src.__main__", "pipeline_src.provenance", "pipeline_src.fileio"}


def test_the_package_is_a_regular_one_that_imports_nothing_of_itself():
    """pipeline_src/__init__.py exists (no namespace package spanning two checkouts) and every job, the
    worker's client first, imports it: it imports nothing of the package."""
    assert (code_hash.PACKAGE_DIR / "__init__.py").is_file()
    assert package_modules()["pipeline_src"] == frozenset()
    assert worker_imports(package_modules()) == []


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
    crossing = crossings(package_modules())
    assert not crossing, crossing


def _planted(tmp_path: Path, file: str, line: str) -> dict[str, frozenset[str]]:
    """The import graph of a copy of the package with `line` added at the end of `file`."""
    copy = tmp_path / "pipeline_src"
    shutil.copytree(code_hash.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / file
    target.write_text(target.read_text() + f"\n{line}\n")
    return package_modules(copy)


def test_a_planted_import_in_the_worker_package_fails_the_worker_check(tmp_path):
    graph = _planted(tmp_path, "plumbing/worker/__init__.py", "from pipeline_src.data import prepared")
    assert worker_imports(graph) == ["pipeline_src.plumbing.worker -> pipeline_src.data",
                                     "pipeline_src.plumbing.worker -> pipeline_src.data.prepared"]
    assert "pipeline_src.plumbing.worker -> pipeline_src.data.prepared" in crossings(graph)
    # the worker's other modules count too
    graph = _planted(tmp_path / "b", "plumbing/worker/client.py", "from pipeline_src.spec import config")
    assert worker_imports(graph) == ["pipeline_src.plumbing.worker.client -> pipeline_src.spec",
                                     "pipeline_src.plumbing.worker.client -> pipeline_src.spec.config"]
    # the rest of plumbing counts too: the stage rules allow it, the worker's guarantee does not
    graph = _planted(tmp_path / "c", "plumbing/worker/__init__.py", "from pipeline_src.plumbing import locks")
    assert worker_imports(graph) == ["pipeline_src.plumbing.worker -> pipeline_src.plumbing.locks"]
    assert crossings(graph) == []
    # and the plumbing package's own __init__.py, which Python runs before the worker's
    graph = _planted(tmp_path / "d", "plumbing/__init__.py", "from pipeline_src.plumbing import code_hash")
    assert worker_imports(graph) == ["pipeline_src.plumbing -> pipeline_src.plumbing.code_hash"]


def test_a_sub_package_init_is_held_to_its_stage_rules(tmp_path):
    """An import made by a sub-package's __init__.py, and an import of a sub-package alone."""
    graph = _planted(tmp_path, "data/__init__.py", "from pipeline_src.evaluation import evaluate")
    assert crossings(graph) == ["pipeline_src.data -> pipeline_src.evaluation",
                                "pipeline_src.data -> pipeline_src.evaluation.evaluate"]
    graph = _planted(tmp_path / "b", "results/aggregate.py", "import pipeline_src.methods")
    assert crossings(graph) == ["pipeline_src.results.aggregate -> pipeline_src.methods"]


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
