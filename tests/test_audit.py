"""The audit: verdicts on constructed cases, the claims registry's shape, rendered tables."""
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_src import audit
from pipeline_src.config import REPO_ROOT

CLAIMS = REPO_ROOT / "params" / "claims.yaml"
SHARED_CLAIMS = REPO_ROOT.parent / "shared" / "paper" / "claims.yaml"


# ---- number verdicts ----

def test_paper_value_inside_the_ci_is_reproduced():
    # mean 72, CI about +-12.7 with n = 2: 74.97 is 2.97 away (beyond tolerance) but inside the CI
    result = audit.number_verdict(74.97, [71.0, 73.0], "paper", tolerance=1.0)
    assert result["verdict"] == "reproduced"
    assert result["ci_low"] < 74.97 < result["ci_high"] and result["n"] == 2
    assert result["delta"] == pytest.approx(72.0 - 74.97)


def test_paper_value_outside_ci_and_tolerance_differs():
    result = audit.number_verdict(74.97, [60.0, 60.2, 59.9], "paper", tolerance=1.0)
    assert result["verdict"] == "differs" and result["ci_high"] < 74.97


def test_within_tolerance_is_reproduced_even_when_the_ci_misses():
    result = audit.number_verdict(74.97, [74.2, 74.21, 74.2], "paper", tolerance=1.0)
    assert result["ci_high"] < 74.97 and result["verdict"] == "reproduced"


def test_one_seed_decides_by_tolerance_and_says_so():
    close = audit.number_verdict(74.97, [74.5], "paper", tolerance=1.0)
    far = audit.number_verdict(74.97, [70.0], "paper", tolerance=1.0)
    assert (close["verdict"], far["verdict"]) == ("reproduced", "differs")
    assert np.isnan(close["ci_low"]) and np.isnan(close["std"]) and "tolerance" in close["note"]


def test_smoke_scale_is_never_a_reproduction_but_keeps_its_numbers():
    result = audit.number_verdict(74.97, [74.9, 75.0], "embedded_default", tolerance=1.0)
    assert result["verdict"] == "scale differs"
    assert result["mean"] == pytest.approx(74.95) and not np.isnan(result["ci_low"])


def test_no_runs_is_not_run():
    assert audit.number_verdict(74.97, [], "paper")["verdict"] == "not run"


# ---- effect verdicts ----

def test_paired_effect_supported_contradicted_inconclusive():
    control = np.array([50.0, 52.0, 51.0, 49.0])
    better = control + np.array([3.0, 3.2, 2.9, 3.1])
    up = audit.effect_verdict(better, control, "+")
    assert up["verdict"] == "supported" and up["p_value"] < 0.05 and up["mean"] > 0
    assert audit.effect_verdict(better, control, "-")["verdict"] == "contradicted"
    noisy = control + np.array([3.0, -3.0, 2.0, -2.5])
    assert audit.effect_verdict(noisy, control, "+")["verdict"] == "inconclusive"
    single = audit.effect_verdict([60.0], [50.0], "+")
    assert single["verdict"] == "inconclusive" and np.isnan(single["p_value"])
    assert audit.effect_verdict([], [], "+")["verdict"] == "not run"


def test_identical_pairs_are_inconclusive_not_an_error():
    assert audit.effect_verdict([50.0, 51.0], [50.0, 51.0], "+")["verdict"] == "inconclusive"


def test_equivalence_inside_outside_and_straddling_the_band():
    control = np.array([80.0, 81.0, 79.5, 80.5, 80.2])
    same = audit.equivalence_verdict(control + [0.1, -0.1, 0.05, 0.0, -0.05], control, tolerance=1.0)
    apart = audit.equivalence_verdict(control + [5.0, 5.2, 4.9, 5.1, 5.0], control, tolerance=1.0)
    unsure = audit.equivalence_verdict(control + [0.0, 2.0, -1.5, 1.0, 0.5], control, tolerance=1.0)
    assert (same["verdict"], apart["verdict"], unsure["verdict"]) == ("supported", "contradicted", "inconclusive")


# ---- the registry ----

def test_registry_shape_and_unique_ids():
    claims = audit.load_claims(CLAIMS)
    assert 0 < claims["settings"]["tolerance"] and claims["settings"]["alpha"] == 0.05
    for name, spec in claims["tables"].items():
        assert spec["paper"] in ("vpn", "noisynn") and spec["source"] and spec["kind"]
        for row, values in spec["rows"].items():
            assert len(values) == len(spec["columns"]), f"{name}.{row}"
            assert row in spec["row_map"], f"{name}.{row} has no (method, eval_mode)"
    ids = [c["claim_id"] for c in audit.number_claims(claims["tables"])] + [e["id"] for e in claims["effects"]]
    assert len(ids) == len(set(ids))
    assert {"noisynn.linear_helps", "noisynn.eval_protocol", "vpn.background", "vpn.improves"} <= set(ids)
    for effect in claims["effects"]:
        assert effect["source"] and effect["test"]["type"] and effect["test"]["kind"]


