"""Checks every run can start, before the DAG launches a single job, without importing torch.

Names exist, noise and VPN settings are in range, a frozen run has a base run to load, an
evaluation-only NoisyNN run has a clean-trained base of its own training to measure, a weights file is
where params say. What needs a built model (the input shape a model accepts, a site name)
is checked by model_check.py in a subprocess, once per distinct set of models: its clean answer is
cached under the results folder, so a DAG rebuilt with the same models starts without torch.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from pipeline_src.plumbing.code_hash import command_code
from pipeline_src.spec.config import REPO_ROOT, ParamsError, RunConfig, dataset_spec, format_run_id, weights_path
from pipeline_src.fileio import write_json
from pipeline_src.spec.datasets import DataError
from pipeline_src.spec.datasets import given_path_problem, input_shape, resolve_spec


def base_run_of(run: RunConfig) -> tuple[str, str] | None:
    """(experiment_set, run_id) of the run whose trained model a frozen VPN run starts from."""
    spec = run.method
    if spec["name"] != "vpn" or spec.get("mode", "joint") != "frozen":
        return None
    return _named_base(run, "frozen mode needs base_set and base_label naming the baseline run to freeze")


def _named_base(run: RunConfig, missing: str) -> tuple[str, str]:
    """(experiment_set, run_id) of the run a method's base_set/base_label name: same dataset, model,
    reading and seed. ValueError(missing) when either key is absent."""
    spec = run.method
    if "base_set" not in spec or "base_label" not in spec:
        raise ValueError(missing)
    return spec["base_set"], format_run_id(run.dataset, run.model, spec["base_label"], "", run.reading, run.seed)


def evaluation_only(method: dict) -> bool:
    """A NoisyNN method naming a base run: its noise is switched on at test only, on that run's trained
    model, so it has no training of its own (train once, evaluate many)."""
    return method["name"] == "noisynn" and ("base_set" in method or "base_label" in method)


def model_run_of(run: RunConfig) -> tuple[str, str]:
    """(experiment_set, run_id) of the run whose model.pt this run's evaluate job measures: its own, or
    for an evaluation-only run its base's (same dataset, model, reading and seed)."""
    if not evaluation_only(run.method):
        return run.experiment_set, run.run_id
    return _named_base(run, "an evaluation-only run needs both base_set and base_label naming the clean-trained "
                            "run whose model it measures")


# What an evaluation-only run shares with its base: everything that decides the trained weights (the
# audit pairs the two on this recipe), so its numbers are those of the model its own params describe
SHARED_WITH_BASE = ("dataset", "model", "model_cfg", "seed", "epochs", "batch_size", "optimizer", "protocol",
                    "reading", "label_smoothing", "scale")


def base_problem(run: dict, base: dict) -> str | None:
    """Why `base` (a run's fields: a RunConfig as a dict, or a trained.json's params) cannot be the base
    whose model the evaluation-only `run` measures; None when it can. One line naming the key."""
    method = base["method"]
    if evaluation_only(method):
        return f"base run {base['run_id']!r} is itself evaluation-only: it has no model of its own"
    noisy = ((method["name"] == "noisynn" and method.get("apply_at") != "test") or method["name"] == "vpn"
             or bool(method.get("augment")))
    if noisy:
        return (f"base run {base['run_id']!r} (method {method['label']!r}) trains with noise; the base of an "
                "evaluation-only run must be trained clean (a baseline, or NoisyNN noise switched on at test only)")
    for key in SHARED_WITH_BASE:
        if run.get(key) != base.get(key):
            return (f"{key} {run.get(key)!r} differs from base run {base['run_id']!r}'s {base.get(key)!r}: an "
                    "evaluation-only run measures its base's model, so it must declare the same training")
    return None


def gpus_for(run: RunConfig, train_gpus: int) -> int:
    """GPUs a training job holds: train_gpus when it will use CUDA (device cuda, or auto on a host
    with an NVIDIA driver), else none. Asks the driver, not torch, so the DAG build stays light."""
    driver = Path("/proc/driver/nvidia/gpus")
    has_cuda = (driver.is_dir() and any(driver.iterdir())) or shutil.which("nvidia-smi") is not None
    return train_gpus if run.device == "cuda" or (run.device == "auto" and has_cuda) else 0


