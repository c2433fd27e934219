"""A claim's descriptive proxy: noisynn.dataset_scale's Fashion-MNIST stand-in (the gain at 10% and at 100%
of the training set), computed as noisynn.linear_helps pairs its runs, written beside the claim, never its
verdict."""
import math

import pandas as pd
import pytest

from pipeline_src.results import audit, proxy
from pipeline_src.results.claim_pages import claim_rows, effect_page
from pipeline_src.results.claims import check_proxies
from pipeline_src.results.pages import audit_markdown
from pipeline_src.spec.config import REPO_ROOT

CLAIMS = REPO_ROOT / "params" / "claims.yaml"
SETTINGS = {"alpha": 0.05, "tolerance": 1.0, "min_seeds": {"default": 3, "paper": 5}, "variance_min_seeds": 3}
NOTE = "proxy (descriptive, not this claim's verdict): see tables/dataset_scale_proxy.md"
T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # the t quantiles of a 95% interval at 2 and 3 df


def line(set_name, dataset, model, label, eval_mode, seed, top1, noise="optimal_q", apply_at="test"):
    """One run line as the audit reads it, with what the run is (aggregate.method_traits) and its recipe:
    one recipe per dataset and model, as the recipe hash holds the dataset and the data version."""
    run_id = f"{dataset}-{model}-{label}-s{seed}"
    return {"set": set_name, "kind": "eval_protocol", "dataset": dataset, "model": model, "method": label,
            "eval_mode": eval_mode, "seed": seed, "top1": top1, "run_id": run_id, "scale": "paper",
            "dataset_paper": "fashion-mnist", "model_paper": model, "config": label,
            "evidence": f"{set_name}/{run_id}", "noise": noise, "apply_at": apply_at, "site": "default",
            "trained_clean": apply_at == "test", "recipe": f"{dataset}-{model}"}


def vit_lines():
    """The ViT trained clean, optimal Q switched on at test: on 100% (seeds 0-3) gains -1, -2, -3, -2;
    on 10% (seeds 0-2) gains -5, -5, -5."""
    lines = []
    for seed, gain in enumerate([-1.0, -2.0, -3.0, -2.0]):
        lines += [line("tb_vit", "fmnist", "vit6", "clean_train", "no_noise", seed, 90.0 + seed),
                  line("tb_vit", "fmnist", "vit6", "clean_train", "noise_shuffled", seed, 90.0 + seed + gain)]
    for seed in range(3):
        lines += [line("tb_vit_10pct", "fmnist_10pct", "vit6", "clean_train", "no_noise", seed, 80.0 - seed),
                  line("tb_vit_10pct", "fmnist_10pct", "vit6", "clean_train", "noise_shuffled", seed, 75.0 - seed)]
    return lines


def registry():
    claims = audit.load_claims(CLAIMS)
    return claims, {claim["id"]: claim for claim in claims["effects"]}


def test_the_gain_at_each_size_and_their_difference_are_paired_as_linear_helps_pairs_them():
    claims, by_id = registry()
    table = proxy.proxy_table(by_id["noisynn.dataset_scale"], by_id["noisynn.linear_helps"]["test"],
                              pd.DataFrame(vit_lines()), 0.05)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["model"], row["small"], row["large"]) == ("vit6", "fmnist_10pct", "fmnist")
    # the setting is named without its set, so the two sizes' sets meet
    assert (row["treatment"], row["control"]) == ("clean_train [noise_shuffled]", "clean_train [no_noise]")
    assert row["cell_small"].startswith("fmnist_10pct/vit6: tb_vit_10pct/clean_train")
    # 10%: -5 at every seed, no spread
    assert (row["n_small"], row["gain_small"]) == (3, pytest.approx(-5.0))
    assert row["ci_low_small"] == pytest.approx(-5.0) and row["ci_high_small"] == pytest.approx(-5.0)
    # 100%: -1, -2, -3, -2: mean -2, sd sqrt(2/3), 4 seeds
    half = T_975[3] * math.sqrt(2 / 3) / 2
    assert (row["n_large"], row["gain_large"]) == (4, pytest.approx(-2.0))
    assert (row["ci_low_large"], row["ci_high_large"]) == (pytest.approx(-2.0 - half), pytest.approx(-2.0 + half))
    # large - small over the seeds both have (0-2): 4, 3, 2: mean 3, sd 1
    half = T_975[2] * 1.0 / math.sqrt(3)
    assert (row["n_paired"], row["difference"]) == (3, pytest.approx(3.0))
    assert (row["ci_low_difference"], row["ci_high_difference"]) == (pytest.approx(3.0 - half),
                                                                      pytest.approx(3.0 + half))
    assert row["seeds_small"] == "s0 -5.00, s1 -5.00, s2 -5.00"


def test_a_10pct_treatment_is_never_paired_with_a_100pct_control():
    claims, by_id = registry()
    lines = []
    for seed in range(3):  # the authors' CNN condition at 10% has no clean model of its own dataset
        lines += [line("tb_resnet", "fmnist", "resnet", "clean_train", "no_noise", seed, 92.0),
                  line("tb_shift_10pct", "fmnist_10pct", "resnet", "shift_train", "noise_shuffled", seed, 85.0,
                       noise="circular_shift", apply_at="both")]
    runs = pd.DataFrame(lines)
    assert audit.audit_effects([by_id["noisynn.linear_helps"]], runs, SETTINGS)[1].empty
    table = proxy.proxy_table(by_id["noisynn.dataset_scale"], by_id["noisynn.linear_helps"]["test"], runs, 0.05)
    assert table.empty and list(table.columns) == proxy.COLUMNS