def test_row_mapping_follows_the_papers_protocols():
    tables = audit.load_claims(CLAIMS)["tables"]
    rows = tables["joint_fmnist_cifar10"]["row_map"]
    assert rows["vpn_dnn3"] == ["vpn_dnn3", "class_enumeration"]
    assert rows["vpn_dnn3_no_noise"] == ["vpn_dnn3", "no_noise"]
    assert rows["random_noise"] == ["random_noise", "no_noise"]
    assert tables["imagenet_headline"]["row_map"]["noisynn_optimal_q"] == ["linear_optimal_q", "noise_class_sorted"]


@pytest.mark.skipif(not SHARED_CLAIMS.exists(), reason="shared/paper/claims.yaml is not present")
def test_shipped_numbers_equal_the_shared_transcription():
    shared = yaml.safe_load(SHARED_CLAIMS.read_text())
    ours = yaml.safe_load(CLAIMS.read_text())
    for paper in ("vpn", "noisynn"):
        assert ours[paper]["paper"] == shared[paper]["paper"]
        assert set(ours[paper]["tables"]) == set(shared[paper]["tables"])
        for name, table in shared[paper]["tables"].items():
            assert ours[paper]["tables"][name]["columns"] == table["columns"]
            assert ours[paper]["tables"][name]["rows"] == table["rows"]
            assert ours[paper]["tables"][name]["source"] == table["source"]
        shared_claims = {c["id"]: c for c in shared[paper]["qualitative"]}
        our_claims = {c["id"]: c for c in ours[paper]["qualitative"]}
        for claim_id, claim in shared_claims.items():
            assert our_claims[claim_id]["claim"] == claim["claim"] and our_claims[claim_id]["source"] == claim["source"]


# ---- end to end on fixture runs ----

SET_INFO = {"vpn_joint": {"kind": "vpn_joint", "scale": "embedded_default"},
            "noisynn_main": {"kind": "noisynn_main", "scale": "paper"},
            "eval_protocol": {"kind": "eval_protocol", "scale": "paper"},
            "vpn_background": {"kind": "vpn_background", "scale": "paper"},
            "datasets": {"fmnist": "fashion-mnist", "imnet": "imagenet"},
            "models": {"sr": "sr", "vitb": "vit_base_patch16_224"}}


def runs_line(dataset, model, method, eval_mode, seed, top1, scale, **extra):
    return {"dataset": dataset, "model": model, "method": method, **extra, "eval_mode": eval_mode, "seed": seed,
            "top1": top1, "run_id": f"{dataset}-{model}-{method}-s{seed}", "train_noise": False,
            "mlflow_run_id": "", "scale": scale}


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    seeds = [0, 1, 2]
    vpn = [runs_line("fmnist", "sr", "baseline", "no_noise", s, 74.0 + s * 0.5, "embedded_default") for s in seeds]
    for s in seeds:
        vpn.append(runs_line("fmnist", "sr", "vpn_dnn3", "class_enumeration", s, 76.0 + s * 0.4, "embedded_default"))
        vpn.append(runs_line("fmnist", "sr", "vpn_dnn3", "no_noise", s, 76.05 + s * 0.4, "embedded_default"))
    main = [runs_line("imnet", "vitb", "baseline", "no_noise", s, 80.0 + s, "paper") for s in seeds]
    main += [runs_line("imnet", "vitb", "linear_optimal_q", "noise_class_sorted", s, 93.5 + 0.3 * s, "paper")
             for s in seeds]
    protocol = []
    for s in seeds:
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_class_sorted", s, 90.0 + s, "paper"))
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_shuffled", s, 70.0 + s * 1.1, "paper"))
    background = [{**runs_line("clutter", "dnn3", g, mode, s, 50.0, "paper"), "sigma_mean_background": 2.0,
                   "sigma_mean_object": 1.0, "bg_fg_sigma_ratio": 2.0 + 0.1 * s}
                  for g in ("vpn_dnn3", "vpn_resnet18") for s in seeds for mode in ("class_enumeration", "no_noise")]
    paths = []
    for name, lines in [("vpn_joint", vpn), ("noisynn_main", main), ("eval_protocol", protocol),
                        ("vpn_background", background)]:
        paths.append(folder / f"{name}_runs.csv")
        pd.DataFrame(lines).to_csv(paths[-1], index=False)
    out = tmp_path_factory.mktemp("results")
    return audit.main_audit(CLAIMS, paths, SET_INFO, out), out


