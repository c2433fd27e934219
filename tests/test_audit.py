"""The audit: verdict rules on constructed cases, the claims registry's shape, deviations, rendered tables."""
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_src import audit, audit_pages, verdicts
from pipeline_src.__main__ import main as cli
from pipeline_src.config import REPO_ROOT

CLAIMS = REPO_ROOT / "params" / "claims.yaml"
SHARED_CLAIMS = REPO_ROOT.parent / "shared" / "paper" / "claims.yaml"
SETTINGS = {"alpha": 0.05, "tolerance": 1.0, "min_seeds": {"default": 3, "paper": 5}}
SEEDS = [0, 1, 2, 3, 4]


# ---- number verdicts: the band rule ----

def test_a_wide_interval_is_never_a_reproduction():
    # the old rule called this reproduced: 93 lies inside the (huge) n = 2 interval, though delta = -8
    assert audit.number_verdict(93.0, [80.0, 90.0], "paper", tolerance=1.0)["verdict"] == "too few seeds"
    wide = audit.number_verdict(93.0, [80.0, 90.0], "paper", tolerance=1.0, min_seeds=2)
    assert wide["ci_low"] < 93.0 < wide["ci_high"] and wide["verdict"] == "inconclusive"


@pytest.mark.parametrize("interval, position", [
    ((92.0, 94.0), "inside"),      # touching both edges from inside
    ((92.5, 93.5), "inside"),
    ((94.0, 95.0), "overlaps"),    # touching the upper edge from outside: one shared point, not wholly outside
    ((91.0, 92.0), "overlaps"),
    ((94.01, 95.0), "above"),
    ((90.0, 91.99), "below"),
    ((91.0, 95.0), "overlaps"),    # straddling both edges
])
def test_band_position_at_its_edges(interval, position):
    assert verdicts.band_position(*interval, 92.0, 94.0) == position


def test_number_verdict_inside_above_below_straddling():
    tight = np.array([-0.1, 0.0, 0.1, 0.05, -0.05])
    assert audit.number_verdict(80.0, 80.0 + tight, "paper")["verdict"] == "reproduced"
    assert audit.number_verdict(80.0, 83.0 + tight, "paper")["verdict"] == "differs (higher)"
    assert audit.number_verdict(80.0, 77.0 + tight, "paper")["verdict"] == "differs (lower)"
    straddling = audit.number_verdict(80.0, 81.0 + tight, "paper")
    assert straddling["ci_low"] < 81.0 < straddling["ci_high"] and straddling["verdict"] == "inconclusive"
    # mean within the tolerance is not enough: the interval must lie inside the band
    noisy = audit.number_verdict(80.0, [79.0, 81.5, 78.6, 81.2, 80.1], "paper")
    assert abs(noisy["delta"]) < 1.0 and noisy["verdict"] == "inconclusive"


def test_too_few_seeds_keeps_the_numbers_and_says_how_many():
    one = audit.number_verdict(74.97, [74.5], "paper")
    assert one["verdict"] == "too few seeds" and one["mean"] == 74.5 and np.isnan(one["ci_low"])
    four = audit.number_verdict(74.97, [74.9, 75.0, 74.95, 75.05], "paper", min_seeds=5)
    assert four["verdict"] == "too few seeds" and "4 < 5" in four["note"]


def test_smoke_scale_is_never_a_reproduction_but_keeps_its_numbers():
    result = audit.number_verdict(74.97, [74.9, 75.0, 74.95], "embedded_default", tolerance=1.0)
    assert result["verdict"] == "scale differs"
    assert result["mean"] == pytest.approx(74.95) and not np.isnan(result["ci_low"])


def test_no_runs_is_not_run():
    assert audit.number_verdict(74.97, [], "paper")["verdict"] == "not run"


# ---- Holm ----

def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    adjusted = verdicts.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adjusted < 0.05) == [True, False, False, True]  # raw 0.04 and 0.03 no longer pass
    with_gap = verdicts.holm([0.01, np.nan, 0.04, 0.9])  # NaN: no hypothesis, not counted in m = 3
    assert np.isnan(with_gap[1]) and with_gap[[0, 2, 3]] == pytest.approx([0.03, 0.08, 0.9])


