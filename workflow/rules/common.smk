# Params validation and the run table; the logic lives in pipeline_src (tested there).
import os
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from pipeline_src.plumbing.code_hash import command_code
from pipeline_src.spec.config import ParamsError, dataset_spec, expand_runs, validate_params
from pipeline_src.data.dvc_versions import dataset_dvc_hash, raw_inputs
from pipeline_src.plumbing.locks import clear_stale_locks, drop_own_locks, hold_results_folder, record_owner
from pipeline_src.spec.preflight import base_run_of, check_runs, gpus_for, model_run_of
from pipeline_src.tracking.switch import LIVE_ENV, switch_on
from pipeline_src.plumbing import worker

try:
    PARAMS = validate_params(config)
    RUNS = {(run.experiment_set, run.run_id): run for run in expand_runs(PARAMS)}
    check_runs(PARAMS, list(RUNS.values()))
except ParamsError as err:
    sys.exit(f"error: {err}")

# After a hard kill the next run would stop at Snakemake's LockException: locks whose owner is
# provably gone are removed here, others named with how to unlock (pipeline_src/plumbing/locks.py). Only in the
# main process: a cluster job step cannot see the submit host's processes.
if workflow.is_main_process:
    for note in clear_stale_locks(Path.cwd()):
        print(note, file=sys.stderr)


# Jobs run here hand their command to one worker that has imported torch and the rest once
# (pipeline_src/plumbing/worker/); jobs on a cluster, or in a conda env of their own, start as plain processes.
_WORKER = []
_WORKER_HERE = not (workflow.non_local_exec or workflow.remote_exec) and (
    DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method)


onstart:
    # Snakemake holds its locks now (never in a dry run): record whose they are. Its lock files say
    # only what they lock; `_lockfile` (Snakemake's own record of the files it wrote) names them.
    # A run ending removes every run's locks in this folder: our own lock on the results folder keeps a
    # second run out of it (plumbing/locks.py). A refused run leaves by os._exit, not SystemExit, after which
    # Snakemake's unlock would remove the first run's locks too.
    if workflow.is_main_process and (refused := hold_results_folder(Path(PARAMS["results_dir"]))):
        print(refused, file=sys.stderr, flush=True)
        drop_own_locks(getattr(workflow.persistence, "_lockfile", {}).values())
        os._exit(1)
    record_owner(Path.cwd(), getattr(workflow.persistence, "_lockfile", {}).values())
    if _WORKER_HERE and workflow.is_main_process:
        _WORKER.append(worker.start(Path(PARAMS["results_dir"]) / "logs" / "worker.log"))


onsuccess:
    worker.stop(_WORKER and _WORKER[0])


onerror:
    worker.stop(_WORKER and _WORKER[0])

# Rules call `python`: make it the interpreter running this workflow, so `.venv/bin/snakemake` works
# without an activated venv (and a cluster job step runs the same one). Under --sdm conda the rule's
# own env provides python. The prefix is not part of a rule's code, so it triggers no rerun.
_INTERPRETER_DIR = Path(sys.executable).parent
if (DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method
        and (_INTERPRETER_DIR / "python").exists()):
    shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(_INTERPRETER_DIR))}:\"$PATH\"; ")

RESULTS = PARAMS["results_dir"]
# tracking.live reaches the training jobs through their environment, so switching it reruns nothing
if workflow.is_main_process and (note := switch_on(PARAMS["tracking"]["live"], RESULTS)):
    print(note, file=sys.stderr)
if os.environ.get(LIVE_ENV):  # a cluster job gets the switch and the server exported with its command
    workflow.register_envvars(LIVE_ENV, "MLFLOW_TRACKING_URI")
SETS = list(PARAMS["experiment_sets"])
# Hashes of the code each rule's command runs, found from the package's imports (pipeline_src/plumbing/code_hash.py):
# editing a module a rule may import reruns that rule, editing any other module does not.
PREPARE_CODE = command_code("prepare")
TRAIN_CODE = command_code("train")
EVALUATE_CODE = command_code("evaluate")
AGGREGATE_CODE = command_code("aggregate")


