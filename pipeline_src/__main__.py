"""Command line: the one entry point the Snakemake rules, the tests and users call (as `python -m pipeline_src`,
or the console script `beneficial-noise` that pyproject.toml installs).

Commands people type (`--help` lists these):
    python -m pipeline_src check     --params params/default.yaml
    python -m pipeline_src status    --params P [--report reports/NAME] [--jobs N]
    python -m pipeline_src missing   --params P --report reports/NAME [--limit N]
    python -m pipeline_src report    --params P --out reports/NAME [--results results/NAME]
    python -m pipeline_src ui        [--report reports/NAME | --results results] [--port 5000]
    python -m pipeline_src run       --params P --set SET --run-id ID --data DIR --out RUN   (train + evaluate, by hand)
    python -m pipeline_src track-resync --results results

Steps the Snakemake rules run (`--help` names them in one line):
    python -m pipeline_src check-models < REQUESTS.json    (preflight's model check)
    python -m pipeline_src prepare   --params P --dataset NAME --out results/prepared/NAME
    python -m pipeline_src train     --params P --set SET --run-id ID --data DIR --model RUN/model.pt
    python -m pipeline_src evaluate  --params P --set SET --run-id ID --data DIR --model RUN/model.pt
                                     --metrics RUN/metrics.json
    python -m pipeline_src aggregate --set SET --kind KIND --table T.csv --markdown T.md --runs R.csv
                                     --figure F.png METRICS...
    python -m pipeline_src audit     --claims params/claims.yaml --deviations params/deviations.yaml
                                     --set-info JSON --csv --cells --markdown --figure --tables FILES...
                                     --runs RUNS_CSV...
    python -m pipeline_src track-init --params P / track-set --results results
    python -m pipeline_src track-audit --results results --tables AUDIT.csv CELLS.csv --files AUDIT.md ... --out J

The rules name every file a command writes (--data/--manifest, --model, --metrics, ...); a folder
(--out) is the shorthand for running a step by hand.

Every expected failure (bad params, missing data, bad noise setting) ends with one
line on stderr and exit status 2, never a traceback.

Over 350 lines on purpose: one short function per command and main()'s argparse table of every command's
options, which reads best in one place; the work each command does lives in the package.
"""
from __future__ import annotations

import os
import sys

# A worker that has imported torch and the rest already (pipeline_src/plumbing/worker/) runs the command in a
# forked child, with this process's output, working directory and environment: this process then only
# waits for its exit status. The child itself, and a torchrun rank, run the command here as usual.
if __name__ == "__main__" and os.environ.get("PIPELINE_WORKER_SOCKET") and "LOCAL_RANK" not in os.environ:
    from pipeline_src.plumbing.worker.client import run_in_worker

    _status = run_in_worker(os.environ["PIPELINE_WORKER_SOCKET"], ["pipeline_src", *sys.argv[1:]])
    if _status is not None:
        sys.exit(_status)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline_src.spec.config import ParamsError, RunConfig, dataset_spec, find_run, load_params  # noqa: E402


DESCRIPTION = """Reproduce and audit the NoisyNN and VPN papers' tables: check a params file, follow a run's
progress, rebuild a report, open its runs in MLflow. Snakemake runs the pipeline itself
(`make reproduce`); every expected failure ends with one line on stderr and exit status 2."""
# what people type, in the order --help lists them; the other commands are the rules' steps
USER_COMMANDS = ("check", "status", "missing", "report", "ui", "run", "track-resync")


def _run_config(args) -> RunConfig:
    if args.run_json:
        return RunConfig.from_json(args.run_json)
    if not (args.params and args.set and args.run_id):
        raise ParamsError("a run is named by --run-json, or by --params with --set and --run-id")
    return find_run(load_params(args.params), args.set, args.run_id)


