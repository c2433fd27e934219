"""Collecting finished runs into a report folder: each run's metrics.json (and its predictions) copied
from a results folder when it is a run the params declare now, a rerun kept out when it reproduces the
record the report holds (bit for bit on CPU, within the GPU tolerances on CUDA), and which declared runs
the report still lacks. report.py builds the pages from what is collected."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from pipeline_src.fileio import read_json, write_atomic, write_json
from pipeline_src.provenance import cpu_model
from pipeline_src.spec.config import RunConfig, expand_runs, model_identity, run_configuration
from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.spec.predictions import predictions_path
from pipeline_src.spec.run_record import RECORD_REMEDY, load_record, upgrade
from pipeline_src.spec.schema import filled


def machine() -> str:
    """CPU model and core count (and the GPU when there is one): where the runs were collected."""
    text = f"{cpu_model()}, {os.cpu_count()} cores"
    # nvidia-smi rather than torch: the results stage reads records and does not load torch
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            names = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=20, check=True).stdout.split("\n")
            if names[0].strip():
                text += f", GPU {names[0].strip()}"
    return text


def same_run(recorded: dict, run: RunConfig) -> bool:
    """A run's recorded params are the run the params file declares now. Keys added since the run was
    made (a RunConfig field, an optimizer option) count as equal when they hold their neutral default;
    the recorded method is resolved as runs are today (runs made before specs were resolved in the
    run table recorded the method as written)."""
    defaults = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}
    defaults["optimizer"] = filled({}, "optimizer_defaults")  # the schema's optimizer defaults
    try:
        method = resolve_method(recorded["method"], recorded["batch_size"], recorded["eval_batch_size"])
    except (KeyError, ValueError):
        return False
    # runs made before the audit-only paper_name left the training identity recorded it
    upgraded = {**recorded, "method": method, "model_cfg": model_identity(recorded.get("model_cfg", {}))}
    upgraded.pop("resolved_method", None)  # a format-1 record's second copy of the method (run_record.py)
    return _covers(upgraded, asdict(run), defaults)


def _covers(recorded, current, defaults) -> bool:
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return recorded == current
    for key, value in current.items():
        if key in recorded:
            if not _covers(recorded[key], value, defaults.get(key) if isinstance(defaults.get(key), dict) else {}):
                return False
        elif defaults.get(key, MISSING) != value:
            return False
    return set(recorded) <= set(current)


def measured(metrics: dict) -> "Measured":
    """What a run measured, without its wall times and provenance, and whether it ran on a GPU. Two compare
    equal when one reproduces the other: bit for bit when both ran on CPU, within the GPU tolerances
    below when either ran on CUDA (its provenance device starts with "cuda")."""
    device = str((metrics.get("provenance") or {}).get("device") or "")
    return Measured({"evaluations": metrics.get("evaluations"), "diagnostics": metrics.get("diagnostics"),
                     "history": [{k: v for k, v in h.items() if k != "seconds"} for h in metrics.get("history", [])]},
                    on_gpu=device.startswith("cuda"))


# A GPU rerun reproduces a record when every evaluation, diagnostic and per-epoch number is within these.
# Why a GPU rerun may differ at all: with use_deterministic_algorithms(warn_only=True), ops PyTorch has
# no deterministic CUDA kernel for still sum with atomics in a varying order, bf16 autocast rounds to 8
# bits of mantissa, and another GPU model or cuDNN version picks other kernels. On CPU our kernels are
# deterministic at a fixed thread count, so a CPU rerun must match exactly.
GPU_TOP1_POINTS = 0.15  # percentages (top-1 accuracies, wrong_label_followed): 15 of the 10,000 test
# images, under a sixth of the audit's narrowest band (1 point) and the seed sd of most report cells
# (0.1 to 0.4 points), so a rerun this close measured the same thing
GPU_RELATIVE = 1e-3  # losses and every other number (sigma means, ratios): float32 sums over an epoch
# agree to about 1e-6 across summation orders; the rest is room for the bf16 matmuls under autocast, whose
# results carry 8 bits of mantissa (4e-3 relative per value) before they are averaged
GPU_ABSOLUTE_FLOOR = 1e-6  # ...or this close, for numbers that are 0 in one run (a generator switched off)
PERCENT_KEYS = ("top1", "wrong_label_followed")  # a number is a percentage if its key holds one of these


@dataclass(frozen=True, eq=False)
class Measured:
    """measured()'s result: `==` is the reproduction rule (see measured)."""

    values: dict
    on_gpu: bool

    def __eq__(self, other) -> bool:
        if not isinstance(other, Measured):
            return NotImplemented
        if not (self.on_gpu or other.on_gpu):
            return self.values == other.values
        return within_gpu_tolerance(self.values, other.values)

    __hash__ = None