# ---- effect claims on constructed runs ----

def run_line(dataset, model, method, eval_mode, seed, top1, scale="paper", kind="k", config=None):
    config = config or method
    return {"set": kind, "kind": kind, "dataset": dataset, "model": model, "method": method, "eval_mode": eval_mode,
            "seed": seed, "top1": top1, "run_id": f"{dataset}-{model}-{config}-s{seed}", "scale": scale,
            "dataset_paper": dataset, "model_paper": model, "evidence": f"{kind}/{dataset}-{model}-{config}-s{seed}",
            "config": config}


def paired_claim(claim_id="c", sign="+", test_type="paired", **test):
    return {"id": claim_id, "claim": "", "test": {"type": test_type, "kind": "k", "expected_sign": sign,
                                                   "treatment": {"methods": ["noisy*"], "eval_modes": ["noise"]},
                                                   "control": {"methods": ["clean"], "eval_modes": ["none"]},
                                                   **test}}


def two_sides(diffs, model="m", scale="paper", method="noisy", base=None):
    base = base if base is not None else [70.0 + s for s in range(len(diffs))]
    return ([run_line("d", model, "clean", "none", s, b, scale) for s, b in enumerate(base)]
            + [run_line("d", model, method, "noise", s, b + d, scale) for s, (b, d) in enumerate(zip(base, diffs))])


def effects(lines, claims, settings=SETTINGS):
    runs = pd.DataFrame(lines) if len(lines) else audit.load_runs([], {})
    frame, cells = audit.audit_effects(claims, runs, settings)
    return frame.set_index("claim_id"), cells


def test_two_seeds_of_a_clear_difference_are_too_few():
    # a paired t-test gives p = 0.003 here: two seeds cannot support anything
    line = effects(two_sides([10.0, 10.1]), [paired_claim()])[0].loc["c"]
    assert line["verdict"] == "too few seeds" and np.isnan(line["p_value"]) and line["mean"] == pytest.approx(10.05)


def test_a_smoke_scale_effect_is_never_supported():
    line = effects(two_sides([3.0, 3.2, 2.9, 3.1, 3.0], scale="embedded_default"), [paired_claim()])[0].loc["c"]
    assert line["verdict"] == "smoke scale" and line["p_value"] < 0.001 and line["mean"] == pytest.approx(3.04)


def test_paper_scale_effect_supported_contradicted_inconclusive():
    clear = two_sides([3.0, 3.2, 2.9, 3.1, 3.0])
    assert effects(clear, [paired_claim()])[0].loc["c", "verdict"] == "supported"
    assert effects(clear, [paired_claim(sign="-")])[0].loc["c", "verdict"] == "contradicted"
    noisy = two_sides([3.0, -3.0, 2.0, -2.5, 0.1])
    assert effects(noisy, [paired_claim()])[0].loc["c", "verdict"] == "inconclusive"
    assert effects([], [paired_claim()])[0].loc["c", "verdict"] == "not run"


def test_effect_verdicts_use_the_holm_adjusted_p():
    runs = two_sides([1.0, 2.5, 0.6, 1.8, 0.8])  # paired t-test p = 0.019
    alone = effects(runs, [paired_claim("a")])[0]
    assert alone.loc["a", "verdict"] == "supported" and alone.loc["a", "p_holm"] == pytest.approx(0.0194, abs=1e-4)
    three = effects(runs, [paired_claim(name) for name in "abc"])[0]
    assert three["p_holm"].tolist() == pytest.approx([3 * 0.019419] * 3, abs=1e-4)
    assert set(three["verdict"]) == {"inconclusive"}


