"""A published reproduction report: the runs' metrics.json files kept in a committed folder, and
everything else rebuilt from them alone (set tables, the audit, the test-batch study, provenance, the
index README and one page per claim under claims/, and the repository README's claim table).

    python -m pipeline_src report --params params/fashion_mnist.yaml --results results/fashion_mnist \
        --out reports/fashion-mnist

`--results` is optional: with it, finished runs there are first copied into `<out>/runs/` (metrics.json
and predictions.npz, never weights), so a set that takes several sessions grows in the report folder run by run.
Collecting them is collect.py's job; this module builds the tables, audit and pages from what is there.
Rebuilding from the committed files gives the committed tables and verdicts (tests/test_report.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from pipeline_src.fileio import write_atomic, write_json
from pipeline_src.provenance import REPO_ROOT
from pipeline_src.results.collect import collect, missing_runs, record_path, run_metrics
from pipeline_src.spec.config import audit_set_info, expand_runs, load_params
from pipeline_src.spec.run_record import load_record

# collecting records lives in collect.py; these stay importable from here for the CLI and older callers
__all__ = ["build", "collect", "missing_runs", "record_path", "run_metrics", "write_pages"]

CLAIMS = REPO_ROOT / "params" / "claims.yaml"
DEVIATIONS = REPO_ROOT / "params" / "deviations.yaml"


def batch_size_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per model, training and test protocol x test batch size: mean, sd, n over seeds, and the mean
    paired difference to the same trained model evaluated clean."""
    # the run's headline mode and the same batch size among the extra sizes are one evaluation
    long = long.drop_duplicates(["model", "method", "seed", "test_batches", "test_batch_size"])
    clean = long[long["eval_mode"] == "no_noise"].set_index(["model", "method", "seed"])["top1"]
    noisy = long[long["eval_mode"] != "no_noise"].copy()
    noisy["delta_vs_clean"] = noisy["top1"].to_numpy() - clean.reindex(
        pd.MultiIndex.from_frame(noisy[["model", "method", "seed"]])).to_numpy()
    rows = pd.concat([long[long["eval_mode"] == "no_noise"].assign(test_batches="clean", test_batch_size=float("nan"),
                                                                    delta_vs_clean=0.0), noisy])
    table = rows.groupby(["model", "method", "test_batches", "test_batch_size"], dropna=False).agg(
        top1_mean=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
        delta_vs_clean_mean=("delta_vs_clean", "mean"), delta_vs_clean_std=("delta_vs_clean", "std"))
    table = table.reset_index()
    table["test_batch_size"] = table["test_batch_size"].astype("Int64")
    return table


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def provenance(params_path: Path, params: dict, by_set: dict[str, list[Path]], report_dir: Path) -> dict:
    """What the report's numbers rest on: code, data and params versions, wall time, machines, and how
    much of each set is done."""
    metrics = [load_record(p) for paths in by_set.values() for p in paths]
    declared = pd.Series([run.experiment_set for run in expand_runs(params)]).value_counts()
    machines_path = report_dir / "machines.json"
    machines = json.loads(machines_path.read_text()) if machines_path.exists() else {}

    def distinct(get):
        return sorted({str(get(m)) for m in metrics})

    train_s = sum(h["seconds"] for m in metrics for h in m["history"])
    walls = [v["job_wall_s"] for v in machines.values() if v.get("job_wall_s") is not None]
    return {
        "params_file": _relative(params_path),
        "params_sha256": hashlib.sha256(Path(params_path).read_bytes()).hexdigest(),
        "runs": {name: {"done": len(by_set.get(name, [])), "declared": int(declared[name]),
                        "job_wall_hours": round(sum(v["job_wall_s"] or 0 for k, v in machines.items()
                                                    if k.split("/")[0] == name) / 3600, 3)}
                 for name in params["experiment_sets"]},
        "git_commits": distinct(lambda m: m["provenance"].get("git_commit")),
        "git_dirty": distinct(lambda m: m["provenance"].get("git_dirty")),
        "data_versions": distinct(lambda m: m["provenance"].get("data_version")),
        "dvc_hashes": distinct(lambda m: m["provenance"].get("dvc_hash")),
        "torch_versions": distinct(lambda m: m["provenance"].get("torch_version")),
        "devices": distinct(lambda m: m["provenance"].get("device")),
        "machines": sorted({v["machine"] for v in machines.values()}),
        "training_hours": round(train_s / 3600, 3),
        "job_wall_hours": round(sum(walls) / 3600, 3),
        "jobs_with_wall_time": len(walls),
    }