def cmd_check(args) -> None:
    from pipeline_src.spec.config import expand_runs
    from pipeline_src.spec.preflight import check_runs

    params = load_params(args.params)
    runs = expand_runs(params)
    check_runs(params, runs)
    print(f"{args.params}: ok, {len(params['experiment_sets'])} experiment sets, {len(runs)} runs")


def cmd_check_models(args) -> None:
    from pipeline_src.methods.model_check import check_models

    print(json.dumps(check_models(json.load(sys.stdin))))


def cmd_prepare(args) -> None:
    from pipeline_src.data.prepared import prepare
    from pipeline_src.provenance import REPO_ROOT

    if args.spec_json:
        spec = json.loads(args.spec_json)
    else:
        params = load_params(args.params) if args.params else {"datasets": {}}
        if args.dataset not in params["datasets"]:
            raise ParamsError(f"dataset {args.dataset!r} is not defined in --params; "
                              f"defined: {', '.join(params['datasets'])}")
        spec = dataset_spec(params, args.dataset)
    from pipeline_src.data.prepared import PreparedFiles

    if not ((args.data and args.manifest) or args.out):
        raise ParamsError("prepare needs --data and --manifest (the files to write), or --out (a folder)")
    out = PreparedFiles(Path(args.data), Path(args.manifest)) if args.data else PreparedFiles.of(args.out)
    manifest = prepare(args.dataset, spec, out, REPO_ROOT, dvc_hash=args.dvc_hash)
    print(f"prepared {args.dataset}: data_version {manifest['data_version']}")


def _prepared(args):
    from pipeline_src.data.prepared import PreparedFiles

    return PreparedFiles(Path(args.data), Path(args.manifest)) if args.manifest else PreparedFiles.of(args.data)


def cmd_train(args) -> None:
    """Train one run: model.pt and trained.json beside it. A live MLflow run stays open for evaluate."""
    from pipeline_src.training.train import train_run

    cfg = _run_config(args)
    out = Path(args.model).parent
    live = _live_run(cfg, out, args.rule)
    try:
        trained = train_run(cfg, _prepared(args), out, Path(args.base_checkpoint) if args.base_checkpoint else None,
                            threads=args.threads, rule=args.rule, model_path=Path(args.model),
                            on_epoch=live.epoch if live else None)
    except BaseException:
        if live:
            live.fail()
        raise
    if live:
        live.pause()
    if trained:  # not on a torchrun process other than the first
        print(f"{cfg.run_id}: trained {len(trained['history'])} epochs -> {args.model}")


def cmd_evaluate(args) -> None:
    """Measure a trained run: metrics.json and predictions.npz; then its MLflow run, when tracked per job."""
    from pipeline_src.evaluation.evaluate import evaluate_run

    cfg = _run_config(args)
    out = Path(args.metrics).parent
    live = _live_run(cfg, out, "train")
    try:
        metrics = evaluate_run(cfg, _prepared(args), Path(args.model), Path(args.metrics), threads=args.threads)
    except BaseException:
        if live:
            live.fail()
        raise
    _finish_tracking(metrics, live, args.tracking, Path(args.metrics))


def train_and_evaluate(cfg: RunConfig, data, out_dir: Path, base_checkpoint: Path | None = None,
                       threads: int | None = None, on_epoch=None) -> dict:
    """Train cfg into out_dir, then evaluate it, in one process (`run`, the tests, benchmarks); returns
    metrics.json's record ({} on a torchrun process other than the first). Here in the CLI, which may
    import every stage, so training never imports evaluation; the DAG runs the two as separate jobs."""
    from pipeline_src.evaluation.evaluate import evaluate_run
    from pipeline_src.training.train import train_run

    out_dir = Path(out_dir)
    if not train_run(cfg, data, out_dir, base_checkpoint, threads=threads, on_epoch=on_epoch):
        return {}
    return evaluate_run(cfg, data, out_dir / "model.pt", out_dir / "metrics.json", threads=threads)