def test_cells_keep_models_apart_and_seeds_count_once():
    # model a gains 5 points, model b loses 5: two cells, never one pooled test of ten pairs
    runs = two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([-5.0, -5.1, -4.9, -5.0, -5.2], model="b")
    line, cells = effects(runs, [paired_claim()])
    assert list(cells["model"]) == ["a", "b"] and cells["n"].tolist() == [5, 5]
    assert cells["mean"].tolist() == pytest.approx([5.04, -5.04])
    assert line.loc["c", "n"] == 5 and line.loc["c", "cells"] == "2/2"  # seeds, not pairs
    # a cell short of seeds is listed but does not count: the claim rests on model a alone
    short = two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([-5.0, -5.1, -4.9], model="b")
    line, cells = effects(short, [paired_claim()])
    assert cells["counts"].tolist() == [True, False]
    assert line.loc["c", "mean"] == pytest.approx(5.04) and line.loc["c", "verdict"] == "supported"
    # two noise methods against one baseline are two cells; the shared baseline seed counts once
    methods = two_sides([2.0, 2.1, 1.9, 2.0, 2.2]) + two_sides([4.0] * 5, method="noisy_q")[5:]
    line, cells = effects(methods, [paired_claim()])
    assert len(cells) == 2 and line.loc["c", "n"] == 5 and line.loc["c", "mean"] == pytest.approx(3.02)


def test_equivalence_inside_outside_and_straddling_the_band():
    def verdict(diffs, scale="paper"):
        return effects(two_sides(diffs, scale=scale), [paired_claim(test_type="equivalence")])[0].loc["c", "verdict"]
    assert verdict([0.1, -0.1, 0.05, 0.0, -0.05]) == "supported"
    assert verdict([5.0, 5.2, 4.9, 5.1, 5.0]) == "contradicted"
    assert verdict([0.0, 2.0, -1.5, 1.0, 0.5]) == "inconclusive"
    assert verdict([0.1, -0.1]) == "too few seeds"
    assert verdict([0.1, -0.1, 0.05, 0.0, -0.05], "embedded_default") == "smoke scale"
    line = effects(two_sides([12.0, 12.5, 11.8, 12.2, 12.1]),
                   [paired_claim(test_type="equivalence", band=[10, 15])])[0].loc["c"]
    assert line["verdict"] == "supported" and line["expected"] == "in [10, 15]" and np.isnan(line["p_holm"])


def test_seed_variance_compares_cells_seed_by_seed():
    steady = [run_line("d", "m", "vpn_dnn3", "ce", s, 80 + 0.1 * (-1) ** s) for s in range(8)]
    swinging = [run_line("d", "m", "vpn_resnet18", "ce", s, 80 + 3 * (-1) ** s + 0.5 * s) for s in range(8)]
    claim = {"id": "v", "claim": "", "test": {"type": "seed_variance", "kind": "k", "expected_sign": "+",
                                             "treatment": {"methods": ["vpn_resnet18"]},
                                             "control": {"methods": ["vpn_dnn3"]}}}
    line, cells = effects(steady + swinging, [claim])
    assert line.loc["v", "mean"] > 0 and line.loc["v", "verdict"] == "supported" and len(cells) == 1



def test_frozen_claims_pair_a_frozen_generator_with_its_joint_baseline():
    base = [80.0, 81.0, 79.0, 80.5, 79.5]
    runs = ([run_line("f", "sr", "baseline", "no_noise", s, b, kind="vpn_joint") for s, b in enumerate(base)]
            + [run_line("f", "sr", "vpn_dnn3", "class_enumeration", s, b + 1 + 2 * (-1) ** s, kind="vpn_joint")
               for s, b in enumerate(base)]
            + [run_line("f", "sr", "vpn_dnn3", "class_enumeration", s, b + 0.3 + 0.01 * s, kind="vpn_frozen")
               for s, b in enumerate(base)])
    registry = {e["id"]: e for e in audit.load_claims(CLAIMS)["effects"]}
    lines, cells = effects(runs, [registry["vpn.frozen_promotes"], registry["vpn.frozen_more_stable"]])
    promotes, stable = lines.loc["vpn.frozen_promotes"], lines.loc["vpn.frozen_more_stable"]
    assert promotes["verdict"] == "supported" and promotes["mean"] == pytest.approx(0.32) and promotes["n"] == 5
    assert stable["verdict"] == "supported" and stable["mean"] > 3  # log(var joint gain / var frozen gain)
    assert cells.set_index("claim_id").loc["vpn.frozen_more_stable", "dataset"] == "f"
    # the two gains read different sets, and the cell says which is which
    assert cells.set_index("claim_id").loc["vpn.frozen_more_stable", "cell"] == (
        "f/sr/vpn_dnn3: var vpn_joint: vpn_dnn3 [class_enumeration] - baseline [no_noise]"
        " vs var vpn_frozen: vpn_dnn3 [class_enumeration] - baseline [no_noise]")


