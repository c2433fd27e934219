"""The claims and deviations registries: params/claims.yaml read into claims (one number claim per
paper-table cell, the effect claims as written), params/deviations.yaml into numbered departures, and
which departures mark which audit line."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pandas as pd
import yaml

DEFAULT_READING = "declared"  # the schema's own_reading default: runs of a params file without readings
DEVIATION_KEYS = ("id", "what", "paper", "code", "ours", "why", "affects")


def min_seeds_by_scale(settings: dict) -> dict:
    """settings.min_seeds: one number, or {default: n, <scale>: n}; every value >= 2 (a t-interval needs 2)."""
    value = settings.get("min_seeds", 3)
    table = {"default": 3, **(value if isinstance(value, dict) else {"default": value})}
    bad = {scale: n for scale, n in table.items() if not isinstance(n, int) or n < 2}
    if bad:
        raise ValueError(f"settings.min_seeds: each value must be an integer >= 2; got {bad}")
    return table


def load_claims(path: Path) -> dict:
    """{'settings', 'tables': {name: spec}, 'effects': [spec]} from the registry YAML."""
    raw = yaml.safe_load(Path(path).read_text())
    tables, effects = {}, []
    for paper, section in raw.items():  # one section per paper, beside `settings`
        if paper == "settings":
            continue
        for name, spec in section.get("tables", {}).items():
            tables[name] = {"paper": paper, **spec}
        check = section.get("manipulation_check")
        if check:
            missing = [k for k in ("name", "reason", "generator_methods", "min_sigma_mean", "min_changed_share",
                                   "base_margin_points") if k not in check]
            if missing:
                raise ValueError(f"{paper}.manipulation_check lacks {', '.join(missing)}")
        effects += [{"paper": paper, **({"manipulation": check} if check and claim.get("manipulation", True) else {}),
                     **{k: v for k, v in claim.items() if k != "manipulation"}}
                    for claim in section.get("qualitative", [])]
    settings = {**raw["settings"], "min_seeds": min_seeds_by_scale(raw["settings"])}
    variance = settings.get("variance_min_seeds", settings["min_seeds"]["default"])
    if not isinstance(variance, int) or variance < 3:
        raise ValueError(f"settings.variance_min_seeds must be an integer >= 3; got {variance!r}")
    settings["variance_min_seeds"] = variance
    check_proxies(effects)
    return {"settings": settings, "tables": tables, "effects": effects}


PROXY_KEYS = {"table", "gain_of", "datasets", "reason"}


def check_proxies(effects: list[dict]) -> None:
    """A claim's `proxy` (a descriptive stand-in, results/proxy.py): its keys, two distinct datasets, and a
    gain_of claim that pairs on dataset, so no gain ever mixes the two datasets."""
    by_id = {claim["id"]: claim for claim in effects}
    for claim in effects:
        proxy = claim.get("proxy")
        if proxy is None:
            continue
        where = f"{claim['id']}.proxy"
        if not isinstance(proxy, dict) or set(proxy) != PROXY_KEYS:
            raise ValueError(f"{where}: needs exactly the keys {', '.join(sorted(PROXY_KEYS))}")
        datasets = proxy["datasets"]
        if not isinstance(datasets, dict) or set(datasets) != {"small", "large"} or datasets["small"] == datasets["large"]:
            raise ValueError(f"{where}.datasets: needs two different datasets, small and large; got {datasets!r}")
        source = by_id.get(proxy["gain_of"], {}).get("test", {})
        if source.get("type") != "paired" or "dataset" not in source.get("pair_on", []):
            raise ValueError(f"{where}.gain_of: {proxy['gain_of']!r} is no paired claim of this registry that pairs on dataset")
        if not str(proxy["table"]).isidentifier() or not str(proxy["reason"]).strip():
            raise ValueError(f"{where}: table must be a plain name and reason must say why")


def proxy_only_datasets(effects: list[dict]) -> set[str]:
    """The datasets that serve only a proxy (each proxy's small side): their runs answer the proxy's question
    and no claim's, so they never add cells to, or decide, a verdict (the audit drops them)."""
    return {claim["proxy"]["datasets"]["small"] for claim in effects if claim.get("proxy")}


def number_claims(tables: dict, default_tolerance: float = 1.0) -> list[dict]:
    """One claim per table cell, in the table's own row and column order."""
    claims = []
    for table, spec in tables.items():
        for row, values in spec["rows"].items():
            method, eval_mode = spec["row_map"][row]
            for column, value in zip(spec["columns"], values):
                claims.append({"claim_id": f"{spec['paper']}.{table}.{row}.{column}", "table": table,
                               "row": row, "column": column, "paper": value, "method": method,
                               "eval_mode": eval_mode, "kind": spec.get("row_kind", {}).get(row, spec["kind"]),
                               "metric": spec.get("metric", "top1"),
                               "tolerance": spec.get("tolerance", default_tolerance)})
    return claims


def load_deviations(path: Path) -> list[dict]:
    """The deviations registry, numbered D1, D2, ... in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deviations registry {path} not found (the audit marks the cells each "
                                "deviation affects; write it, or pass --deviations)")
    entries = (yaml.safe_load(path.read_text()) or {}).get("deviations") or []
    for i, entry in enumerate(entries, 1):
        missing = [key for key in DEVIATION_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{path}: deviation {i} ({entry.get('id', '?')}) lacks {', '.join(missing)}")
    ids = [entry["id"] for entry in entries]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: deviation ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return [{**entry, "marker": f"D{i}"} for i, entry in enumerate(entries, 1)]


def deviation_markers(audit: pd.DataFrame, deviations: list[dict], runs: pd.DataFrame) -> list[str]:
    """Per audit line, the markers (D1,D3) of the deviations whose `affects` patterns match its claim id and
    whose `when` holds: some evidence run has one of the listed values in each named column (a column the
    runs tables lack is no condition)."""
    marks = []
    for claim_id, evidence in zip(audit["claim_id"], audit["evidence"].fillna("")):
        evidence_runs = runs[runs["evidence"].isin(evidence.split())]
        hits = []
        for entry in deviations:
            if not any(fnmatch.fnmatchcase(claim_id, pattern) for pattern in entry["affects"]):
                continue
            when = {col: values for col, values in (entry.get("when") or {}).items() if col in runs.columns}
            if all(evidence_runs[col].astype(str).isin([str(v) for v in values]).any() for col, values in when.items()):
                hits.append(entry["marker"])
        marks.append(",".join(hits))
    return marks