wildcard_constraints:
    experiment_set="[A-Za-z0-9_]+",
    run_id="[A-Za-z0-9_.\-]+",
    dataset="[A-Za-z0-9_]+",  # the schema's names


def get_run(wildcards):
    return RUNS[(wildcards.experiment_set, wildcards.run_id)]


def get_run_json(wildcards):
    return get_run(wildcards).to_json()


def get_training_json(wildcards):
    return get_run(wildcards).training_identity().to_json()


def get_dataset_json(wildcards):
    import json

    return json.dumps(dataset_spec(PARAMS, wildcards.dataset), sort_keys=True)


def get_raw_inputs(wildcards):
    """The raw files prepare_data reads for this dataset ([] for generated ones): editing one reruns it."""
    return raw_inputs(dataset_spec(PARAMS, wildcards.dataset), workflow.basedir)


def get_dvc_hash(wildcards):
    """The hash of the DVC file versioning this dataset's raw files, derived from data.dvc's manifest of data/raw/ ('' for generated
    datasets), read as YAML: never dvc itself, which locks the repo."""
    return dataset_dvc_hash(dataset_spec(PARAMS, wildcards.dataset), workflow.basedir)


def get_data_file(wildcards):
    return expand(rules.prepare_data.output.data, dataset=get_run(wildcards).dataset)[0]


def get_manifest_file(wildcards):
    return expand(rules.prepare_data.output.manifest, dataset=get_run(wildcards).dataset)[0]


def get_train_inputs(wildcards):
    run = get_run(wildcards)
    inputs = {"data": get_data_file(wildcards), "manifest": get_manifest_file(wildcards)}
    base = base_run_of(run)
    if base is not None:
        inputs["base"] = expand(rules.train.output.model, experiment_set=base[0], run_id=base[1])[0]
    return inputs


def get_model_inputs(wildcards):
    """The model.pt (and trained.json) the evaluate job measures: the run's own, or for an evaluation-only
    run its clean-trained base's, so such a run schedules no train job of its own."""
    experiment_set, run_id = model_run_of(get_run(wildcards))
    return {"model": expand(rules.train.output.model, experiment_set=experiment_set, run_id=run_id)[0],
            "trained": expand(rules.train.output.trained, experiment_set=experiment_set, run_id=run_id)[0]}


def get_base_flag(wildcards, input):
    return f"--base-checkpoint {input.base}" if "base" in input.keys() else ""


def get_gpu_count(wildcards):
    return gpus_for(get_run(wildcards), PARAMS["cluster"]["train_gpus"])


def get_eval_gpu_count(wildcards):
    """Evaluation runs in one process: one GPU where training had any."""
    return min(get_gpu_count(wildcards), 1)


def get_launcher(wildcards):
    """How the train command starts: one process, or one per GPU through torchrun (pipeline_src/training/distributed.py)."""
    gpus = get_gpu_count(wildcards)
    return f"python -m torch.distributed.run --standalone --nproc-per-node {gpus} -m" if gpus > 1 else "python -m"


def get_train_threads(wildcards):
    """One torch thread per training job on one machine, where many small jobs share the cores;
    params' cluster.train_cpus where each job gets its own allocation (the SLURM plugin turns threads
    into --cpus-per-task, and the job step runs with the same number)."""
    on_cluster = workflow.non_local_exec or workflow.remote_exec
    return PARAMS["cluster"]["train_cpus"] if on_cluster else 1


def get_set_metrics(wildcards):
    return [expand(rules.evaluate.output.metrics, experiment_set=s, run_id=r)[0]
            for (s, r) in RUNS if s == wildcards.experiment_set]


def get_all_predictions(wildcards):
    """Every run's predictions.npz: the audit's per-image intervals read them."""
    return [expand(rules.evaluate.output.predictions, experiment_set=s, run_id=r)[0] for (s, r) in RUNS]


def get_set_kind(wildcards):
    return PARAMS["experiment_sets"][wildcards.experiment_set]["kind"]


def get_final_outputs():
    # the predictions too: Snakemake remakes a deleted file only when a job to run needs it, and the audit,
    # which reads them, may well be up to date
    return (expand(rules.aggregate_set.output.table, experiment_set=SETS) + list(rules.audit.output)
            + list(rules.track_audit.output) + get_all_predictions(None))