def readings_table(params: dict, audit: pd.DataFrame) -> str | None:
    """Per paper-table cell that has runs under more than one protocol reading: the paper's value and ours
    under each reading (mean ± sd, n, verdict), then each reading's source. None without readings."""
    if not params["readings"] and not params["noisynn_protocols"]:
        return None
    sources = audit_set_info(params)["readings"]  # the NoisyNN protocols too, and what `ours` means for NoisyNN
    # each source once, in audit.md: the front page names them, so it stays within its size
    key = ("Readings declared: " + ", ".join(f"`{name}`" for name in sources)
           + "; each one's source: [audit.md](audit.md#readings-and-their-sources).")
    numbers = audit[(audit["table"] != "effects") & (audit["verdict"] != "not run")]
    counts = numbers.groupby(["table", "row", "column"])["reading"].nunique()
    several = counts[counts > 1].index
    if not len(several):
        return "No paper-table cell has runs under a second reading yet.\n\n" + key
    keyed = numbers.set_index(["table", "row", "column"]).loc[several].reset_index()
    keyed["ours"] = [f"{m:.2f} ± {sd:.2f} (n={n}) {v}" if n >= 2 else f"{m:.2f} (n={n}) {v}"
                     for m, sd, n, v in zip(keyed["mean"], keyed["std"], keyed["n"], keyed["verdict"])]
    table = keyed.pivot_table(index=["table", "row", "column", "paper"], columns="reading", values="ours",
                              aggfunc="first").reset_index()
    return "\n\n".join([table.fillna("no runs").to_markdown(index=False), nearest_baselines(keyed), key])


def nearest_baselines(keyed: pd.DataFrame) -> str:
    """Per dataset/model column, the reading whose baseline mean lies nearest the paper's baseline, and
    the readings whose baseline verdict is `reproduced` (a distance is a description; the verdict decides)."""
    base = keyed[keyed["row"] == "baseline"].drop_duplicates(["column", "reading"])
    lines = []
    for column, cell in base.groupby("column"):
        nearest = cell.loc[(cell["mean"] - cell["paper"]).abs().idxmin()]
        reproduced = ", ".join(f"`{r}`" for r in sorted(cell.loc[cell["verdict"] == "reproduced", "reading"]))
        lines.append(f"- {column}: paper {nearest['paper']:.2f}; nearest under `{nearest['reading']}`, "
                     f"{nearest['mean']:.2f} ({nearest['mean'] - nearest['paper']:+.2f}, n={nearest['n']}) of "
                     f"{len(cell)} readings; `reproduced` under {reproduced or 'none'}")
    if not lines:
        return "No baseline row has runs under a second reading yet."
    return "The baseline rows, reading by reading:\n\n" + "\n".join(lines)


def index_markdown(params_path: Path, params: dict, prov: dict, report_dir: Path, audit: pd.DataFrame,
                   claim_table: str) -> str:
    """The report's front page: every claim with its verdict per reading and a link to its page, the
    scoreboard, the readings, the specification curve, how far each set is, what the numbers rest on, and
    links to every set table and figure."""
    status = pd.DataFrame(prov["runs"]).T.rename_axis("set").reset_index()
    board = audit["verdict"].value_counts().rename_axis("verdict").reset_index(name="claims")
    readings = readings_table(params, audit)
    spec_curve = report_dir / "figures" / "specification_curve.png"
    sets = [f"[{table.stem}](tables/{table.name})" for table in set_tables(report_dir)]
    parts = [f"# Reproduction report: {_relative(params_path)}",
             "Rebuilt from the `metrics.json` files under `runs/` by "
             f"`python -m pipeline_src report --params {_relative(params_path)} --out <this folder>`. "
             "The rules every verdict follows, every cell and every departure: [audit.md](audit.md).",
             "## Claims",
             "One row per claim of `params/claims.yaml`: a table of published numbers (its cells' verdicts "
             "counted per protocol reading) or an effect claim (its verdict per reading). Each links to its "
             "page: cells, per-seed values, figures, departures and runs.",
             claim_table,
             "## Verdicts so far", board.to_markdown(index=False),
             *(["## The paper's numbers under each protocol reading", readings] if readings else []),
             *(["## Specification curve", "![specification curve](figures/specification_curve.png)"]
               if spec_curve.exists() else []),
             "## Runs done", status.to_markdown(index=False),
             *(["## Left out, and why", "\n".join(f"- {what}: {why}" for what, why in params["left_out"].items())]
               if params["left_out"] else []),
             "## What the numbers rest on",
             "\n".join(f"- {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
                       for key, value in prov.items() if key != "runs"),
             "## Set tables and figures",
             (f"Each with its csv and figures in [tables/README.md](tables/README.md): {', '.join(sets)}."
              if sets else "None.")]
    return "\n\n".join(parts) + "\n"