def test_a_frozen_generator_that_changed_nothing_is_the_more_stable_side():
    base = [80.0, 81.0, 79.0, 80.5, 79.5]
    runs = ([run_line("f", "sr", "baseline", "no_noise", s, b, kind="vpn_joint") for s, b in enumerate(base)]
            + [run_line("f", "sr", "vpn_resnet18", "class_enumeration", s, b + 1 + 2 * (-1) ** s, kind="vpn_joint")
               for s, b in enumerate(base)]
            + [run_line("f", "sr", "vpn_resnet18", "class_enumeration", s, b, kind="vpn_frozen")  # sigma 0: the base
               for s, b in enumerate(base)])
    registry = {e["id"]: e for e in audit.load_claims(CLAIMS)["effects"]}
    lines, cells = effects(runs, [registry["vpn.frozen_promotes"], registry["vpn.frozen_more_stable"]])
    stable = lines.loc["vpn.frozen_more_stable"]
    assert stable["mean"] == np.inf and stable["verdict"] == "supported"  # var(frozen gain) = 0
    promotes = lines.loc["vpn.frozen_promotes"]
    assert (promotes["mean"], promotes["ci_low"], promotes["ci_high"]) == (0, 0, 0)
    assert promotes["verdict"] == "inconclusive"  # no change at all: nothing promoted


# ---- deviations ----

DEVIATIONS = {"deviations": [
    {"id": "test.always", "what": "applies to the headline", "paper": "not stated", "code": "batch 64 (main.py)",
     "ours": "batch 128", "why": "a test fixture", "affects": ["noisynn.imagenet_headline.*"]},
    {"id": "test.code_protocol", "what": "only runs of the authors' code protocol", "paper": "lr 0.001",
     "code": "lr 0.1", "ours": "both", "why": "fixture", "affects": ["vpn.joint_fmnist_cifar10.baseline.*"],
     "when": {"protocol": ["authors_code"]}},
    {"id": "test.paper_protocol", "what": "only paper-protocol runs", "paper": "lr 0.001", "code": "lr 0.1",
     "ours": "both", "why": "fixture", "affects": ["vpn.joint_fmnist_cifar10.baseline.*", "vpn.improves"],
     "when": {"protocol": ["paper"]}},
    {"id": "test.absent_column", "what": "a condition on a column no runs table has", "paper": "-", "code": "-",
     "ours": "-", "why": "fixture", "affects": ["noisynn.linear_helps"], "when": {"no_such_column": ["x"]}},
]}


@pytest.fixture(scope="module")
def deviations_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "deviations.yaml"
    path.write_text(yaml.safe_dump(DEVIATIONS, sort_keys=False))
    return path


