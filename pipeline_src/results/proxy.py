"""A claim's proxy (params/claims.yaml `proxy`): where a report's runs cannot test a claim, the same question
asked of datasets it has, as a descriptive table beside the claim, tables/<table>.csv and .md, every row
marked `proxy`. Nothing here enters the audit: no verdict, no multiplicity family, no claim's cells.

For noisynn.dataset_scale: per model and treatment setting run on both datasets, the gain per seed
(treatment - paired control, exactly as the `gain_of` claim pairs them) on the small and on the large
dataset, each mean with its t-interval over seeds, and large - small paired by seed with its interval."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline_src.fileio import write_atomic
from pipeline_src.results.cell_tests import t_interval
from pipeline_src.results.claims import load_claims
from pipeline_src.results.selection import load_runs, paired_values
from pipeline_src.results.verdicts import join_scales

MARK = "proxy"  # the status of every row: a description, never a verdict
KEYS = ["model", "reading", "treatment", "control"]  # a setting matched across the two datasets
SMALL = ("n_small", "gain_small", "ci_low_small", "ci_high_small")
LARGE = ("n_large", "gain_large", "ci_low_large", "ci_high_large")
DIFFERENCE = ("n_paired", "difference", "ci_low_difference", "ci_high_difference")  # large - small, by seed
COLUMNS = ["status", "claim_id", *KEYS, "small", "large", *SMALL, "seeds_small", *LARGE, "seeds_large", *DIFFERENCE,
           "scale", "cell_small", "cell_large"]


def proxy_note(claim: dict) -> str:
    """What a claim's row, page and audit.md entry say of its proxy ('' for a claim without one)."""
    proxy = claim.get("proxy")
    return f"proxy (descriptive, not this claim's verdict): see tables/{proxy['table']}.md" if proxy else ""


def _without_set(label: str, evidence: str) -> str:
    """A side named without its set ('tb_vit/clean_train [no_noise]' -> 'clean_train [no_noise]'): the two
    datasets' runs come from different sets, so a setting is matched across them by what it is."""
    return label.removeprefix(evidence.split("/", 1)[0] + "/")


