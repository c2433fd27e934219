"""Checks every run can start, before the DAG launches a single job.

Only cheap checks live here (no data, no model weights): names exist, noise and
VPN settings are in range, a frozen run has a base run to load. Checks that need
the built model (a layer name) run at the start of the job, still before training.
"""
from __future__ import annotations

from pipeline_src.config import ParamsError, RunConfig, dataset_spec
from pipeline_src.models import is_known_arch, weights_path


def base_run_of(run: RunConfig) -> tuple[str, str] | None:
    """(experiment_set, run_id) of the run whose trained model a frozen VPN run starts from."""
    spec = run.method
    if spec["name"] != "vpn" or spec.get("mode", "joint") != "frozen":
        return None
    if "base_set" not in spec or "base_label" not in spec:
        raise ValueError("frozen mode needs base_set and base_label naming the baseline run to freeze")
    return spec["base_set"], f"{run.dataset}-{run.model}-{spec['base_label']}-s{run.seed}"


def check_runs(params: dict, runs: list[RunConfig]) -> None:
    from pipeline_src.data import DataError, resolve_spec

    for name in params["datasets"]:
        try:
            resolve_spec(name, dataset_spec(params, name))
        except DataError as err:
            raise ParamsError(f"invalid params: {err}") from None
    for name, model in params["models"].items():
        if model.get("weights_file") and not weights_path(model["weights_file"]).is_file():
            raise ParamsError(f"invalid params: models.{name}.weights_file: {model['weights_file']} does not exist; "
                              "put the weights file there (a state_dict for the timm model) or remove the key")
        if not is_known_arch(model["arch"]):
            raise ParamsError(f"invalid params: models.{name}.arch: {model['arch']!r} is not sr, dnn3 "
                              "or a timm model name (see timm.list_models())")
    runs_by_key = {(r.experiment_set, r.run_id): r for r in runs}
    for run in runs:
        try:
            if run.method["name"] == "noisynn":
                from pipeline_src.noisynn import check_method_spec

                check_method_spec(run.method, run.batch_size)
            elif run.method["name"] == "vpn":
                from pipeline_src.vpn import check_method_spec as check_vpn_spec

                check_vpn_spec(run.method)
                base = base_run_of(run)
                if base is not None and base not in runs_by_key:
                    raise ValueError(f"frozen mode: no run {base[1]!r} in experiment set {base[0]!r} "
                                     "to take the base model from")
        except ValueError as err:
            raise ParamsError(f"invalid params: experiment_sets.{run.experiment_set} run {run.run_id}: {err}") from None