def test_deviations_are_numbered_in_file_order_and_a_missing_registry_is_one_error(deviations_file, tmp_path,
                                                                                    capsys):
    assert [d["marker"] for d in audit.load_deviations(deviations_file)] == ["D1", "D2", "D3", "D4"]
    with pytest.raises(FileNotFoundError, match="deviations registry .* not found"):
        audit.load_deviations(tmp_path / "absent.yaml")
    status = cli(["audit", "--claims", str(CLAIMS), "--deviations", str(tmp_path / "absent.yaml"),
                  "--set-info", "{}", "--csv", "a.csv", "--cells", "c.csv", "--markdown", "a.md", "--figure", "a.png",
                  "--tables", "paper_x.csv"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "deviations registry" in err and "Traceback" not in err


# ---- the registry ----

def test_registry_shape_and_unique_ids():
    claims = audit.load_claims(CLAIMS)
    settings = claims["settings"]
    assert settings["alpha"] == 0.05 and settings["min_seeds"] == {"default": 3, "paper": 5}
    for name, spec in claims["tables"].items():
        assert spec["paper"] in ("vpn", "noisynn") and spec["source"] and spec["kind"]
        assert spec["tolerance"] > 0 and spec["tolerance_reason"], f"{name}: a tolerance and its reason"
        for row, values in spec["rows"].items():
            assert len(values) == len(spec["columns"]), f"{name}.{row}"
            assert row in spec["row_map"], f"{name}.{row} has no (method, eval_mode)"
    assert claims["tables"]["imagenet_headline_top5"]["metric"] == "top5"
    ids = [c["claim_id"] for c in audit.number_claims(claims["tables"])] + [e["id"] for e in claims["effects"]]
    assert len(ids) == len(set(ids))
    assert {"noisynn.linear_helps", "noisynn.sorted_vs_shuffled", "noisynn.sorted_vs_clean", "noisynn.resnet50_gain",
            "vpn.background", "vpn.improves", "vpn.improves_resnet18", "vpn.no_noise_benefits",
            "vpn.frozen_promotes", "vpn.frozen_more_stable", "vpn.dnn3_more_stable", "vpn.label_channel"} <= set(ids)
    assert "noisynn.eval_protocol" not in ids
    for effect in claims["effects"]:
        assert effect["source"] and effect["provenance"] in ("paper", "pipeline")
        assert effect["test"]["type"] in audit.EFFECT_TESTS and effect["test"]["kind"]


def test_batch_dependent_evaluation_never_decides_linear_helps():
    effects_by_id = {e["id"]: e["test"] for e in audit.load_claims(CLAIMS)["effects"]}
    assert effects_by_id["noisynn.linear_helps"]["treatment"]["eval_modes"] == ["noise_shuffled", "noise_single"]
    assert effects_by_id["noisynn.linear_helps_class_sorted"]["treatment"]["eval_modes"] == ["noise_class_sorted"]
    assert effects_by_id["vpn.frozen_promotes"]["control"]["kind"] == "vpn_joint"


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
        assert set(shared[paper]["tables"]) <= set(ours[paper]["tables"])
        for name, table in ours[paper]["tables"].items():  # a table of our own names its source outside shared/
            if name not in shared[paper]["tables"]:
                assert "README" in table["source"] and "github" in table["source"]
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
            "mlflow_run_id": "", "scale": scale, "protocol": "paper"}


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory, deviations_file):
    folder = tmp_path_factory.mktemp("tables")
    vpn = [runs_line("fmnist", "sr", "baseline", "no_noise", s, 74.0 + s * 0.5, "embedded_default") for s in range(3)]
    for s in range(3):
        vpn.append(runs_line("fmnist", "sr", "vpn_dnn3", "class_enumeration", s, 76.0 + s * 0.4, "embedded_default"))
        vpn.append(runs_line("fmnist", "sr", "vpn_dnn3", "no_noise", s, 76.05 + s * 0.4, "embedded_default"))
    wobble = [0.0, 0.05, -0.05, 0.02, -0.02]
    main = [runs_line("imnet", "vitb", "baseline", "no_noise", s, 80.0 + s, "paper") for s in SEEDS]
    for s in SEEDS:
        main.append(runs_line("imnet", "vitb", "linear_optimal_q", "noise_class_sorted", s, 93.85 + wobble[s], "paper",
                              top5=99.5))
        main.append(runs_line("imnet", "vitb", "linear_optimal_q", "noise_shuffled", s, 82.0 + s + wobble[s], "paper",
                              top5=97.0))
    protocol = []
    for s in SEEDS:
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_class_sorted", s, 90.0 + s, "paper"))
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_shuffled", s, 70.0 + s * 1.1, "paper"))
        protocol.append(runs_line("imnet", "vitb", "clean_train", "no_noise", s, 80.0 + s * 0.9, "paper"))
    background = [{**runs_line("clutter", "dnn3", g, mode, s, 50.0, "paper"), "sigma_mean_background": 2.0,
                   "sigma_mean_object": 1.0, "bg_fg_sigma_ratio": 2.0 + 0.1 * s}
                  for g in ("vpn_dnn3", "vpn_resnet18") for s in SEEDS for mode in ("class_enumeration", "no_noise")]
    paths = []
    for name, lines in [("vpn_joint", vpn), ("noisynn_main", main), ("eval_protocol", protocol),
                        ("vpn_background", background)]:
        paths.append(folder / f"{name}_runs.csv")
        pd.DataFrame(lines).to_csv(paths[-1], index=False)
    out = tmp_path_factory.mktemp("results")
    return audit.main_audit(CLAIMS, paths, SET_INFO, out, deviations_file), out