def test_every_table_cell_and_effect_gets_one_audit_line(fixture_runs):
    result, out = fixture_runs
    claims = audit.load_claims(CLAIMS)
    assert len(result) == len(audit.number_claims(claims["tables"])) + len(claims["effects"])
    lines = result.set_index("claim_id")
    smoke = lines.loc["vpn.joint_fmnist_cifar10.baseline.fashion-mnist/sr"]
    assert smoke["verdict"] == "scale differs" and smoke["n"] == 3 and smoke["mean"] == pytest.approx(74.5)
    assert "vpn_joint/fmnist-sr-baseline-s0" in smoke["evidence"].split()
    headline = lines.loc["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_224"]
    assert headline["verdict"] == "reproduced" and headline["scale"] == "paper"
    assert lines.loc["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_384", "verdict"] == "not run"
    assert lines.loc["vpn.joint_tinyimagenet.baseline.tiny-imagenet/resnet18", "verdict"] == "not run"
    assert lines.loc["noisynn.eval_protocol", "verdict"] == "supported"
    assert lines.loc["vpn.background", "verdict"] == "supported"
    assert lines.loc["vpn.background", "n"] == 6  # one value per run, not per eval mode
    assert lines.loc["vpn.no_noise_at_test", "verdict"] == "supported"
    assert lines.loc["vpn.improves", "verdict"] == "supported"
    assert lines.loc["noisynn.linear_helps", "verdict"] == "supported"
    assert lines.loc["noisynn.dataset_scale", "verdict"] == "not run"
    assert lines.loc["noisynn.gaussian_hurts", "verdict"] == "not run"
    assert lines.loc["noisynn.linear_helps", "p_value"] < 0.05
    assert set(audit.AUDIT_COLUMNS) <= set(pd.read_csv(out / "audit.csv").columns)


def test_paper_tables_keep_the_layout_and_say_not_run(fixture_runs):
    _, out = fixture_runs
    spec = audit.load_claims(CLAIMS)["tables"]["joint_fmnist_cifar10"]
    table = pd.read_csv(out / "tables" / "paper_joint_fmnist_cifar10.csv", index_col=0)
    assert list(table.columns) == spec["columns"] and list(table.index) == list(spec["rows"])
    assert table.loc["baseline", "cifar10/vit"] == "79.91 vs not run"
    assert table.loc["baseline", "fashion-mnist/sr"].startswith("74.97 vs 74.50 ± 0.50 (n=3), Δ -0.47")
    assert "[embedded_default]" in table.loc["baseline", "fashion-mnist/sr"]
    assert not table.isna().any().any()
    markdown = (out / "tables" / "paper_joint_fmnist_cifar10.md").read_text()
    assert "scale: embedded_default" in markdown and "not run" in markdown
    tex = (out / "tables" / "paper_joint_fmnist_cifar10.tex").read_text()
    assert r"vpn\_dnn3\_no\_noise" in tex and r"$\pm$" in tex and r"embedded\_default" in tex
    assert "±" not in tex and "Δ" not in tex
    report = (out / "audit.md").read_text()
    assert report.index("Scoreboard") < report.index("Effect claims") < report.index("Paper tables")
    assert (out / "figures" / "audit.png").stat().st_size > 10_000


def test_layer_sweep_pairs_the_last_block_with_the_first(tmp_path):
    lines = [{**runs_line("digits", "vit", "linear_shift", "noise_shuffled", s, base + s, "paper", site=f"block:{b}"),
              "run_id": f"digits-vit-linear_shift-siteblock{b}-s{s}"}
             for s in range(3) for b, base in [(0, 60.0), (1, 65.0), (10, 70.0)]]
    runs = audit.load_runs([], {})
    runs = pd.concat([runs, pd.DataFrame(lines).assign(set="layer_sweep", kind="layer_sweep",
                                                       evidence="x", dataset_paper="digits", model_paper="vit")])
    claim = next(c for c in audit.load_claims(CLAIMS)["effects"] if c["id"] == "noisynn.last_layer")
    line = audit.audit_effect(claim, runs, 1.0, 0.05)
    assert line["verdict"] == "supported" and line["mean"] == pytest.approx(10.0)


def test_no_runs_at_all_still_writes_every_output(tmp_path):
    result = audit.main_audit(CLAIMS, [], {}, tmp_path)
    assert set(result["verdict"]) == {"not run"}
    assert (tmp_path / "figures" / "audit.png").exists() and (tmp_path / "tables" / "paper_joint_imagenet.tex").exists()


def test_one_seed_cell_shows_no_spread():
    line = pd.Series({"paper": 74.97, "mean": 74.0, "std": np.nan, "n": 1, "delta": -0.97, "verdict": "reproduced",
                      "scale": "paper"})
    assert audit.cell_text(line) == "74.97 vs 74.00 (n=1), Δ -0.97"