def _gains(gain_test: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """The gain per cell and seed as the gain_of claim pairs its runs; several runs of one cell and seed
    (the same setting in two sets) count as one seed, as in the audit."""
    pairs = paired_values(runs, gain_test)
    pairs = pairs.assign(
        treatment=[_without_set(t, e.split()[0]) for t, e in zip(pairs["treatment"], pairs["evidence"])],
        control=[_without_set(c, e.split()[-1]) for c, e in zip(pairs["control"], pairs["evidence"])])
    return pairs.groupby(["dataset", "cell", *KEYS, "seed"], sort=False).agg(
        value=("value", "mean"), scale=("scale", join_scales)).reset_index()


def _stats(values: pd.Series, alpha: float, names: tuple[str, str, str, str]) -> dict:
    """n, mean and the (1 - alpha) t-interval over seeds, under the four column names given."""
    mean, _, n, low, high = t_interval(values.to_numpy(), alpha)
    return dict(zip(names, (n, mean, low, high)))


def proxy_table(claim: dict, gain_test: dict, runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """One row per setting (KEYS) with runs on both datasets and per pair of cells holding it: the gain
    over seeds on each, and large - small over the seeds both have."""
    datasets = claim["proxy"]["datasets"]
    gains = _gains(gain_test, runs)
    rows = []
    small_cells = gains[gains["dataset"] == datasets["small"]].groupby(["cell", *KEYS], sort=False)
    large_cells = gains[gains["dataset"] == datasets["large"]].groupby(["cell", *KEYS], sort=False)
    for (cell_small, *key_small), small in small_cells:
        for (cell_large, *key_large), large in large_cells:
            if key_small != key_large:
                continue
            at_small = small.set_index("seed")["value"].sort_index()
            at_large = large.set_index("seed")["value"].sort_index()
            both = at_small.index.intersection(at_large.index)
            rows.append({"status": MARK, "claim_id": claim["id"], **dict(zip(KEYS, key_small)), **datasets,
                         **_stats(at_small, alpha, SMALL), "seeds_small": _seeds(at_small),
                         **_stats(at_large, alpha, LARGE), "seeds_large": _seeds(at_large),
                         **_stats(at_large[both] - at_small[both], alpha, DIFFERENCE),
                         "scale": join_scales([*small["scale"], *large["scale"]]),
                         "cell_small": cell_small, "cell_large": cell_large})
    return pd.DataFrame(rows, columns=COLUMNS)


def _seeds(values: pd.Series) -> str:
    return ", ".join(f"s{seed} {value:.2f}" for seed, value in values.items())


def _interval(mean: float, low: float, high: float, n: int) -> str:
    return f"{mean:.2f} ({low:.2f} to {high:.2f}), n={n}" if n >= 2 else f"{mean:.2f}, n={n}"


def proxy_markdown(claim: dict, table: pd.DataFrame, alpha: float) -> str:
    proxy, datasets = claim["proxy"], claim["proxy"]["datasets"]
    title = f"# Proxy for {claim['id']}: the gain on {datasets['small']} and {datasets['large']} (descriptive)"
    if table.empty:
        return (f"{title}\n\nNo runs: no model and setting of {proxy['gain_of']} has runs on both "
                f"{datasets['small']} and {datasets['large']} in this report.\n")
    level = f"{100 * (1 - alpha):g}%"
    shown = pd.DataFrame({
        "status": table["status"], "model": table["model"], "reading": table["reading"],
        "treatment": table["treatment"], "control": table["control"],
        f"gain on {datasets['small']}": [_interval(*v) for v in zip(
            table["gain_small"], table["ci_low_small"], table["ci_high_small"], table["n_small"])],
        f"gain on {datasets['large']}": [_interval(*v) for v in zip(
            table["gain_large"], table["ci_low_large"], table["ci_high_large"], table["n_large"])],
        "large - small": [_interval(*v) for v in zip(
            table["difference"], table["ci_low_difference"], table["ci_high_difference"], table["n_paired"])]})
    return "\n\n".join([
        title, f"{claim['claim']} Why a proxy: {' '.join(str(proxy['reason']).split())}",
        f"Gain: treatment - control per seed, paired as {proxy['gain_of']} pairs them (same dataset, model, "
        f"recipe and seed); mean ({level} t-interval over seeds, n seeds) on each dataset, and large - small "
        "over the seeds both have. Every row is marked `proxy`: it enters no verdict and no multiplicity "
        f"family, and {claim['id']} stays `not run` until its own datasets have runs. Per-seed values and the "
        f"cells of {proxy['gain_of']} behind each row: the csv beside this page.",
        shown.to_markdown(index=False)]) + "\n"


def write_proxies(claims_path: Path, runs_csvs: list[Path], set_info: dict, tables_dir: Path) -> list[Path]:
    """tables/<table>.csv and .md of every claim that declares a proxy; a proxy without runs on both
    datasets still gets both files (a header, and a one-line `No runs`), so its claim's link resolves."""
    registry = load_claims(claims_path)
    claims = [claim for claim in registry["effects"] if claim.get("proxy")]
    if not claims:
        return []
    by_id = {claim["id"]: claim for claim in registry["effects"]}
    runs = load_runs([Path(p) for p in runs_csvs], set_info)
    alpha = registry["settings"]["alpha"]
    written = []
    for claim in claims:
        table = proxy_table(claim, by_id[claim["proxy"]["gain_of"]]["test"], runs, alpha)
        csv, md = (Path(tables_dir) / f"{claim['proxy']['table']}.{ext}" for ext in ("csv", "md"))
        write_atomic(csv, table.to_csv(index=False, float_format="%.6g"))
        write_atomic(md, proxy_markdown(claim, table, alpha))
        written += [csv, md]
    return written