def test_every_table_cell_and_effect_gets_one_audit_line(fixture_runs):
    result, out = fixture_runs
    claims = audit.load_claims(CLAIMS)
    assert len(result) == len(audit.number_claims(claims["tables"])) + len(claims["effects"])
    lines = result.set_index("claim_id")
    smoke = lines.loc["vpn.joint_fmnist_cifar10.baseline.fashion-mnist/sr"]
    assert smoke["verdict"] == "scale differs" and smoke["n"] == 3 and smoke["mean"] == pytest.approx(74.5)
    assert "vpn_joint/fmnist-sr-baseline-s0" in smoke["evidence"].split()
    headline = lines.loc["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_224"]
    assert headline["verdict"] == "reproduced" and headline["scale"] == "paper" and headline["n"] == 5
    assert lines.loc["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_384", "verdict"] == "not run"
    assert lines.loc["vpn.joint_tinyimagenet.baseline.tiny-imagenet/resnet18", "verdict"] == "not run"
    top5 = lines.loc["noisynn.imagenet_headline_top5.noisynn_optimal_q.imagenet/vit_base_patch16_384"]
    assert top5["verdict"] == "not run" and top5["metric"] == "top5"
    assert lines.loc["noisynn.sorted_vs_shuffled", "verdict"] == "supported"
    assert lines.loc["noisynn.sorted_vs_clean", "verdict"] == "supported"
    assert lines.loc["vpn.background", "verdict"] == "supported"
    assert lines.loc["vpn.background", "n"] == 5 and lines.loc["vpn.background", "cells"] == "2/2"  # seeds, once each
    assert lines.loc["vpn.no_noise_at_test", "verdict"] == "smoke scale"
    assert lines.loc["vpn.improves", "verdict"] == "smoke scale"
    assert lines.loc["noisynn.linear_helps", "verdict"] == "supported"
    assert lines.loc["noisynn.linear_helps", "mean"] == pytest.approx(2.0)  # decided on shuffled batches
    assert lines.loc["noisynn.linear_helps_class_sorted", "mean"] == pytest.approx(11.85)
    assert lines.loc["noisynn.dataset_scale", "verdict"] == "not run"
    assert lines.loc["noisynn.gaussian_hurts", "verdict"] == "not run"
    tested = lines[lines["p_value"].notna()]
    assert len(tested) >= 5 and (tested["p_holm"] >= tested["p_value"]).all()
    written = pd.read_csv(out / "audit.csv")
    assert set(audit.AUDIT_COLUMNS) <= set(written.columns)
    cells = pd.read_csv(out / "effects_cells.csv")
    assert set(audit.CELL_COLUMNS) <= set(cells.columns)
    helps = cells[cells["claim_id"] == "noisynn.linear_helps"]
    assert len(helps) == 1 and helps["treatment"].iloc[0] == "linear_optimal_q [noise_shuffled]"


