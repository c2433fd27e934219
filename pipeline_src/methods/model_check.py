"""Every distinct model of a params file built once on the meta device (shapes only, no weights),
run forward at its dataset's input shape, and every NoisyNN run's site resolved on it: what can only
be checked against a built model, checked before any job starts. The DAG build runs this in a
subprocess (preflight.py), so Snakemake itself never imports torch.

A request is {"model": name, "cfg": models entry, "dataset": name, "in_shape": [C, H, W],
"sites": [[experiment_set, run_id, site], ...]}; the answer is a list of one-line errors.
"""
from __future__ import annotations

import torch

from pipeline_src.methods.models import build_from_cfg
from pipeline_src.methods.sites import resolve_site

PROBE_CLASSES = 10  # the head's width changes no site and no input shape a model accepts
PROBE_BATCH = 2  # batch-mixing noise sites see a batch, so probe with more than one sample


def _reason(err: Exception) -> str:
    return " ".join(str(err).split())[:240]


def check_request(request: dict) -> list[str]:
    name, cfg, in_shape = request["model"], request["cfg"], tuple(request["in_shape"])
    where = f"models.{name} ({cfg['arch']})"
    try:
        with torch.device("meta"):
            model = build_from_cfg(cfg, in_shape, PROBE_CLASSES, load_weights=False)
    except (ValueError, RuntimeError, TypeError) as err:
        return [f"{where} cannot be built: {_reason(err)}"]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(PROBE_BATCH, *in_shape, device="meta"))
    except NotImplementedError:
        pass  # an op without a meta kernel: the shape check is left to the job
    except (RuntimeError, ValueError, AssertionError) as err:
        return [f"{where} does not accept the inputs of dataset {request['dataset']}, of shape {list(in_shape)}: "
                f"{_reason(err)}; the input is too small for this model: use a larger image_size or another "
                "model (small_stem keeps a ResNet's resolution)"]
    errors = []
    for experiment_set, run_id, site in request["sites"]:
        try:
            resolve_site(model, site)
        except ValueError as err:
            errors.append(f"experiment_sets.{experiment_set} run {run_id}: {err}")
    return errors


def check_models(requests: list[dict]) -> list[str]:
    return [error for request in requests for error in check_request(request)]
