"""Gates: a cell of an effect claim counts only where the claimed mechanism is at work (the base model
above chance, the generator's noise active), from the runs' diagnostics and stored predictions."""
from __future__ import annotations

import fnmatch
import functools
from pathlib import Path

import pandas as pd

from pipeline_src.spec.predictions import load_predictions

@functools.lru_cache(maxsize=4096)
def _changed_share(path: str, treated: str, plain: str) -> float | None:
    """The share of test images whose prediction under `treated` differs from under `plain` (one run)."""
    preds, _ = load_predictions(Path(path))
    if treated not in preds or plain not in preds:
        return None
    return float((preds[treated] != preds[plain]).mean())


def generator_state(rows: pd.DataFrame, check: dict) -> dict:
    """One generator run (all its eval-mode lines): sigma_mean, the share of test predictions its noise
    changes, and whether it is active (either measure at its threshold), inert (both measured below) or
    unknown. Without predictions the share is bounded below by the accuracy gap of the two eval modes; a
    sigma of exactly 0 changes no prediction (the noise is sigma * z)."""
    treated, plain = check.get("eval_modes", ["class_enumeration", "no_noise"])
    sigma = rows["sigma_mean"].dropna() if "sigma_mean" in rows else pd.Series(dtype=float)
    sigma = float(sigma.iloc[0]) if len(sigma) else None
    path = next((p for p in rows["predictions"].fillna("") if p), "") if "predictions" in rows else ""
    share = _changed_share(path, treated, plain) if path else None
    measured = share is not None or sigma == 0.0
    if share is None and sigma == 0.0:
        share = 0.0
    if share is None:
        top1 = rows.groupby("eval_mode")["top1"].first()
        if treated in top1 and plain in top1:
            share = abs(top1[treated] - top1[plain]) / 100.0  # at least this many predictions moved
    active = ((sigma is not None and sigma >= check["min_sigma_mean"])
              or (share is not None and share >= check["min_changed_share"]))
    state = "active" if active else ("inert" if sigma is not None and measured else "unknown")
    return {"sigma": sigma, "share": share if measured else None, "state": state}


def _span(values, fmt) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "not recorded"
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} to {fmt(high)}"


def cell_gate(evidence: list[str], runs: pd.DataFrame, check: dict | None, settings: dict,
              dataset: str | None) -> dict:
    """The gates of one cell (its runs named by evidence), in order: base at chance, then the generator
    inert, then no manipulation data. `gate` is '' when the cell passes every one, else the reason it reads
    `not applicable (...)`; `manipulation` the outcome with its numbers. No declared check: no gate."""
    if not check:
        return {"gate": "", "manipulation_check": "", "manipulation": ""}
    mine = runs[runs["evidence"].isin(evidence)]
    classes = (settings.get("num_classes") or {}).get(dataset)
    outcome = []
    gate = ""
    base = mine[mine["eval_mode"] == check.get("base_eval_mode", "no_noise")]
    if classes:
        floor = 100.0 / classes + check["base_margin_points"]
        means = base.groupby(["set", "config"], sort=False)["top1"].mean()
        low = means[means < floor]
        outcome.append(f"base (no noise) {_span(list(means), lambda v: f'{v:.2f}')} against chance + "
                       f"{check['base_margin_points']:g} = {floor:.2f}")
        if len(low):
            gate = "base at chance"
    else:
        outcome.append(f"chance level unknown: settings.num_classes names no {dataset}")
    generators = mine[mine["method"].map(lambda m: any(fnmatch.fnmatchcase(str(m), p)
                                                       for p in check["generator_methods"]))]
    states = [generator_state(rows, check) for _, rows in generators.groupby("evidence", sort=True)]
    if states:
        count = {k: sum(s["state"] == k for s in states) for k in ("active", "inert", "unknown")}
        outcome.append(f"generator active in {count['active']} of {len(states)} runs"
                       + (f", inert in {count['inert']}" if count["inert"] else "")
                       + (f", without data in {count['unknown']}" if count["unknown"] else "")
                       + f"; sigma_mean {_span([s['sigma'] for s in states], lambda v: f'{v:.2g}')}"
                       + f"; predictions changed {_span([s['share'] for s in states], lambda v: f'{100 * v:.2f}%')}")
        if not gate and count["inert"]:
            gate = "generator inert"
        elif not gate and count["unknown"]:
            gate = "no manipulation data"
    return {"gate": gate, "manipulation_check": check["name"],
            "manipulation": ("not applicable: " if gate else "passes: ") + "; ".join(outcome)}