def check_runs(params: dict, runs: list[RunConfig], models: bool = True) -> None:
    """Raise ParamsError (one line) on the first run that cannot start. models=False skips the
    model check (its subprocess imports torch). The runs' method specs were checked as they were
    resolved (config.expand_runs)."""
    datasets = {}
    for name in params["datasets"]:
        try:
            datasets[name] = resolve_spec(name, dataset_spec(params, name))
        except DataError as err:
            raise ParamsError(f"invalid params: {err}") from None
        if problem := given_path_problem(name, datasets[name], REPO_ROOT):
            raise ParamsError(f"invalid params: {problem}")
    for name, model in params["models"].items():
        if model.get("weights_file") and not weights_path(model["weights_file"]).is_file():
            raise ParamsError(f"invalid params: models.{name}.weights_file: {model['weights_file']} does not exist; "
                              "put the weights file there (a state_dict for the timm model) or remove the key")
    runs_by_key = {(r.experiment_set, r.run_id): r for r in runs}
    for run in runs:  # method specs were resolved and checked by expand_runs
        try:
            base = base_run_of(run)
        except ValueError as err:
            raise ParamsError(f"invalid params: experiment_sets.{run.experiment_set} run {run.run_id}: {err}") from None
        if base is not None and base not in runs_by_key:
            raise ParamsError(f"invalid params: experiment_sets.{run.experiment_set} run {run.run_id}: frozen mode: "
                              f"no run {base[1]!r} in experiment set {base[0]!r} to take the base model from")
        if problem := _evaluation_only_problem(run, runs_by_key):
            raise ParamsError(f"invalid params: experiment_sets.{run.experiment_set} run {run.run_id}: {problem}")
    if models:
        errors = checked_models(model_requests(runs, datasets), Path(params["results_dir"]) / "preflight")
        if errors:
            raise ParamsError(f"invalid params: {errors[0]}")


def _evaluation_only_problem(run: RunConfig, runs_by_key: dict) -> str | None:
    """Why an evaluation-only run cannot measure its base's model (None for every other run)."""
    if not evaluation_only(run.method):
        return None
    try:
        base = model_run_of(run)
    except ValueError as err:
        return str(err)
    if run.method["apply_at"] != "test":
        return (f"apply_at {run.method['apply_at']!r}: a run that names base_set/base_label measures another run's "
                "model and trains nothing, so its noise applies at test only (apply_at: test)")
    if base not in runs_by_key:
        return (f"base_set {base[0]!r}, base_label {run.method['base_label']!r}: no run {base[1]!r} in the params "
                "to take the trained model from")
    return base_problem(asdict(run), asdict(runs_by_key[base]))


def model_requests(runs: list[RunConfig], datasets: dict[str, dict]) -> list[dict]:
    """One request per distinct (model entry, input shape), with the NoisyNN sites its runs name: each
    [set, run id, site, cell] once per set and cell, with the first run (seed) that names it. A cell is
    the run less its site and seed: two sites of one cell that resolve to the same module are one
    experiment under two run ids (model_check refuses them)."""
    requests: dict[str, dict] = {}
    seen: set[tuple[str, str, str, str]] = set()
    for run in runs:
        shape = list(input_shape(datasets[run.dataset]))
        key = json.dumps([run.model_cfg, shape], sort_keys=True)
        request = requests.setdefault(key, {"model": run.model, "cfg": run.model_cfg, "dataset": run.dataset,
                                            "in_shape": shape, "sites": []})
        if run.method["name"] == "noisynn":
            site = run.method["site"]
            cell = json.dumps([run.dataset, run.reading, {k: v for k, v in run.method.items() if k != "site"}],
                              sort_keys=True)
            if (key, run.experiment_set, site, cell) not in seen:
                seen.add((key, run.experiment_set, site, cell))
                request["sites"].append([run.experiment_set, run.run_id, site, cell])
    return list(requests.values())


def _versions() -> dict:
    found = {}
    for package in ("torch", "timm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def checked_models(requests: list[dict], cache_dir: Path) -> list[str]:
    """model_check's errors for these requests: from the cache when the same requests passed with the
    same code and library versions, else from a subprocess on this interpreter."""
    payload = json.dumps({"requests": requests, "versions": _versions(),
                          "code": command_code("check-models")}, sort_keys=True)
    cached = cache_dir / f"models-{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())["errors"]
    proc = subprocess.run([sys.executable, "-m", "pipeline_src", "check-models"], input=json.dumps(requests),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParamsError(f"the model check could not run ({sys.executable} -m pipeline_src check-models): {last}")
    errors = json.loads(proc.stdout)
    if not errors:  # only a clean answer is kept: a failing one is fixed in params, and its key changes
        write_json(cached, {"errors": errors, "requests": requests})
    return errors