def set_tables(report_dir: Path) -> list[Path]:
    """The per-set tables (the paper tables have their claim pages, and README.md is the list itself)."""
    return [table for table in sorted((report_dir / "tables").glob("*.md"))
            if not table.name.startswith("paper_") and table.name != "README.md"]


def tables_markdown(report_dir: Path, params: dict) -> str:
    """tables/README.md: every set table with what it holds, its csv and figures, grouped by the kind of set
    that made it (the front page names the tables only, so it stays short as sets are added). A table of no
    one set (a proxy, the generator activity) is listed under `across sets` with its own title."""
    sets = params["experiment_sets"]
    seeds: dict[str, set] = {}
    for run in expand_runs(params):
        seeds.setdefault(run.experiment_set, set()).add(run.seed)
    def owner(stem: str) -> str | None:
        names = [name for name in sets if stem == name or stem.startswith(f"{name}_")]
        return max(names, key=len) if names else None

    def holds(stem: str, name: str | None, table: Path) -> str:
        if name is None:
            return table.read_text().split("\n", 1)[0].removeprefix("# ")
        spec = sets[name]
        labels = dict.fromkeys(m["label"] for m in spec["methods"])
        text = (f"{', '.join(spec['models'])} on {', '.join(spec['datasets'])}: {', '.join(labels)}"
                + (f"; readings {', '.join(spec['readings'])}" if spec.get("readings") else "")
                + f"; {len(seeds.get(name, ()))} seeds")
        return text + ("; by test protocol and test batch size" if stem != name else "")

    rows = []
    for table in set_tables(report_dir):
        name = owner(table.stem)
        figures = [f"[{label}](../figures/{table.stem}{suffix}.png)" for suffix, label in
                   (("", "figure"), ("_training", "training curves"))
                   if (report_dir / "figures" / f"{table.stem}{suffix}.png").exists()]
        rows.append((sets[name]["kind"] if name else "across sets",
                     f"| [{table.stem}]({table.name}) | {holds(table.stem, name, table).replace('|', '/')} | "
                     f"{', '.join([f'[csv]({table.stem}.csv)', *figures])} |"))
    order = list(dict.fromkeys([*(spec["kind"] for spec in sets.values()), "across sets"]))
    lines = []
    for group in sorted({kind for kind, _ in rows}, key=order.index):
        lines += [f"\n## {group}\n", "| table | what it holds | files |", "|---|---|---|",
                  *(row for kind, row in rows if kind == group)]
    return "# Set tables and figures\n" + ("\n".join(lines) or "\nNone.") + "\n"