def within_gpu_tolerance(a, b, key: str = "", percent: bool = False) -> bool:
    """a and b have the same structure and every number agrees within the GPU tolerances; evaluations
    are all top-1 percentages, elsewhere a key names its kind (PERCENT_KEYS)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            within_gpu_tolerance(a[k], b[k], k, percent or k == "evaluations") for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(within_gpu_tolerance(x, y, key, percent) for x, y in zip(a, b))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers or (isinstance(a, int) and isinstance(b, int)):  # epochs, counts, strings, None: exact
        return a == b
    if a != a or b != b:  # NaN: nothing was measured, in both runs or neither
        return a != a and b != b
    if percent or any(word in key for word in PERCENT_KEYS):
        return abs(a - b) <= GPU_TOP1_POINTS
    return abs(a - b) <= max(GPU_RELATIVE * max(abs(a), abs(b)), GPU_ABSOLUTE_FLOOR)


@dataclass
class Collected:
    copied: list[str]  # new to the report, or a rerun that measured other numbers (replaced)
    reproduced: list[str]  # a rerun that measured the same numbers: the report keeps its record
    extended: list[str] = field(default_factory=list)  # a rerun that measured every number the record
    # holds, and more (a diagnostic the old code did not record): replaced, so the new measures count


def measured_more(kept: Measured, new: Measured) -> bool:
    """new reproduces every number kept holds (by the reproduction rule) and measures more besides."""
    def cut(values, like):  # values, keeping only the keys and list items `like` has
        if isinstance(values, dict) and isinstance(like, dict):
            return {k: cut(values[k], like[k]) for k in like if k in values}
        if isinstance(values, list) and isinstance(like, list) and len(values) == len(like):
            return [cut(v, w) for v, w in zip(values, like)]
        return values
    return kept != new and Measured(cut(new.values, kept.values), new.on_gpu) == kept


def record_path(report_dir: Path, run: RunConfig) -> Path:
    """Where a report folder keeps one run's metrics.json (a results folder uses the same layout)."""
    return Path(report_dir) / "runs" / run.experiment_set / run.run_id / "metrics.json"


def collect(params: dict, results_dir: Path, report_dir: Path) -> Collected:
    """Copy each finished run's metrics.json (and its job's wall time) into the report. Runs of other
    params (an epoch count changed since) are not taken. A rerun of a run the report holds replaces it
    only when it measured other numbers, so the record the verdicts were first built on stays."""
    done, here = Collected([], []), machine()
    machines_path = report_dir / "machines.json"
    machines = json.loads(machines_path.read_text()) if machines_path.exists() else {}
    for run in expand_runs(params):
        key = f"{run.experiment_set}/{run.run_id}"
        source, target = record_path(results_dir, run), record_path(report_dir, run)
        if not source.exists():
            continue
        new = read_json(source, RECORD_REMEDY)
        if not same_run(upgrade(new)["params"], run):
            continue
        bench = results_dir / "benchmarks" / f"{key}.tsv"
        wall = float(pd.read_csv(bench, sep="\t")["s"].iloc[0]) if bench.exists() else None
        kept = read_json(target, RECORD_REMEDY) if target.exists() else None
        if kept is not None and measured(kept) == measured(new):
            if kept != new:
                done.reproduced.append(key)
            machines.setdefault(key, {"machine": here, "job_wall_s": wall})
            _copy_predictions(source, target)  # a record made before runs stored them gains them
            continue
        more = kept is not None and measured_more(measured(kept), measured(new))
        if kept is not None and not more:
            print(f"report: {key}: the run in {results_dir} measured other numbers than the report's; "
                  "replacing it (git diff shows both)", file=sys.stderr)
        write_atomic(target, source.read_bytes())
        _copy_predictions(source, target)
        machines[key] = {"machine": here, "job_wall_s": wall}
        (done.extended if more else done.copied).append(key)
    write_json(machines_path, dict(sorted(machines.items())))
    return done


def _copy_predictions(source_metrics: Path, target_metrics: Path) -> None:
    """The run's per-image predictions travel with its record, when the run stored them."""
    source = predictions_path(source_metrics)
    if source.exists():
        write_atomic(predictions_path(target_metrics), source.read_bytes())


def run_metrics(params: dict, report_dir: Path) -> dict[str, list[Path]]:
    """Set -> the report's metrics.json files of that set's declared runs, in run-table order."""
    by_set: dict[str, list[Path]] = {}
    for run in expand_runs(params):
        path = record_path(report_dir, run)
        if path.exists():
            by_set.setdefault(run.experiment_set, []).append(path)
    return by_set


def missing_runs(params: dict, report_dir: Path) -> list[RunConfig]:
    """The declared runs the report holds no record of (or a record of other params), cells with the
    fewest runs to go first: a set filled over several sessions then finishes whole cells early, and a
    cell gets its verdict as soon as its last seed lands."""
    def recorded(run: RunConfig) -> bool:
        path = record_path(report_dir, run)
        return path.exists() and same_run(load_record(path)["params"], run)

    def cell(run: RunConfig) -> tuple:
        return (run.experiment_set, run.dataset, run.model, run.reading,
                run_configuration(run.method["label"], run.sweep))

    todo = [run for run in expand_runs(params) if not recorded(run)]
    to_go = Counter(cell(run) for run in todo)
    return sorted(todo, key=lambda run: (to_go[cell(run)], cell(run), run.seed))
