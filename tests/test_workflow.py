"""The Snakemake DAG: dry runs of both params files, lint, and a tiny real run that reruns only what changed."""
import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_src.config import REPO_ROOT

SNAKEMAKE = str(Path(os.sys.executable).parent / "snakemake")
ENV = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}

TINY = {
    "scale": "embedded_default",
    "device": "cpu",
    "seeds": [0, 1],
    "training": {"epochs": 1, "batch_size": 64, "eval_batch_size": 128},
    "datasets": {"digits": {"source": "digits"}},
    "models": {"sr": {"arch": "sr"}, "dnn3": {"arch": "dnn3", "hidden": 32}},
    "experiment_sets": {
        "baseline": {"datasets": ["digits"], "models": ["sr", "dnn3"],
                     "methods": [{"label": "baseline", "name": "baseline"}]},
        "noisynn_main": {"datasets": ["digits"], "models": ["dnn3"],
                         "methods": [{"label": "linear_shift", "name": "noisynn", "apply_at": "both",
                                      "noise": {"kind": "circular_shift", "strength": 0.3}}]},
    },
}


def snakemake(*args, check=True):
    out = subprocess.run([SNAKEMAKE, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=ENV)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


@pytest.mark.parametrize("params", ["params/default.yaml", "params/paper.yaml"])
def test_dry_run_of_shipped_params(params, tmp_path):
    out = snakemake("-n", "--cores", "2", "--configfile", params, "--config", f"results_dir={tmp_path}")
    counts = job_counts(out.stdout + out.stderr)
    assert counts["train"] > 0 and counts["aggregate_set"] > 0 and counts["prepare_data"] > 0


def test_lint_reports_nothing():
    out = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


def test_bad_params_stop_the_dag_with_one_line(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["experiment_sets"]["baseline"]["models"] = ["resnt"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    out = snakemake("-n", "--cores", "1", "--configfile", str(path), check=False)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert ("error: invalid params: experiment_sets.baseline.models: 'resnt' is not defined; "
            "defined models: sr, dnn3\n") in out.stderr


def test_tiny_run_then_nothing_then_only_changed_jobs(tmp_path):
    params = copy.deepcopy(TINY)
    params["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))

    snakemake("--cores", "2", "--configfile", str(path))
    tables = tmp_path / "results" / "tables"
    assert (tables / "baseline.csv").exists() and (tables / "noisynn_main.md").exists()
    assert (tmp_path / "results" / "figures" / "baseline.png").exists()
    assert (tmp_path / "results" / "audit.md").read_text().strip()
    logs = list((tmp_path / "results" / "runs").glob("*/*/train.log"))
    assert len(logs) == 6
    tracked = json.loads((tmp_path / "results" / "tracking" / "baseline.json").read_text())["mlflow_run_ids"]
    assert len(tracked) == 4 and all(tracked.values())
    metrics = json.loads(next((tmp_path / "results" / "runs" / "baseline").glob("*/metrics.json")).read_text())
    assert metrics["mlflow_run_id"] in tracked.values()

    again = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert "Nothing to be done" in again.stdout + again.stderr

    params["experiment_sets"]["noisynn_main"]["methods"][0]["noise"]["strength"] = 0.2
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    changed = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert job_counts(changed.stdout + changed.stderr) == {"train": 2, "track_set": 1, "aggregate_set": 1, "audit": 1, "all": 1}