def build(params_path: Path, report_dir: Path, results_dir: Path | None = None,
          claims: Path = CLAIMS, deviations: Path = DEVIATIONS) -> pd.DataFrame:
    """Collect (when results_dir is given), then rebuild every table, figure and the audit."""
    from pipeline_src.results.aggregate import SetFiles, aggregate_set, load_histories, load_runs
    from pipeline_src.results.audit import main_audit
    from pipeline_src.results.generator_activity import write_activity
    from pipeline_src.results.plots import plot_test_batch_study, plot_training_curves
    from pipeline_src.results.proxy import write_proxies

    params = load_params(params_path)
    report_dir = Path(report_dir)
    if results_dir is not None:
        done = collect(params, Path(results_dir), report_dir)
        print(f"collected {len(done.copied)} new runs from {results_dir}")
        if done.reproduced:
            print(f"{len(done.reproduced)} reruns there measured exactly the report's numbers; the report keeps "
                  f"its records: {', '.join(done.reproduced)}")
        if done.extended:
            print(f"{len(done.extended)} reruns there measured every number the report holds and more (a measure "
                  f"its records lack); the report takes the reruns: {', '.join(done.extended)}")
    by_set = run_metrics(params, report_dir)
    if not by_set:
        raise ValueError(f"no finished runs of {params_path} in {report_dir}/runs; run the DAG first, or pass --results")
    runs_csvs = []
    for name, paths in by_set.items():
        kind = params["experiment_sets"][name]["kind"]
        files = SetFiles.in_results(report_dir, name)
        aggregate_set(name, kind, paths, files)
        runs_csvs.append(files.runs)
        if kind in ("vpn_joint", "vpn_frozen"):
            plot_training_curves(name, load_histories(paths), report_dir / "figures" / f"{name}_training.png")
        if kind == "eval_protocol":
            long = load_runs(paths)
            if long["test_batch_size"].nunique() > 1:
                table = batch_size_table(long)
                write_atomic(report_dir / "tables" / f"{name}_test_batches.csv", table.to_csv(index=False, float_format="%.4f"))
                write_atomic(report_dir / "tables" / f"{name}_test_batches.md",
                             f"# {name}: top-1 (%) by test protocol and test batch size, mean ± sd over seeds\n\n"
                             + table.assign(test_batch_size=table["test_batch_size"].map(
                                 lambda v: "-" if pd.isna(v) else str(v))).to_markdown(index=False, floatfmt=".2f") + "\n")
                plot_test_batch_study(name, table, report_dir / "figures" / f"{name}_test_batches.png")
    audit = main_audit(claims, runs_csvs, audit_set_info(params), report_dir, deviations)
    # beside the audit, never in it: a claim's descriptive proxy (tables/<table>.csv and .md)
    write_proxies(claims, runs_csvs, audit_set_info(params), report_dir / "tables")
    write_activity(by_set, claims, report_dir / "tables", params["own_reading"])  # the numbers behind the generator gate, every reading
    # the pages quote the written tables, so a page rebuilt from the committed files is the same page
    cells = read_audit_table(report_dir / "effects_cells.csv")
    from pipeline_src.results.plots import plot_specification_curve

    plot_specification_curve(cells, report_dir / "figures" / "specification_curve.png")
    prov = provenance(params_path, params, by_set, report_dir)
    write_json(report_dir / "provenance.json", prov)
    write_pages(params_path, params, prov, report_dir, claims, deviations)
    return audit


def write_pages(params_path: Path, params: dict, prov: dict, report_dir: Path, claims: Path = CLAIMS,
                deviations: Path = DEVIATIONS) -> None:
    """From the written audit.csv, effects_cells.csv and tables: one page per claim under claims/, the
    report's README (its index) and the repository README's claim table of this report."""
    from pipeline_src.results.audit import load_claims, load_deviations
    from pipeline_src.results.claim_pages import claim_rows, claim_table, write_claim_pages

    audit, cells = (read_audit_table(report_dir / name) for name in ("audit.csv", "effects_cells.csv"))
    registry = load_claims(claims)
    write_claim_pages(report_dir, audit, cells, registry, load_deviations(deviations),
                      readings=audit_set_info(params)["readings"])
    rows = claim_rows(audit, cells, registry)
    write_atomic(report_dir / "tables" / "README.md",
                 tables_markdown(report_dir, params))
    write_atomic(report_dir / "README.md",
                 index_markdown(params_path, params, prov, report_dir, audit, claim_table(rows, "claims/")))
    update_readme_claims(report_dir, claim_table(rows, f"{_relative(report_dir)}/claims/"))


def read_audit_table(path: Path) -> pd.DataFrame:
    """audit.csv or effects_cells.csv as written: empty text stays '' (a reading), empty numbers NaN."""
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return table.assign(reading=table["reading"].fillna("")) if "reading" in table else table


CLAIMS_BEGIN = "<!-- claim table: {report} (written by the report command) -->"
CLAIMS_END = "<!-- /claim table -->"


def update_readme_claims(report_dir: Path, table: str, readme: Path = REPO_ROOT / "README.md") -> bool:
    """Rewrite the README's claim-table block of this report, if the README has one."""
    begin = CLAIMS_BEGIN.format(report=_relative(report_dir))
    text = readme.read_text() if readme.exists() else ""
    if begin not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(CLAIMS_END, 1)
    write_atomic(readme, f"{head}{begin}\n{table}\n{CLAIMS_END}{tail}")
    return True