def cmd_run(args) -> None:
    """Train and evaluate one run in one process, by hand (the DAG runs train and evaluate as two jobs)."""
    cfg = _run_config(args)
    out = Path(args.out)
    metrics = train_and_evaluate(cfg, _prepared(args), out, Path(args.base_checkpoint) if args.base_checkpoint
                                 else None, threads=args.threads)
    if metrics:
        _finish_tracking(metrics, None, args.tracking, out / "metrics.json")


def _finish_tracking(metrics: dict, live, tracking: str | None, metrics_path: Path) -> None:
    if live or tracking:  # in the DAG without live tracking, track_set logs a whole set at once
        from pipeline_src.tracking.runs import log_evaluated

        mlflow_id = log_evaluated(metrics, metrics_path, live, Path(tracking) if tracking else None)
        print(f"{metrics['run_id']}: MLflow run {mlflow_id}" if mlflow_id else
              f"{metrics['run_id']}: NOT logged to MLflow (run track-resync later)")
    print(f"{metrics['run_id']}: test_top1 {metrics['test_top1']:.2f} ({json.dumps(metrics['evaluations'])})")


def _live_run(cfg: RunConfig, out: Path, rule: str):
    """The job's live MLflow run (params tracking.live with a tracking server), started (or reopened: the
    evaluate job finishes the run its train job opened); else None. Under torchrun only process 0 logs."""
    from pipeline_src.tracking.switch import live_store

    store = live_store()
    if store is None or os.environ.get("RANK", "0") != "0":
        return None
    from pipeline_src.spec.run_record import run_head
    from pipeline_src.tracking.live import LiveRun

    live = LiveRun(store, out, run_head(cfg, rule))
    live.start()
    return live


def cmd_aggregate(args) -> None:
    from pipeline_src.results.aggregate import SetFiles, aggregate_set

    files = SetFiles(Path(args.table), Path(args.markdown), Path(args.runs), Path(args.figure))
    mlflow_ids = None
    if args.tracked:
        from pipeline_src.tracking.ids import read_set_ids

        mlflow_ids = read_set_ids(args.tracked)
    table = aggregate_set(args.set, args.kind, [Path(p) for p in args.metrics], files, mlflow_ids)
    print(f"{args.set}: {len(table)} rows -> {args.table}")


def cmd_audit(args) -> None:
    from pipeline_src.results.audit import AuditFiles, main_audit

    files = AuditFiles(Path(args.csv), Path(args.cells), Path(args.markdown), Path(args.figure),
                       tuple(map(Path, args.tables)))
    audit = main_audit(Path(args.claims), [Path(p) for p in args.runs], json.loads(args.set_info), files,
                       Path(args.deviations))
    print(f"audit: {len(audit)} claims -> {args.csv} {audit['verdict'].value_counts().to_dict()}")


def cmd_report(args) -> None:
    from pipeline_src.results.report import build

    audit = build(Path(args.params), Path(args.out), Path(args.results) if args.results else None)
    print(f"report: {args.out}/audit.md {audit['verdict'].value_counts().to_dict()}")


def cmd_missing(args) -> None:
    from pipeline_src.results.report import missing_runs, record_path

    if args.limit is not None and args.limit < 1:
        raise ParamsError(f"--limit must be a positive number of runs, not {args.limit}")
    params = load_params(args.params)
    todo = missing_runs(params, Path(args.report))
    shown = todo[:args.limit]
    for run in shown:
        print(record_path(Path(params["results_dir"]), run))
    print(f"missing: {len(todo)} declared runs of {args.params} have no record in {args.report}"
          + ("" if Path(args.report).is_dir() else " (no such folder yet)")
          + (f"; listed the first {len(shown)}" if len(shown) < len(todo) else ""), file=sys.stderr)


def cmd_status(args) -> None:
    from pipeline_src.results.progress import progress, status_table

    params = load_params(args.params)
    print(status_table(progress(params, Path(args.report) if args.report else None, args.jobs), args.jobs))


