"""How much noise each VPN generator made: per set, reading, dataset, model and generator, its mean sigma
during training (epoch 1, epoch 10 and the last epoch) and over the test set, the share of test predictions
its noise changed, and how many of its runs the manipulation check (params/claims.yaml) counts as active,
inert or without data. The numbers behind the audit's `generator inert` gate, one table for every reading:
tables/generator_activity.csv and .md. Descriptive: no verdict comes from here."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.results.claims import load_claims
from pipeline_src.results.gates import generator_state
from pipeline_src.spec.predictions import predictions_path
from pipeline_src.spec.run_record import load_record, method_as_run

GENERATOR_KINDS = ("vpn_joint", "vpn_frozen")
KEYS = ["experiment_set", "reading", "dataset", "model", "method"]
EPOCHS = (1, 10)  # besides the last: where a generator starts and whether it has moved by a quarter of 40


def manipulation_check(claims: Path) -> dict | None:
    """The declared check (the first claim section that has one), or None."""
    return next((c["manipulation"] for c in load_claims(claims)["effects"] if "manipulation" in c), None)


def run_activity(path: Path, check: dict, own_reading: str) -> dict | None:
    """One generator run's line: training sigma by epoch, test sigma, predictions changed, state. None for a
    run that trains no generator the check names. A run of no declared reading is the params' own one."""
    record = load_record(path)
    label = method_as_run(record)["label"]
    if record["set_kind"] not in GENERATOR_KINDS or not any(
            fnmatch.fnmatchcase(label, p) for p in check["generator_methods"]):
        return None
    sigma_by_epoch = {h["epoch"]: h.get("sigma_mean") for h in record["history"]}
    last = max(sigma_by_epoch, default=None)
    predictions = predictions_path(path)
    modes = pd.DataFrame({"eval_mode": list(record["evaluations"]), "top1": list(record["evaluations"].values()),
                          "sigma_mean": (record.get("diagnostics") or {}).get("sigma_mean"),
                          "predictions": str(predictions) if predictions.exists() else ""})
    state = generator_state(modes, check)
    return {"experiment_set": record["experiment_set"], "reading": record.get("reading") or own_reading,
            "dataset": record["dataset"], "model": record["model"], "method": label, "seed": record["seed"],
            **{f"sigma_epoch{e}": sigma_by_epoch.get(e) for e in EPOCHS},
            "last_epoch": last, "sigma_last_epoch": sigma_by_epoch.get(last),
            "sigma_test": state["sigma"], "changed_share": state["share"], "state": state["state"]}


def activity_table(by_set: dict[str, list[Path]], check: dict, own_reading: str) -> pd.DataFrame:
    """One line per set, reading, dataset, model and generator: seed means of the sigmas, the range of the
    share of predictions changed (%), and the runs per state."""
    runs = pd.DataFrame([line for paths in by_set.values() for p in paths
                         if (line := run_activity(p, check, own_reading)) is not None])
    if runs.empty:
        return runs
    sigmas = [f"sigma_epoch{e}" for e in EPOCHS] + ["sigma_last_epoch", "sigma_test"]
    grouped = runs.groupby(KEYS, sort=False)
    table = grouped.size().rename("runs").to_frame()
    table["last_epoch"] = grouped["last_epoch"].max()
    for column in sigmas:
        table[column] = grouped[column].mean()
    table["changed_min_pct"] = grouped["changed_share"].min() * 100
    table["changed_max_pct"] = grouped["changed_share"].max() * 100
    for state in ("active", "inert", "unknown"):
        table[state] = grouped["state"].agg(lambda s, state=state: int((s == state).sum()))
    return table.reset_index()


def write_activity(by_set: dict[str, list[Path]], claims: Path, tables: Path, own_reading: str) -> pd.DataFrame | None:
    """tables/generator_activity.csv and .md; nothing when no check is declared or no generator ran."""
    check = manipulation_check(claims)
    table = activity_table(by_set, check, own_reading) if check else pd.DataFrame()
    if table.empty:
        return None
    write_atomic(tables / "generator_activity.csv", table.to_csv(index=False, float_format="%.6g"))
    formats = [".2g" if c.startswith("sigma_") else ".2f" if c.endswith("_pct") else "g" for c in table.columns]
    head = (f"# Generator activity: how much noise each VPN generator made\n\n"
            f"Seed means of the generator's mean sigma (pixels in [0, 1]) in training epochs "
            f"{', '.join(map(str, EPOCHS))} and the last, and over the test set after training; the share of test "
            f"predictions its noise changes (class enumeration against no noise, lowest and highest run; blank where "
            f"no run stored predictions); and the runs the manipulation check "
            f"'{check['name']}' counts active (sigma at least {check['min_sigma_mean']:g} or at least "
            f"{100 * check['min_changed_share']:g}% of predictions changed), inert (both measured below) or "
            f"unknown (neither recorded). Rules: [audit.md](../audit.md).\n\n")
    write_atomic(tables / "generator_activity.md", head + table.astype(object).where(table.notna(), None).to_markdown(
        index=False, floatfmt=formats, missingval="not recorded") + "\n")
    return table
