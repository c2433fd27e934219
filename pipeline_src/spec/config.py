"""Params in one direction: YAML -> schema (defaults filled, typos rejected) -> run table -> RunConfig.

Every error raised here is a ParamsError whose message is one line naming the key,
the bad value and what is allowed, so the entry points can print it without a traceback.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.provenance import REPO_ROOT  # also imported from here by callers
from pipeline_src.spec.protocols import authors_code, merge as _merge
from pipeline_src.spec.readings import followed_protocol, protocol_departure, reading_sources
from pipeline_src.spec.schema import InputError, SchemaError, evaluation_keys, filled


class ParamsError(InputError):
    """A params problem, described in one line."""


# results_dir may leave the project (absolute, or through '..') only when this is set to 1: a dry run
# already writes there (the model check's cache), and as root `results_dir: /etc` would write into /etc
RESULTS_ANYWHERE_ENV = "PIPELINE_RESULTS_ANYWHERE"
# what a run id may hold: it is a folder name and a word of the rules' shell lines (the schema keeps names
# to letters, digits and _; a sweep value adds its own characters)
RUN_ID = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")


def check_results_dir(results_dir: str) -> None:
    """results_dir stays inside the project (the working folder the rules run in) unless RESULTS_ANYWHERE_ENV
    says otherwise; its characters were checked by the schema."""
    if os.environ.get(RESULTS_ANYWHERE_ENV) == "1":
        return
    if Path(results_dir).is_absolute() or ".." in Path(results_dir).parts:
        raise ParamsError(f"invalid params: results_dir: {results_dir!r} may leave the project; give a relative path "
                          f"without '..' (or set {RESULTS_ANYWHERE_ENV}=1 to write results outside it)")


def validate_params(params: dict) -> dict:
    """Validate against the schema, fill defaults, check cross-references. Returns a new dict."""
    raw_methods = {name: spec.get("methods") for name, spec in (params.get("experiment_sets") or {}).items()
                   if isinstance(spec, dict)}
    try:
        params = filled(params)
    except SchemaError as err:
        raise ParamsError(f"invalid params: {err}") from None
    check_results_dir(params["results_dir"])
    # methods stay as written: a run's method gets its defaults when it is resolved, after the
    # protocol's own values (authors_code) have filled what the spec leaves out
    for name, methods in raw_methods.items():
        params["experiment_sets"][name]["methods"] = copy.deepcopy(methods)
    for name, spec in params["experiment_sets"].items():
        spec.setdefault("kind", name)  # a set without a kind is its own kind: the one default a schema cannot name
    for set_name, spec in params["experiment_sets"].items():
        for key, known in (("datasets", params["datasets"]), ("models", params["models"])):
            for name in spec[key]:
                if name not in known:
                    raise ParamsError(f"invalid params: experiment_sets.{set_name}.{key}: {name!r} is not defined; "
                                      f"defined {key}: {', '.join(known)}")
        for reading in spec.get("readings", []):
            if reading not in params["readings"]:
                raise ParamsError(f"invalid params: experiment_sets.{set_name}.readings: {reading!r} is not defined; "
                                  f"defined readings: {', '.join(params['readings']) or 'none'}")
        labels = [m["label"] for m in spec["methods"]]
        if len(set(labels)) != len(labels):
            raise ParamsError(f"invalid params: experiment_sets.{set_name}.methods: duplicate labels in {labels}")
    check_protocols(params)
    return params


def check_protocols(params: dict) -> None:
    """A NoisyNN protocol is a reading of the audit: its name is no other reading's, and no two protocols
    fix the same noise and apply_at (a method would follow both)."""
    seen: dict[str, str] = {}
    for name, protocol in params["noisynn_protocols"].items():
        if name in params["readings"] or name == params["own_reading"]:
            raise ParamsError(f"invalid params: noisynn_protocols.{name}: the name is already a reading (readings or "
                              "own_reading); a protocol is judged as a reading of its own: give it another name")
        key = json.dumps([protocol["noise"], protocol["apply_at"]], sort_keys=True)
        if key in seen:
            raise ParamsError(f"invalid params: noisynn_protocols.{name}: the same noise and apply_at as "
                              f"{seen[key]}; a method would follow both")
        seen[key] = name


def dataset_spec(params: dict, name: str) -> dict:
    """What the prepare step reads for a dataset: its spec less the audit-only paper_name."""
    return {k: v for k, v in params["datasets"][name].items() if k != "paper_name"}


def audit_set_info(params: dict) -> dict:
    """Each set's kind and scale, and the papers' names of our datasets and models (the audit's input);
    method_specs: each set's methods as its runs resolve them (claims may select runs by what they are)."""
    resolved: dict[str, dict] = {}
    for run in expand_runs(params):
        resolved.setdefault(run.experiment_set, {}).setdefault(json.dumps(run.method, sort_keys=True), run.method)
    protocols = params["noisynn_protocols"]
    # the NoisyNN method labels that follow neither of the authors' protocols, each with what it changes (a
    # label in several sets, or a grid's points, may change different things: each said once)
    neither: dict[str, list[str]] = {}
    for methods in resolved.values():
        for m in methods.values():
            if protocols and m["name"] == "noisynn" and not followed_protocol(m, protocols):
                texts = neither.setdefault(m["label"], [])
                texts += [t for t in [protocol_departure(m, protocols)] if t not in texts]
    return {
        **{name: {"kind": spec["kind"], "scale": params["scale"], "datasets": spec["datasets"],
                  "readings": spec.get("readings") or [params["own_reading"]],
                  "methods": [m["label"] for m in spec["methods"]],
                  "method_specs": list(resolved.get(name, {}).values())}
           for name, spec in params["experiment_sets"].items()},
        "readings": reading_sources(params, {k: ", ".join(v) for k, v in neither.items()}),
        "noisynn_protocols": protocols,
        "datasets": {name: spec.get("paper_name", name) for name, spec in params["datasets"].items()},
        "models": {name: spec.get("paper_name", name) for name, spec in params["models"].items()},
    }


def load_params(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"params file {path} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"params file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ParamsError(f"params file {path} is empty: it must hold a mapping of keys, as params/default.yaml does")
    if not isinstance(raw, dict):
        raise ParamsError(f"params file {path} must hold a mapping of keys, not a {type(raw).__name__}")
    return validate_params(raw)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; written next to its results."""

    run_id: str
    experiment_set: str
    set_kind: str
    dataset: str
    model: str
    model_cfg: dict
    method: dict
    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: dict
    protocol: str = "paper"
    reading: str = ""  # a named protocol reading (params readings); "" the params' own training
    label_smoothing: float = 0.0
    scale: str = "embedded_default"
    device: str = "auto"
    sweep: dict = field(default_factory=dict)
    compile: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls(**json.loads(text))

    def params_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def training_identity(self) -> "RunConfig":
        """What trains the model: this run less the method keys that only change how it is measured
        (the schema's x-evaluation-keys). The train job gets this, so it reruns only when this changes."""
        keys = evaluation_keys()
        return replace(self, method={k: v for k, v in self.method.items() if k not in keys})


def format_run_id(dataset: str, model: str, label: str, sweep_suffix: str, reading: str, seed: int) -> str:
    """`<dataset>-<model>-<label><sweep>[.<reading>]-s<seed>`: the one place run ids are formed."""
    return f"{dataset}-{model}-{label}{sweep_suffix}{'.' + reading if reading else ''}-s{seed}"


def sweep_suffix(sweep: dict) -> str:
    """A grid point as run ids name it: "-strength0.1" per swept key (its last part), in grid order."""
    return "".join(f"-{key.split('.')[-1]}{_format_value(value)}" for key, value in sweep.items())


def run_configuration(label: str, sweep: dict) -> str:
    """What a run is besides its dataset, model, reading and seed: its method label and sweep point, from
    the run's own fields (a RunConfig's, or its record's `method` and `sweep`), never from its run id."""
    return label + sweep_suffix(sweep)


def model_identity(model_cfg: dict) -> dict:
    """What trains a model: its spec less the audit-only paper_name (renaming a column retrains nothing)."""
    return {k: v for k, v in model_cfg.items() if k != "paper_name"}


def _set_dotted(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        d = d.setdefault(key, {})
    d[last] = value


def _format_value(value) -> str:
    return str(value).replace(":", "").replace("/", "_").replace(" ", "")


def expand_methods(methods: list[dict]) -> list[tuple[dict, dict, str]]:
    """Each method spec -> one (method, sweep values, run-id suffix) per point of its grid. The method
    keeps its own label; the suffix ("-strength0.1") names the grid point in run ids only."""
    out = []
    for spec in methods:
        spec = copy.deepcopy(spec)
        grid = spec.pop("grid", {})
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            method = copy.deepcopy(spec)
            sweep = dict(zip(keys, values))
            for key, value in sweep.items():
                _set_dotted(method, key, value)
            out.append((method, sweep, sweep_suffix(sweep)))
    return out


@functools.cache  # a set's method spec recurs across its datasets, models, readings and seeds
def _resolved_method(method_json: str, batch_size: int, eval_batch_size: int) -> str:
    return json.dumps(resolve_method(json.loads(method_json), batch_size, eval_batch_size))


def expand_runs(params: dict, experiment_set: str | None = None) -> list[RunConfig]:
    """The run table: set x dataset x model x method (x grid) x seed."""
    runs = []
    cells: dict[tuple[str, str], str] = {}  # (set, run id) -> the cell it names, to refuse two cells under one id
    trainings: dict[str, str] = {}  # a run's training less its names -> the first run id that trains it
    for set_name, spec in params["experiment_sets"].items():
        if experiment_set is not None and set_name != experiment_set:
            continue
        own_training = _merge(params["training"], spec.get("training", {}))  # schema-filled defaults
        kind = spec["kind"]
        for reading, dataset, model, (method, sweep, suffix), seed in itertools.product(
                spec.get("readings", [""]), spec["datasets"], spec["models"], expand_methods(spec["methods"]),
                spec.get("seeds", params["seeds"])):
            training = _merge(own_training, params["readings"][reading]["training"]) if reading else own_training
            model_cfg = model_identity(params["models"][model])
            if params["protocol"] == "authors_code":
                training, method, model_cfg = authors_code(kind, training, method, model_cfg,
                                                           params["datasets"][dataset])
            run_id = format_run_id(dataset, model, method["label"], suffix, reading, seed)
            cell = (f"(dataset {dataset}, model {model}, method {method['label']}"
                    + "".join(f", {k} {v!r}" for k, v in sweep.items()) + (f", reading {reading}" if reading else "")
                    + f", seed {seed})")
            if not RUN_ID.fullmatch(run_id):
                raise ParamsError(f"invalid params: experiment_sets.{set_name}: run id {run_id!r} of {cell} may hold "
                                  "only letters, digits, _, . and -: change the grid values that bring the others")
            if (set_name, run_id) in cells:  # one would overwrite the other's files, and the table lose a row
                raise ParamsError(f"invalid params: experiment_sets.{set_name}: run id {run_id} names two runs, "
                                  f"{cells[set_name, run_id]} and {cell}: rename one, or drop one grid value")
            cells[set_name, run_id] = cell
            try:
                resolved = json.loads(_resolved_method(json.dumps(method), training["batch_size"],
                                                       training["eval_batch_size"]))
            except ValueError as err:
                raise ParamsError(f"invalid params: experiment_sets.{set_name} run {run_id}: {err}") from None
            runs.append(RunConfig(
                run_id=run_id,
                experiment_set=set_name,
                set_kind=kind,
                dataset=dataset,
                model=model,
                model_cfg=model_cfg,
                method=resolved,
                seed=seed,
                epochs=training["epochs"],
                batch_size=training["batch_size"],
                eval_batch_size=training["eval_batch_size"],
                optimizer=training["optimizer"],
                protocol=params["protocol"],
                reading=reading,
                label_smoothing=training["label_smoothing"],
                scale=params["scale"],
                device=params["device"],
                sweep=sweep,
                compile=training["compile"],
            ))
            # an overlay that sets what two readings differ in (protocol authors_code over a reading's
            # training) makes them one training: it would train twice and count twice in the claims' family.
            # Only readings can collide: any other two runs differ in set, dataset, model, method, sweep or seed
            same = replace(runs[-1].training_identity(), run_id="", reading="").to_json() if reading else None
            if same in trainings:
                raise ParamsError(f"invalid params: experiment_sets.{set_name}: run ids {trainings[same]} and {run_id} "
                                  f"resolve to the same training under protocol {params['protocol']}: keep one "
                                  "reading of those it makes equal, or choose another protocol")
            if same:
                trainings[same] = run_id
    return runs


def find_run(params: dict, experiment_set: str, run_id: str) -> RunConfig:
    for run in expand_runs(params, experiment_set):
        if run.run_id == run_id:
            return run
    raise ParamsError(f"no run {run_id!r} in experiment set {experiment_set!r}")


def weights_path(weights_file: str) -> Path:
    """A params weights_file: absolute, or relative to the repository root (where the rules run)."""
    path = Path(weights_file)
    return path if path.is_absolute() else REPO_ROOT / path
