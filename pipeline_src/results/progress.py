"""How far a params file's runs are: per experiment set, runs declared, done, running, and an ETA.

    python -m pipeline_src status --params params/fashion_mnist.yaml --report reports/fashion-mnist [--jobs 2]

A run is done when its files are there, whatever Snakemake planned: in the results folder (params
`results_dir`) a metrics.json of the params' current run with the predictions.npz beside it and the
model.pt and trained.json it was measured on (a failed job's outputs are deleted: a record left without
its model is to do again), or a metrics.json of the current run in the report folder (which keeps the
records only); running when its results folder holds a training checkpoint but no finished record (a job
killed mid-run looks the same until it is restarted, and then resumes there), or a model.pt with a
trained.json of its training identity (trained, its evaluate job still to run: no epochs left). An
evaluation-only run has no epochs of its own; its set counts its base's training (once per base) while the
base's model.pt is not in the results folder, as after collecting into a report, which keeps no weights.
The ETA times the epochs still to train by the seconds per epoch the finished runs recorded
(history[*].seconds) and divides by the number of jobs that run side by side. A run is timed by the
finished runs closest to it: the same set, model and method label (other seeds); else the same dataset,
model and method label in another set (a reading of the same cell: an epoch is the same data through the
same model); else the mean of its set. torch-free: it reads files only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline_src.spec.config import RunConfig, expand_runs
from pipeline_src.results.collect import record_path, same_run
from pipeline_src.fileio import read_json
from pipeline_src.spec.predictions import FILE_NAME as PREDICTIONS_NAME
from pipeline_src.spec.preflight import evaluation_only, model_run_of
from pipeline_src.spec.run_record import CHECKPOINT_NAME, RECORD_REMEDY, TRAINED_NAME, TRAINED_REMEDY, trained_for

MODEL_NAME = "model.pt"  # the train rule's model output, beside trained.json
TRAIN_LOG = "train.log"  # the train rule's log, in the run folder
# the line train.py prints after each epoch: "epoch 3/40 loss 0.4321 ..."
_EPOCH_DONE = re.compile(r"\bepoch (\d+)/(\d+) loss\b")


@dataclass
class SetProgress:
    name: str
    declared: int = 0
    done: int = 0
    running: int = 0
    epochs_left: int = 0
    seconds_left: float = 0.0
    untimed: int = 0  # runs still to train with no finished run to time them by
    seconds_per_epoch: float | None = None  # mean over the set's finished runs


def _record(run: RunConfig, results_dir: Path, report_dir: Path | None) -> dict | None:
    """The run's metrics.json from the first folder that holds one of the current params: the results
    folder's only with the files it was measured from and wrote (all four the rules make for a run)."""
    for folder in [results_dir] + ([report_dir] if report_dir is not None else []):
        path = record_path(folder, run)
        beside = [MODEL_NAME, TRAINED_NAME, PREDICTIONS_NAME] if folder == results_dir else []
        if path.is_file() and all((path.parent / name).is_file() for name in beside):
            metrics = read_json(path, RECORD_REMEDY)
            if same_run(metrics.get("params") or {}, run):
                return metrics
    return None


def _trained(run: RunConfig, run_dir: Path) -> bool:
    """Trained and waiting for its evaluate job: a model.pt with a trained.json of the run's own training
    identity."""
    path = run_dir / TRAINED_NAME
    if not (path.is_file() and (run_dir / MODEL_NAME).is_file()):
        return False
    return trained_for(read_json(path, TRAINED_REMEDY), run)


def epochs_logged(run_dir: Path) -> int:
    """Epochs a running job has finished, from its train.log (0 when it has none yet)."""
    log = run_dir / TRAIN_LOG
    found = _EPOCH_DONE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return int(found[-1][0]) if found else 0


def _cell(run: RunConfig) -> tuple[str, str, str]:
    return run.dataset, run.model, run.method["label"]


def _mean_epoch_seconds(histories: list[list[dict]]) -> float | None:
    seconds = [float(h["seconds"]) for history in histories for h in history if h.get("seconds") is not None]
    return sum(seconds) / len(seconds) if seconds else None