def test_deviation_markers_land_on_the_matching_cells_only(fixture_runs):
    result, out = fixture_runs
    marks = result.set_index("claim_id")["deviations"].fillna("")
    assert marks["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_224"] == "D1"
    assert marks["noisynn.imagenet_headline.noisynn_optimal_q.imagenet/vit_base_patch16_384"] == "D1"
    assert marks["noisynn.imagenet_headline_top5.noisynn_optimal_q.imagenet/vit_base_patch16_384"] == ""
    # D2 needs an authors_code run, D3 a paper-protocol run: the fixture's runs are all `paper`
    assert marks["vpn.joint_fmnist_cifar10.baseline.fashion-mnist/sr"] == "D3"
    assert marks["vpn.joint_fmnist_cifar10.baseline.cifar10/sr"] == ""  # no evidence run, so `when` fails
    assert marks["vpn.improves"] == "D3" and marks["vpn.improves_resnet18"] == ""
    assert marks["noisynn.linear_helps"] == "D4"  # a `when` column the runs lack is no condition
    assert (marks != "").sum() == 5
    table = pd.read_csv(out / "tables" / "paper_joint_fmnist_cifar10.csv", index_col=0)
    assert table.loc["baseline", "fashion-mnist/sr"].endswith("[embedded_default] [D3]")
    assert table.loc["random_rotation", "fashion-mnist/sr"] == "68.12 vs not run"
    report = (out / "audit.md").read_text()
    section = report.split("## Deviations from the papers and the authors' code")[1]
    assert "test.paper_protocol" in section and "batch 64 (main.py)" in section
    assert "| D3 " in section and "test.code_protocol" in section


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
    headings = ["Scoreboard", "Effect claims", "Effect claims per cell", "Paper tables",
                "Deviations from the papers and the authors' code"]
    positions = [report.index(f"## {heading}\n") for heading in headings]
    assert positions == sorted(positions)
    assert "paper scale 5" in report and "other scales 3" in report and "Holm-Bonferroni" in report
    assert "joint_imagenet ±0.5" in report and "alpha = 0.05" in report
    assert (out / "figures" / "audit.png").stat().st_size > 10_000


def test_layer_sweep_pairs_the_last_block_with_the_first():
    lines = [{**runs_line("digits", "vit", "linear_shift", "noise_shuffled", s, base + s, "paper", site=f"block:{b}"),
              "run_id": f"digits-vit-linear_shift-siteblock{b}-s{s}"}
             for s in SEEDS for b, base in [(0, 60.0), (1, 65.0), (10, 70.0)]]
    runs = audit.load_runs([], {})
    frame = pd.DataFrame(lines).assign(set="layer_sweep", kind="layer_sweep", dataset_paper="digits",
                                       model_paper="vit")
    frame["evidence"], frame["config"] = "layer_sweep/" + frame["run_id"], frame["run_id"].str[:-3]
    runs = pd.concat([runs, frame])
    claim = next(c for c in audit.load_claims(CLAIMS)["effects"] if c["id"] == "noisynn.last_layer")
    line = effects(runs, [claim])[0].loc["noisynn.last_layer"]
    assert line["verdict"] == "supported" and line["mean"] == pytest.approx(10.0)


def test_no_runs_at_all_still_writes_every_output(tmp_path, deviations_file):
    result = audit.main_audit(CLAIMS, [], {}, tmp_path, deviations_file)
    assert set(result["verdict"]) == {"not run"}
    assert (tmp_path / "figures" / "audit.png").exists() and (tmp_path / "tables" / "paper_joint_imagenet.tex").exists()
    assert (tmp_path / "effects_cells.csv").exists()


def test_one_seed_cell_shows_no_spread():
    line = pd.Series({"paper": 74.97, "mean": 74.0, "std": np.nan, "n": 1, "delta": -0.97, "verdict": "too few seeds",
                      "scale": "paper", "deviations": ""})
    assert audit_pages.cell_text(line) == "74.97 vs 74.00 (n=1), Δ -0.97"