def cmd_track_init(args) -> None:
    from pipeline_src.tracking.store import init_store

    sets = args.sets or list(load_params(args.params)["experiment_sets"])
    info = init_store(Path(args.results), sets, args.params_hash)
    if info.get("error"):
        print(f"WARNING: MLflow store not ready ({info['error']}); runs will be kept in results/ and can be "
              "sent later with `python -m pipeline_src track-resync`", file=sys.stderr)
    else:
        print(f"tracking store ready: {info['tracking_uri']}")


def cmd_track_set(args) -> None:
    """Mirror a set's finished runs into MLflow: one process per set rather than one per training job,
    since importing MLflow and opening the store costs each job seconds of CPU."""
    from pipeline_src.tracking.ids import write_set_ids
    from pipeline_src.tracking.runs import log_set

    ids = log_set(Path(args.results), args.set, [Path(p) for p in args.metrics])
    write_set_ids(args.out, args.set, ids)
    missing = [r for r, i in ids.items() if i is None]
    print(f"{args.set}: {len(ids) - len(missing)} runs in MLflow" +
          (f"; NOT logged (run track-resync later): {' '.join(missing)}" if missing else ""))


def cmd_track_audit(args) -> None:
    from pipeline_src.fileio import write_json
    from pipeline_src.tracking.audit import log_audit, log_set_summaries

    run_id = log_audit(Path(args.results), args.tables, args.files)
    # the audit's folder holds the sets' tables and runs too: each set's summary goes on its parent run
    log_set_summaries(Path(args.results), Path(args.tables[0]).parent)
    write_json(args.out, {"mlflow_run_id": run_id})
    print(f"audit: MLflow run {run_id}" if run_id else f"audit: NOT logged to MLflow; delete {args.out} and rerun")


def cmd_ui(args) -> None:
    """Serve the MLflow UI on a results folder's store, or on a committed report's runs loaded into a store of
    its own; print the link that opens the experiment on its training runs."""
    from pipeline_src.tracking import browse

    if args.report:
        store = Path(args.store or Path(args.results) / "report-mlflow" / Path(args.report).resolve().name)
        experiment_id, runs, new = browse.load_report(Path(args.report), store)
        print(f"{args.report}: {runs} runs in {store / 'mlflow.db'} ({new} newly logged)")
    else:
        store = Path(args.store or args.results)
        experiment_id = browse.experiment_id(store)
        if experiment_id is None:
            print(f"note: {store / 'mlflow.db'} holds no runs yet (run the workflow, or pass --report reports/NAME)",
                  file=sys.stderr)
    print(f"MLflow UI on 127.0.0.1:{args.port}; the experiment's runs: {browse.ui_url(experiment_id, args.port)}"
          + ("" if args.no_serve else "  (Ctrl-C stops it)"), flush=True)
    if not args.no_serve:
        browse.serve(store, args.port)


def cmd_track_resync(args) -> None:
    from pipeline_src.tracking.runs import resync

    synced, skipped = resync(Path(args.results))
    print(f"resynced {synced} runs; {skipped} skipped (already in MLflow, or failed again: see warnings)")