def progress(params: dict, report_dir: Path | None = None, jobs: int = 1) -> list[SetProgress]:
    """One SetProgress per experiment set, in the params' order; seconds_left already divided by jobs."""
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive number of parallel jobs, not {jobs}")
    results_dir = Path(params["results_dir"])
    report_dir = Path(report_dir) if report_dir is not None else None
    sets: dict[str, SetProgress] = {}
    finished: dict[tuple[str, str, str, str], list[list[dict]]] = {}  # (set, dataset, model, label) -> histories
    todo: list[tuple[RunConfig, str, int]] = []  # a run still to train, the set it counts for, its epochs left
    runs = expand_runs(params)
    by_key = {(run.experiment_set, run.run_id): run for run in runs}
    bases_seen: set[tuple[str, str]] = set()  # bases to train again for evaluation-only runs, counted once
    for run in runs:
        state = sets.setdefault(run.experiment_set, SetProgress(run.experiment_set))
        state.declared += 1
        metrics = _record(run, results_dir, report_dir)
        if metrics is not None:
            state.done += 1
            finished.setdefault((run.experiment_set, *_cell(run)), []).append(
                metrics.get("history") or [])
            continue
        owner = run.experiment_set
        if evaluation_only(run.method):  # no epochs of its own: it measures its base's model.pt
            base = model_run_of(run)
            run = by_key[base]
            retrain = (_record(run, results_dir, None) is None  # no model here, but a record in the report
                       and _record(run, results_dir, report_dir) is not None and base not in bases_seen)
            if not retrain:  # the model is here, or the base is still to do and counts for its own set
                todo.append((run, owner, 0))
                continue
            bases_seen.add(base)
        run_dir = record_path(results_dir, run).parent
        trained = _trained(run, run_dir)
        started = trained or (run_dir / CHECKPOINT_NAME).is_file()
        state.running += started
        todo.append((run, owner, 0 if trained else run.epochs - (epochs_logged(run_dir) if started else 0)))
    for state in sets.values():
        state.seconds_per_epoch = _mean_epoch_seconds(
            [h for (name, *_), histories in finished.items() if name == state.name for h in histories])
    for run, owner, left in todo:
        state = sets[owner]
        same_set = finished.get((run.experiment_set, *_cell(run)), [])
        other_sets = [h for (_, *cell), histories in finished.items() if tuple(cell) == _cell(run) for h in histories]
        per_epoch = next((s for s in (_mean_epoch_seconds(same_set), _mean_epoch_seconds(other_sets),
                                      state.seconds_per_epoch) if s is not None), None)
        state.epochs_left += max(left, 0)
        if left <= 0:  # trained, its evaluate job to come: nothing to time
            continue
        if per_epoch is None:
            state.untimed += 1
        else:
            state.seconds_left += max(left, 0) * per_epoch / jobs
    return list(sets.values())


def duration(seconds: float) -> str:
    """3 h 05 min, 12 min, 40 s."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def _eta(seconds: float, untimed: int) -> str:
    if not untimed:
        return duration(seconds)
    return (f"{duration(seconds)} + {untimed} untimed run(s)" if seconds
            else f"unknown ({untimed} run(s), no finished run to time them by)")


def status_table(states: list[SetProgress], jobs: int) -> str:
    """The status lines: one per set and a total."""
    rows = [("set", "declared", "done", "running", "to do", "s/epoch", f"ETA ({jobs} job{'s' * (jobs > 1)})")]
    for s in states:
        rows.append((s.name, s.declared, s.done, s.running, s.declared - s.done,
                     f"{s.seconds_per_epoch:.1f}" if s.seconds_per_epoch is not None else "-",
                     _eta(s.seconds_left, s.untimed)))
    total = lambda key: sum(getattr(s, key) for s in states)  # noqa: E731
    rows.append(("all", total("declared"), total("done"), total("running"), total("declared") - total("done"), "",
                 _eta(total("seconds_left"), total("untimed"))))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) if i in (0, 6) else str(v).rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip() for row in rows)
