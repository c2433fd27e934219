"""The Snakemake DAG: dry runs of both params files, lint, and a tiny real run that reruns only what changed."""
import copy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT

from helpers import ENV, SNAKEMAKE, TINY, job_counts, snakemake


def fake_hub_cache(folder: Path, repos: list[str]) -> Path:
    """A Hugging Face Hub cache in which these repositories' weights look downloaded (empty files: a dry
    run never loads them, and the model check asks only whether they are there)."""
    for repo in repos:
        entry = folder / f"models--{repo.replace('/', '--')}"
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text("0" * 40)
        (entry / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (entry / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("params", ["params/default.yaml", "params/paper.yaml"])
def test_dry_run_of_shipped_params(params, tmp_path):
    # paper.yaml's pretrained ViTs take timm's weights, which the check wants on this machine
    hub = fake_hub_cache(tmp_path / "hub", ["timm/vit_base_patch16_224.augreg_in21k_ft_in1k",
                                            "timm/vit_base_patch16_384.augreg_in21k_ft_in1k"])
    out = snakemake("-n", "-p", "--cores", "2", "--configfile", params, "--config", f"results_dir={tmp_path}",
                    env={"HF_HUB_CACHE": str(hub)})
    counts = job_counts(out.stdout + out.stderr)
    assert counts["train"] > 0 and counts["aggregate_set"] > 0 and counts["prepare_data"] > 0
    if params == "params/paper.yaml":  # ImageNet is planned as streamed: decoded batch by batch, never whole
        prepare_imagenet = re.search(r"prepare --dataset imagenet --spec-json '([^']*)'", out.stdout).group(1)
        assert json.loads(prepare_imagenet)["streaming"] is True


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


@pytest.mark.slow
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
    runs_table = (tables / "baseline_runs.csv").read_text()  # the ids reach it from the tracking file
    assert all(mlflow_id in runs_table for mlflow_id in tracked.values())

    again = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert "Nothing to be done" in again.stdout + again.stderr

    # a lost predictions.npz is made again (the audit's per-image intervals read it), not silently skipped
    predictions = next((tmp_path / "results" / "runs" / "baseline").glob("*/predictions.npz"))
    aside = predictions.rename(tmp_path / "aside.npz")
    lost = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert job_counts(lost.stdout + lost.stderr) == {"evaluate": 1, "track_set": 1, "aggregate_set": 1, "audit": 1,
                                                     "track_audit": 1, "all": 1}
    aside.rename(predictions)

    params["experiment_sets"]["noisynn_main"]["methods"][0]["noise"]["strength"] = 0.2
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    changed = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert job_counts(changed.stdout + changed.stderr) == {"train": 2, "evaluate": 2, "track_set": 1, "aggregate_set": 1, "audit": 1, "track_audit": 1, "all": 1}


def write_params(tmp_path, params) -> Path:
    params = {**copy.deepcopy(params), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_bad_site_stops_the_dry_run_with_one_line(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["experiment_sets"]["noisynn_main"]["methods"][0]["site"] = "block:99"
    out = snakemake("-n", "--cores", "1", "--configfile", str(write_params(tmp_path, bad)), check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert ("error: invalid params: experiment_sets.noisynn_main run digits-dnn3-linear_shift-s0: site 'block:99' "
            "is out of range: DNN3 has 2 blocks (indices -2 to 1)\n") in out.stderr


def test_dag_build_imports_no_torch_once_models_are_checked(tmp_path):
    path = write_params(tmp_path, TINY)
    snakemake("-n", "--cores", "1", "--configfile", str(path))  # checks the models once, in a subprocess
    poisoned = tmp_path / "poisoned"
    for name in ("torch", "timm", "torchvision"):
        (poisoned / name).mkdir(parents=True)
        (poisoned / name / "__init__.py").write_text(f"raise ImportError('the DAG build imported {name}')\n")
    env = {**ENV, "PYTHONPATH": str(poisoned)}
    out = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(path)], capture_output=True,
                         text=True, cwd=REPO_ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert job_counts(out.stdout + out.stderr)["train"] == 6


@pytest.mark.slow
def test_hard_killed_run_recovers_without_unlock_or_activated_venv(tmp_path):
    path = write_params(tmp_path, TINY)
    runs = tmp_path / "results" / "runs"
    first = subprocess.Popen([SNAKEMAKE, "--cores", "1", "--configfile", str(path)], cwd=REPO_ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("*/*/metrics.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(REPO_ROOT.glob(".snakemake/locks/*.lock")), "the run holds no locks to leave behind"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its running job, as an OOM kill would
        first.wait()
    assert len(list(runs.glob("*/*/metrics.json"))) < 6

    bare_path = ":".join(p for p in os.environ["PATH"].split(":") if Path(p) != Path(os.sys.executable).parent)
    again = subprocess.run([SNAKEMAKE, "--cores", "2", "--configfile", str(path)], capture_output=True, text=True,
                           cwd=REPO_ROOT, env={**os.environ, "PATH": bare_path})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stale Snakemake lock file(s)" in again.stderr
    assert len(list(runs.glob("*/*/metrics.json"))) == 6 and (tmp_path / "results" / "audit.md").exists()