def main(argv: list[str] | None = None) -> int:
    prog = "python -m pipeline_src" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog=prog, usage=f"{prog} COMMAND [options]", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog=prog)
    summaries = {}

    def command(name: str, summary: str, **kwargs) -> argparse.ArgumentParser:
        # no help= here: argparse would list every command; the epilog lists people's commands and names the steps
        summaries[name] = summary
        return sub.add_parser(name, description=summary, **kwargs)

    p = command("check", "validate a params file and every run it declares")
    p.add_argument("--params", required=True)
    p.set_defaults(func=cmd_check)

    p = command("check-models", "(for preflight) build models on the meta device and resolve their "
                       "sites: JSON requests on stdin, JSON errors on stdout")
    p.set_defaults(func=cmd_check_models)

    p = command("prepare", "turn one dataset source into the canonical prepared form")
    p.add_argument("--dataset", required=True)
    p.add_argument("--spec-json", help="the dataset's params (as the DAG passes them)")
    p.add_argument("--params", help="or: a params file defining the dataset")
    p.add_argument("--data", help="the data.npz to write (with --manifest; the rule names both)")
    p.add_argument("--manifest", help="the manifest.json to write")
    p.add_argument("--out", help="or: a folder for data.npz and manifest.json")
    p.add_argument("--dvc-hash", default="", help="the hash of the DVC file covering the dataset's raw files, recorded in the manifest")
    p.set_defaults(func=cmd_prepare)

    run_args = argparse.ArgumentParser(add_help=False)
    run_args.add_argument("--run-json", help="the run's resolved params (as the DAG passes them)")
    run_args.add_argument("--params")
    run_args.add_argument("--set")
    run_args.add_argument("--run-id")
    run_args.add_argument("--data", required=True, help="the prepared data.npz (with --manifest), or its folder")
    run_args.add_argument("--manifest", help="the prepared dataset's manifest.json")
    run_args.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")

    p = command("train", "train one run: model.pt and trained.json", parents=[run_args])
    p.add_argument("--model", required=True, help="the model.pt to write (its folder also gets trained.json "
                   "and the epoch checkpoint)")
    p.add_argument("--base-checkpoint", help="frozen VPN: the trained base model's model.pt")
    p.add_argument("--rule", default="train", help="recorded in provenance")
    p.set_defaults(func=cmd_train)

    p = command("evaluate", "evaluate a trained run: metrics.json and predictions.npz", parents=[run_args])
    p.add_argument("--model", required=True, help="the run's model.pt (trained.json beside it)")
    p.add_argument("--metrics", required=True, help="the metrics.json to write (predictions.npz goes beside it)")
    p.add_argument("--tracking", help="results folder holding tracking.json; omit to skip MLflow")
    p.set_defaults(func=cmd_evaluate)

    p = command("run", "train and evaluate one run by hand, into one folder", parents=[run_args])
    p.add_argument("--out", required=True, help="the run folder: model.pt, trained.json, metrics.json, ...")
    p.add_argument("--base-checkpoint", help="frozen VPN: the trained base model's model.pt")
    p.add_argument("--tracking", help="results folder holding tracking.json; omit to skip MLflow")
    p.set_defaults(func=cmd_run)

    p = command("aggregate", "one table (csv + md) and figure for an experiment set")
    p.add_argument("--set", required=True)
    p.add_argument("--kind", required=True, help="the set's kind: chooses its extra columns and figure")
    p.add_argument("--table", required=True, help="the table to write (csv)")
    p.add_argument("--markdown", required=True, help="the same table in markdown")
    p.add_argument("--runs", required=True, help="every run and eval mode, one line each (csv)")
    p.add_argument("--figure", required=True, help="the set's figure (png)")
    p.add_argument("--tracked", help="the set's tracking file (tracking/<set>.json): the runs' MLflow ids")
    p.add_argument("metrics", nargs="+", help="the runs' metrics.json files")
    p.set_defaults(func=cmd_aggregate)

    p = command("audit", "every published number and claim in the registry against the runs")
    p.add_argument("--claims", required=True, help="the claims registry (params/claims.yaml)")
    p.add_argument("--deviations", required=True, help="the deviations registry (params/deviations.yaml)")
    p.add_argument("--set-info", required=True,
                   help='JSON: {set: {"kind", "scale"}, "datasets": {name: paper_name}, "models": {name: paper_name}}')
    p.add_argument("--csv", required=True, help="the verdict per claim (csv)")
    p.add_argument("--cells", required=True, help="effect claims cell by cell (csv)")
    p.add_argument("--markdown", required=True, help="audit.md: rules, paper tables, claims, deviations")
    p.add_argument("--figure", required=True, help="the audit figure (png)")
    p.add_argument("--tables", nargs="+", required=True, help="the paper_<table>.csv/.md/.tex files to write")
    p.add_argument("--runs", nargs="*", default=[], help="each set's <set>_runs.csv")
    p.set_defaults(func=cmd_audit)

    p = command("report", "rebuild a published report folder from its runs' metrics.json files")
    p.add_argument("--params", required=True, help="the params file the report's runs come from")
    p.add_argument("--out", required=True, help="the report folder, e.g. reports/fashion-mnist")
    p.add_argument("--results", help="first copy finished runs from this results folder into --out/runs")
    p.set_defaults(func=cmd_report)

    p = command("missing", "the Snakemake targets of declared runs a report lacks, cells closest "
                       "to done first")
    p.add_argument("--params", required=True, help="the params file the report's runs come from")
    p.add_argument("--report", required=True, help="the report folder, e.g. reports/fashion-mnist")
    p.add_argument("--limit", type=int, help="list only the first N (a batch that fits one session)")
    p.set_defaults(func=cmd_missing)

    p = command("status", "per experiment set: runs declared, done, running, and an ETA")
    p.add_argument("--params", required=True)
    p.add_argument("--report", help="a report folder whose records count as done too, e.g. reports/fashion-mnist")
    p.add_argument("--jobs", type=int, default=1, help="training jobs running side by side (divides the ETA)")
    p.set_defaults(func=cmd_status)

    p = command("track-init", "create the MLflow store, experiment and one parent run per set")
    p.add_argument("--sets", nargs="*", help="experiment set names")
    p.add_argument("--params", help="or: take the set names from this params file")
    p.add_argument("--results", default="results", help="the folder of the MLflow store (mlflow.db, mlartifacts/, "
                   "tracking.json)")
    p.add_argument("--params-hash", default="")
    p.set_defaults(func=cmd_track_init)

    p = command("track-set", "log an experiment set's finished runs to MLflow")
    p.add_argument("--results", default="results")
    p.add_argument("--set", required=True)
    p.add_argument("--out", required=True, help="JSON of run id -> MLflow run id")
    p.add_argument("metrics", nargs="+", help="the runs' metrics.json files")
    p.set_defaults(func=cmd_track_set)

    p = command("track-audit", "log the audit's tables and verdict counts on the experiment's audit run")
    p.add_argument("--results", default="results")
    p.add_argument("--tables", nargs="+", required=True, help="csv tables: audit.csv, effects_cells.csv")
    p.add_argument("--files", nargs="*", default=[], help="other audit files logged as they are (audit.md, figure)")
    p.add_argument("--out", required=True, help="JSON with the audit run's MLflow id")
    p.set_defaults(func=cmd_track_audit)

    p = command("track-resync", "log runs that never reached MLflow, without duplicates")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_track_resync)

    p = command("ui", "the MLflow UI on a results folder's runs, or on a committed report's (--report)")
    p.add_argument("--report", help="a report folder, e.g. reports/fashion-mnist: its runs, audit and set summaries")
    p.add_argument("--results", default="results", help="the results folder (its mlflow.db; with --report, the "
                   "report's store goes into <results>/report-mlflow/<report name>/)")
    p.add_argument("--store", help="the folder of the store to serve (or load the report into)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--no-serve", action="store_true", help="load and print the link, start no server")
    p.set_defaults(func=cmd_ui)

    width = max(map(len, USER_COMMANDS))
    parser.epilog = ("commands:\n" + "".join(f"  {name:<{width}}  {summaries[name]}\n" for name in USER_COMMANDS)
                     + "\nsteps the workflow's rules run (not typed by hand; each takes --help):\n  "
                     + ", ".join(name for name in summaries if name not in USER_COMMANDS)
                     + f"\n\n{prog} COMMAND --help describes a command's options.")

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ParamsError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    status = main()
    # Tearing the interpreter down once torch and torch._dynamo are loaded costs about 0.8 s of CPU
    # (benchmarks/bench_startup.py), more than many training jobs' own work. Every output is written,
    # closed and renamed into place by now; flush the streams and leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)