def test_the_claim_stays_not_run_and_its_row_page_and_audit_entry_point_to_the_proxy(tmp_path):
    claims, by_id = registry()
    effects = [by_id["noisynn.linear_helps"], by_id["noisynn.dataset_scale"]]
    frame, cells = audit.audit_effects(effects, pd.DataFrame(vit_lines()), SETTINGS)
    frame = frame.assign(deviations="")
    scale = frame.set_index("claim_id").loc["noisynn.dataset_scale"]
    assert scale["verdict"] == "not run" and NOTE not in str(scale["note"])  # a pointer, never the verdict
    text = audit_markdown(frame, cells, claims, [], [], 1, {})
    entry = next(row for row in text.splitlines() if row.startswith("| noisynn.dataset_scale"))
    assert "not run" in entry and NOTE in entry
    assert NOTE not in next(row for row in text.splitlines() if row.startswith("| noisynn.linear_helps "))
    rows = {row["claim"]: row for row in claim_rows(frame, cells, claims, paper={}, smoke={})}
    assert rows["noisynn.dataset_scale"]["verdict"] == f"not run: no params file declares its runs; {NOTE}"
    page = effect_page(by_id["noisynn.dataset_scale"], frame, cells, [], tmp_path, {})
    assert "## Proxy" in page and "[tables/dataset_scale_proxy.md](../tables/dataset_scale_proxy.md)" in page


def test_the_tables_rows_are_marked_proxy_and_a_proxy_without_runs_says_so(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    frame = pd.DataFrame(vit_lines())
    for name, part in frame.groupby("set"):  # runs tables as the aggregate job writes them
        part.drop(columns=["set", "evidence", "config", "dataset_paper", "model_paper"]).assign(
            experiment_set=name).to_csv(tables / f"{name}_runs.csv", index=False)
    csvs = sorted(tables.glob("*_runs.csv"))
    written = proxy.write_proxies(CLAIMS, csvs, {}, tables)
    assert written == [tables / "dataset_scale_proxy.csv", tables / "dataset_scale_proxy.md"]
    table = pd.read_csv(written[0])
    assert len(table) == 1 and (table["status"] == "proxy").all()
    assert table.loc[0, "difference"] == pytest.approx(3.0)
    md = written[1].read_text()
    assert md.startswith("# Proxy for noisynn.dataset_scale:") and "| proxy " in md and "3.00 (" in md
    # no runs at one size: the files are still written (the claim's link resolves), the page in one line
    only_large = [p for p in csvs if "10pct" not in p.name]
    proxy.write_proxies(CLAIMS, only_large, {}, tables)
    assert pd.read_csv(written[0]).empty
    assert written[1].read_text().split("\n\n")[1].startswith("No runs: no model and setting of noisynn.linear_helps")


def test_the_proxy_datasets_runs_serve_the_proxy_and_never_a_claim(tmp_path):
    """The 10% runs have clean_train cells like the 100% ones; the audit drops them (and the sets that run only
    on them from the family), so they cannot change linear_helps or the eval_protocol claims."""
    tables = tmp_path / "tables"
    tables.mkdir()
    frame = pd.DataFrame(vit_lines())
    for name, part in frame.groupby("set"):
        part.drop(columns=["set", "evidence", "config", "dataset_paper", "model_paper"]).assign(
            experiment_set=name).to_csv(tables / f"{name}_runs.csv", index=False)
    csvs = sorted(tables.glob("*_runs.csv"))
    method = {"label": "clean_train", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "test",
              "site": "default"}
    set_info = {name: {"kind": "eval_protocol", "scale": "paper", "readings": ["ours"], "datasets": [dataset],
                       "methods": ["clean_train"], "method_specs": [method]}
                for name, dataset in [("tb_vit", "fmnist"), ("tb_vit_10pct", "fmnist_10pct")]}
    set_info["datasets"] = {"fmnist": "fashion-mnist", "fmnist_10pct": "fashion-mnist"}
    set_info["models"] = {"vit6": "vit6"}
    deviations = tmp_path / "deviations.yaml"
    deviations.write_text("{}\n")
    audit.main_audit(CLAIMS, csvs, set_info, tmp_path / "audit", deviations)
    cells = pd.read_csv(tmp_path / "audit" / "effects_cells.csv")
    assert (cells["dataset"] == "fmnist").any() and not (cells["dataset"] == "fmnist_10pct").any()
    assert not cells["cell"].str.contains("10pct").any()
    assert len(pd.read_csv(proxy.write_proxies(CLAIMS, csvs, {}, tables)[0])) == 1  # the proxy still has them


@pytest.mark.parametrize("change, message", [
    ({"datasets": {"small": "fmnist", "large": "fmnist"}}, "two different datasets"),
    ({"gain_of": "across_datasets"}, "pairs on dataset"),  # its gain could pair a 10% run with a 100% one
    ({"gain_of": "vpn.frozen_more_stable"}, "no paired claim"),
    ({"reason": " "}, "reason must say why"),
    ({"extra": 1}, "needs exactly the keys"),
])
def test_a_proxy_is_checked_where_the_registry_is_loaded(change, message):
    claims, by_id = registry()
    check_proxies(claims["effects"])  # the registry's own passes
    helps = by_id["noisynn.linear_helps"]
    across = {**helps, "id": "across_datasets", "test": {**helps["test"], "pair_on": ["model", "seed"]}}
    bad = {**by_id["noisynn.dataset_scale"], "proxy": {**by_id["noisynn.dataset_scale"]["proxy"], **change}}
    effects = [bad if c["id"] == bad["id"] else c for c in claims["effects"]] + [across]
    with pytest.raises(ValueError, match=message):
        check_proxies(effects)
