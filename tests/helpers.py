"""Helpers several test modules share (not a test module: no test imports another test module).

The Snakemake command and environment, the tiny params of the workflow tests, and a copy of the
repository as its working tree stands."""
import os
import re
import shutil
import subprocess
from pathlib import Path

from pipeline_src.spec.config import REPO_ROOT

SNAKEMAKE = str(Path(os.sys.executable).parent / "snakemake")
# the venv's bin first, so the snakemake and python the tests start are this venv's
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


def snakemake(*args, check=True, env=None):
    out = subprocess.run([SNAKEMAKE, *args], capture_output=True, text=True, cwd=REPO_ROOT, env={**ENV, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def run(*args, cwd: Path) -> str:
    out = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=ENV)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def repo_copy(tmp_path: Path) -> Path:
    """This repository as its HEAD plus the working tree's uncommitted files (ignored ones left out)."""
    copy = tmp_path / "repo"
    run("git", "clone", "-q", str(REPO_ROOT), str(copy), cwd=tmp_path)
    listed = run("git", "ls-files", "-z", "--modified", "--others", "--exclude-standard", cwd=REPO_ROOT)
    for rel in filter(None, listed.split("\0")):
        source, target = REPO_ROOT / rel, copy / rel
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:  # deleted in the working tree
            target.unlink(missing_ok=True)
    return copy


def make_run(method: dict | None = None, epochs: int = 3, arch: str = "dnn3", seed: int = 0, hidden: int = 32,
             device: str = "cpu", experiment_set: str = "test", model: dict | None = None, **training):
    """One run of digits through the run table (validate_params, then expand_runs), as the DAG makes it:
    every default filled, the method resolved. `training` overrides keys of the params' training block
    (an `optimizer` dict is merged over the default one); `model`, a model spec of the params (a timm
    model with its kwargs), replaces the DNN3 of `arch` and `hidden`."""
    from pipeline_src.spec.config import expand_runs, validate_params

    if model is not None:
        arch = model["arch"]

    optimizer = {"name": "adam", "lr": 0.003, "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine",
                 **training.pop("optimizer", {})}
    params = {"results_dir": str(REPO_ROOT / "results"), "device": device, "seeds": [seed],
              "training": {"epochs": epochs, "batch_size": 64, "eval_batch_size": 128, "optimizer": optimizer,
                           **training},
              "datasets": {"digits": {"source": "digits"}},
              "models": {arch: model or {"arch": arch, "hidden": hidden}},
              "experiment_sets": {experiment_set: {"kind": "baseline", "datasets": ["digits"], "models": [arch],
                                           "methods": [method or {"label": "baseline", "name": "baseline"}]}}}
    (run,) = expand_runs(validate_params(params))
    return run


def prepare_digits(out: Path) -> Path:
    """The digits dataset prepared as the tests use it: a quarter held out for testing, seed 0."""
    from pipeline_src.data.prepared import prepare

    prepare("digits", {"source": "digits", "test_fraction": 0.25, "seed": 0}, out, REPO_ROOT)
    return out
