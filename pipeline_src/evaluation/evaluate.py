"""The evaluate stage: a trained run's model.pt and trained.json -> metrics.json and predictions.npz.

An evaluation-only NoisyNN run (apply_at test, base_set/base_label) is measured on its clean-trained
base's model.pt; its record names that run (`model_from`) and carries no training history of its own.

It rebuilds the run's method, loads what training learned (model.pt "method") and measures it under
every evaluation the run's spec asks for. Its own job, so a new test protocol, test batch size or
diagnostic reruns this and never the training. The global RNG continues from where training ended
(model.pt "rng"), so a split run scores exactly what the same run scored when both were one job.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline_src.methods.base import top1
from pipeline_src.methods.device import autocast, select_device
from pipeline_src.methods.registry import build_run_method
from pipeline_src.fileio import read_json, torch_load, write_json
from pipeline_src.provenance import code_version, git_state
from pipeline_src.spec.config import RunConfig
from pipeline_src.spec.preflight import base_problem, evaluation_only, model_run_of
from pipeline_src.spec.predictions import predictions_path, save_predictions
from pipeline_src.spec.run_record import (FORMAT as RECORD_FORMAT, TRAINED_REMEDY, method_runtime, run_head, trained_for,
                                          trained_path)
from pipeline_src.data.stream import to_input


def check_trained(cfg: RunConfig, trained: dict, source: Path) -> None:
    """A trained record of another training identity is refused in one line, before any work. An
    evaluation-only run measures its base's model: the record must be that run's, trained clean with the
    run's own training (preflight.base_problem); a model it trained itself (`run` by hand) also fits."""
    if trained_for(trained, cfg):
        return
    if evaluation_only(cfg.method):
        base_set, base_id = model_run_of(cfg)
        params = trained.get("params") or {}
        found = f"{params.get('experiment_set')}/{params.get('run_id')}"
        if found != f"{base_set}/{base_id}":
            raise ValueError(f"{source} is the trained record of {found}, not of run {cfg.run_id}'s base "
                             f"{base_set}/{base_id}; give the base's model.pt")
        if problem := base_problem(asdict(cfg), params):
            raise ValueError(f"{source}: run {cfg.run_id}: {problem}")
        return
    wanted = json.loads(cfg.training_identity().to_json())
    differing = sorted(k for k in wanted if (trained.get("params") or {}).get(k) != wanted[k])
    raise ValueError(f"{source} was trained under other params than run {cfg.run_id} "
                     f"(differing: {', '.join(differing) or 'format'}); retrain it (delete its model.pt)")


def evaluate_run(cfg: RunConfig, data, model_path: Path, metrics_path: Path, threads: int | None = None,
                 rule: str = "evaluate") -> dict:
    """Evaluate one trained run; writes predictions.npz and metrics.json (the run's record, format 2) and
    returns the record. data: the prepared dataset the run trained on (PreparedFiles, or its folder)."""
    from pipeline_src.data.prepared import load_prepared

    model_path, metrics_path = Path(model_path), Path(metrics_path)
    trained = read_json(trained_path(model_path), TRAINED_REMEDY)
    check_trained(cfg, trained, trained_path(model_path))
    if threads:
        torch.set_num_threads(threads)
    device = select_device(cfg.device)
    data = load_prepared(data, workers=threads or 1)
    state = torch_load(model_path, TRAINED_REMEDY)
    # a frozen VPN run's base is the model in its own model.pt
    method = build_run_method(cfg, data, base_checkpoint=model_path)
    method.load_state_dict(state["method"])
    method = method.to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    else:  # a model.pt from before training kept its RNG state
        torch.manual_seed(cfg.seed)
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)

    x_test, y_test = to_input(data.x_test, device), data.y_test.to(device)
    method.eval()
    with torch.inference_mode(), autocast(device):
        predictions = method.eval_predictions(x_test, y_test, cfg.eval_batch_size)
        evaluations = {mode: top1(pred, y_test) for mode, pred in predictions.items()}
        diagnostics = method.diagnostics(x_test, y_test, data.mask_test, cfg.eval_batch_size)
    method.save_figures(metrics_path.parent, x_test, y_test)

    head = run_head(cfg, trained["provenance"]["snakemake_rule"])
    # the run whose training made the measured weights: this run, or an evaluation-only run's base
    model_from = {key: trained.get(key) for key in ("experiment_set", "run_id", "params_hash")}
    own_model = (model_from["experiment_set"], model_from["run_id"]) == (cfg.experiment_set, cfg.run_id)
    metrics = {
        "format": RECORD_FORMAT,
        **head,
        # the run table's RunConfig, and what the built method resolved beyond it (run_record.py)
        "params": dict(cfg.__dict__),
        "method_runtime": method_runtime(cfg.method, method.resolved_spec()),
        "model_from": model_from,
        # the base's epochs are in the base's record: here they would be counted twice (time, curves)
        "history": trained["history"] if own_model else [],
        "startup_cpu_seconds": trained["startup_cpu_seconds"],
        "distributed": trained["distributed"],
        "evaluations": evaluations,
        "eval_plan": method.eval_plan(cfg.eval_batch_size),
        "test_top1": next(iter(evaluations.values())),
        "diagnostics": diagnostics,
        # training's provenance, and the code that measured (it may be newer: a new protocol)
        "provenance": {**trained["provenance"],
                       "evaluation": {**git_state(), "package_hash": code_version(), "snakemake_rule": rule,
                                      "device": str(device)}},
    }
    # first, so a metrics.json (what Snakemake and the report look for) never lacks its predictions
    save_predictions(predictions_path(metrics_path), {m: p.cpu().numpy() for m, p in predictions.items()},
                     data.y_test.numpy())
    write_json(metrics_path, metrics)
    return metrics
