"""The audit: verdict rules on constructed cases, the claims registry's shape, deviations, rendered tables."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_src.results import audit

from pipeline_src.results import pages as audit_pages

from pipeline_src.results import verdicts
from pipeline_src.__main__ import main as cli
from pipeline_src.spec.config import REPO_ROOT

CLAIMS = REPO_ROOT / "params" / "claims.yaml"
SHARED_CLAIMS = REPO_ROOT.parent / "shared" / "paper" / "claims.yaml"
PUBLISHED_CLAIMS = REPO_ROOT / "tests" / "data" / "published_claims.yaml"  # a byte copy of SHARED_CLAIMS
SETTINGS = {"alpha": 0.05, "tolerance": 1.0, "min_seeds": {"default": 3, "paper": 5}, "variance_min_seeds": 3}
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


def effects(lines, claims, settings=SETTINGS, family=None, tables=None):
    runs = pd.DataFrame(lines) if len(lines) else audit.load_runs([], {})
    frame, cells = audit.audit_effects(claims, runs, settings, family, tables)
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


def test_effect_verdicts_use_the_family_corrected_p():
    runs = two_sides([1.0, 2.5, 0.6, 1.8, 0.8])  # paired t-test p = 0.019
    alone = effects(runs, [paired_claim("a")])[0]
    assert alone.loc["a", "verdict"] == "supported" and alone.loc["a", "p_family"] == pytest.approx(0.0194, abs=1e-4)
    three = effects(runs, [paired_claim(name) for name in "abc"])[0]
    assert three["p_family"].tolist() == pytest.approx([3 * 0.019419] * 3, abs=1e-4)
    assert set(three["verdict"]) == {"inconclusive"}


def test_the_family_is_fixed_in_advance_so_runs_for_one_claim_do_not_move_another():
    runs = two_sides([1.0, 2.5, 0.6, 1.8, 0.8])  # p = 0.019
    family = {("a", "declared"), ("b", "declared")}
    alone = effects(runs, [paired_claim("a"), paired_claim("b", sign="-")], family=family)[0]
    # b has runs too but no data for b changes a: a declared claim without runs counts as p = 1
    other = two_sides([1.0, 2.5, 0.6, 1.8, 0.8]) + [
        {**line, "method": "noisy_b", "kind": "k2", "set": "k2"} for line in two_sides([9.0, 9.1, 8.9, 9.0, 9.2])]
    claim_b = {**paired_claim("b"), "test": {**paired_claim("b")["test"], "kind": "k2",
                                             "treatment": {"methods": ["noisy_b"], "eval_modes": ["noise"]}}}
    for b_runs in (runs, other):
        line = effects(b_runs, [paired_claim("a"), claim_b], family=family)[0].loc["a"]
        assert line["p_family"] == pytest.approx(2 * 0.019419, abs=1e-4) and line["verdict"] == "supported"
    assert alone.loc["a", "p_family"] == pytest.approx(2 * 0.019419, abs=1e-4)


def test_cells_that_disagree_in_sign_are_mixed_never_pooled():
    # review case: cell A [-1.0, -0.8, -1.2, -0.9, -1.1] and cell B [60, 58, 62, 59, 61]; the old pooled test
    # called this `supported` (29.5, CI 28.6 to 30.4)
    runs = two_sides([-1.0, -0.8, -1.2, -0.9, -1.1], model="a") + two_sides([60.0, 58.0, 62.0, 59.0, 61.0], model="b")
    line, cells = effects(runs, [paired_claim()])
    assert line.loc["c", "verdict"] == "mixed" and np.isnan(line.loc["c", "mean"])
    assert "below: d/a" in line.loc["c", "note"] and "above: d/b" in line.loc["c", "note"]
    assert cells.set_index("model")["verdict"].to_dict() == {"a": "contradicted", "b": "supported"}
    assert cells["mean"].tolist() == pytest.approx([-1.0, 60.0])
    # a clean +2 cell beside a collapse-like cell: the clean effect stays visible; the split cell gets an exact
    # test that 5 seeds cannot make decisive (p = 2/32), so it cannot make the claim mixed either
    runs = two_sides([2.0, 2.1, 1.9, 2.0, 2.2], model="a") + two_sides([-1.0, -52.0, -76.0, -8.0, -57.0], model="b")
    line, cells = effects(runs, [paired_claim()])
    assert line.loc["c", "verdict"] == "inconclusive"
    assert cells.set_index("model")["verdict"].to_dict() == {"a": "supported", "b": "inconclusive"}
    assert cells.set_index("model").loc["b", "split"] == "3 seeds near -61.7, 2 near -4.5"


def test_cells_keep_models_apart_and_seeds_pair_only_within_a_cell():
    # model a gains 5 points, model b 3: two cells, never one pooled test of ten pairs; every cell must hold
    runs = two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([3.0, 3.1, 2.9, 3.0, 3.2], model="b")
    line, cells = effects(runs, [paired_claim()])
    assert list(cells["model"]) == ["a", "b"] and cells["n"].tolist() == [5, 5]
    assert cells["mean"].tolist() == pytest.approx([5.04, 3.04])
    assert line.loc["c", "verdict"] == "supported" and line.loc["c", "cells"] == "2/2"
    assert line.loc["c", "p_value"] == pytest.approx(cells["p_value"].max())  # intersection-union
    assert np.isnan(line.loc["c", "mean"]) and 3.04 < line.loc["c", "pooled"] < 5.04  # descriptive only
    # a cell short of seeds is listed but does not count: the claim rests on model a alone
    short = two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([-5.0, -5.1, -4.9], model="b")
    line, cells = effects(short, [paired_claim()])
    assert cells["counts"].tolist() == [True, False] and cells["verdict"].tolist() == ["supported", "too few seeds"]
    assert line.loc["c", "mean"] == pytest.approx(5.04) and line.loc["c", "verdict"] == "supported"


def test_a_share_rule_needs_that_share_of_cells():
    three = (two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([3.0, 3.1, 2.9, 3.0, 3.2], model="b")
             + two_sides([0.3, -0.2, 0.1, -0.1, 0.0], model="c"))
    claim = paired_claim(holds_in={"share": 0.6, "reason": "most cases"})
    assert effects(three, [claim])[0].loc["c", "verdict"] == "supported"  # 2 of 3
    assert effects(three, [paired_claim()])[0].loc["c", "verdict"] == "inconclusive"  # all: c is not
    one_of_three = three[:10] + two_sides([0.2, -0.1, 0.0, 0.1, -0.2], model="b") + three[20:]
    assert effects(one_of_three, [claim])[0].loc["c", "verdict"] == "inconclusive"


def test_leaving_one_cell_out_names_the_cell_the_verdict_rests_on():
    runs = two_sides([5.0, 5.1, 4.9, 5.0, 5.2], model="a") + two_sides([0.3, -0.2, 0.1, -0.1, 0.0], model="b")
    line = effects(runs, [paired_claim()])[0].loc["c"]
    assert line["verdict"] == "inconclusive"
    assert line["sensitivity"] == "without d/b: noisy [noise] - clean [none]: supported"


def test_a_two_sided_hypothesis_names_the_direction_the_data_shows():
    # review case: a label-channel difference of about -5 in every seed read `contradicted` under "+"
    runs = two_sides([-5.0, -5.2, -4.8, -5.1, -4.9])
    assert effects(runs, [paired_claim(sign="±")])[0].loc["c", "verdict"] == "supported (lower)"
    assert effects(runs, [paired_claim(sign="+")])[0].loc["c", "verdict"] == "contradicted"
    assert effects(two_sides([5.0, 5.2, 4.8, 5.1, 4.9]), [paired_claim(sign="±")])[0].loc["c", "verdict"] == (
        "supported (higher)")


def test_an_interval_that_excludes_the_papers_effect_is_not_a_coin_flip():
    # review case: SR's vpn.improves, CI (-0.29, +0.09) against the paper's +1.37, read `inconclusive` like
    # a CI of (-39.8, +0.7)
    claim = paired_claim(paper_effect={"table": "t", "treatment": "{method}", "control": "base"})
    tables = {"t": {"columns": ["d/m"], "rows": {"noisy": [76.34], "base": [74.97]}}}
    narrow = two_sides([0.13, -0.21, -0.09, -0.26, -0.05])
    line, cells = effects(narrow, [claim], tables=tables)
    assert cells.loc[0, "paper_effect"] == pytest.approx(1.37)
    assert line.loc["c", "verdict"] == "short of the paper's effect"
    assert "allowing for the paper's seed spread and rounding" in line.loc["c", "note"]
    wide = two_sides([-1.18, -52.56, -75.99, -8.35, 0.6])
    assert effects(wide, [claim], tables=tables)[0].loc["c", "verdict"] == "inconclusive"
    # an effect beyond the paper's, or no paper effect declared, is never this verdict
    assert effects(two_sides([3.0, 3.2, 2.9, 3.1, 3.0]), [claim], tables=tables)[0].loc["c", "verdict"] == "supported"
    assert effects(narrow, [paired_claim()])[0].loc["c", "verdict"] == "inconclusive"


def test_equivalence_inside_outside_and_straddling_the_band():
    def verdict(diffs, scale="paper"):
        return effects(two_sides(diffs, scale=scale), [paired_claim(test_type="equivalence")])[0].loc["c", "verdict"]
    assert verdict([0.1, -0.1, 0.05, 0.0, -0.05]) == "supported"
    assert verdict([5.0, 5.2, 4.9, 5.1, 5.0]) == "contradicted (higher)"
    assert verdict([0.0, 2.0, -1.5, 1.0, 0.5]) == "inconclusive"
    assert verdict([0.1, -0.1]) == "too few seeds"
    assert verdict([0.1, -0.1, 0.05, 0.0, -0.05], "embedded_default") == "smoke scale"
    line = effects(two_sides([12.0, 12.5, 11.8, 12.2, 12.1]),
                   [paired_claim(test_type="equivalence", band=[10, 15])])[0].loc["c"]
    assert line["verdict"] == "supported" and line["expected"] == "in [10, 15]" and line["p_family"] < 0.05


def test_equivalence_is_per_cell_and_opposite_misses_are_mixed():
    # review case: cells at +3 and -3 pooled to CI (-0.02, 0.02), "supported, about the same"
    runs = (two_sides([3.0, 3.1, 2.9, 3.0, 3.0], model="a") + two_sides([-3.0, -3.1, -2.9, -3.0, -3.0], model="b"))
    line, cells = effects(runs, [paired_claim(test_type="equivalence")])
    assert line.loc["c", "verdict"] == "mixed"
    assert cells["verdict"].tolist() == ["contradicted (higher)", "contradicted (lower)"]
    assert line.loc["c", "p_family"] == pytest.approx(1.0)  # an equivalence claim is in the family too


def test_seed_variance_compares_cells_seed_by_seed():
    steady = [run_line("d", "m", "vpn_dnn3", "ce", s, 80 + 0.1 * (-1) ** s) for s in range(8)]
    swinging = [run_line("d", "m", "vpn_resnet18", "ce", s, 80 + 3 * (-1) ** s + 0.5 * s) for s in range(8)]
    claim = {"id": "v", "claim": "", "test": {"type": "seed_variance", "kind": "k", "expected_sign": "+",
                                             "treatment": {"methods": ["vpn_resnet18"]},
                                             "control": {"methods": ["vpn_dnn3"]}}}
    line, cells = effects(steady + swinging, [claim])
    assert line.loc["v", "mean"] > 0 and line.loc["v", "verdict"] == "supported" and len(cells) == 1
    # below variance_min_seeds the numbers stay and nothing is decided
    few = effects(steady + swinging, [claim], {**SETTINGS, "variance_min_seeds": 10})[0].loc["v"]
    assert few["verdict"] == "too few seeds" and few["note"] == "fewer than 10 seeds in every cell"


def test_a_side_constant_over_seeds_is_not_applicable():
    # review case: a generator that changed no prediction gave log ratio +inf, p = 1e-23, `supported`
    varying = [run_line("d", "m", "a", "ce", s, 80 + s * 0.7 % 2) for s in range(5)]
    constant = [run_line("d", "m", "b", "ce", s, 80.0) for s in range(5)]
    claim = {"id": "v", "claim": "", "test": {"type": "seed_variance", "kind": "k", "expected_sign": "+",
                                             "treatment": {"methods": ["a"]}, "control": {"methods": ["b"]}}}
    line, cells = effects(varying + constant, [claim])
    assert cells["verdict"].tolist() == ["not applicable"] and line.loc["v", "verdict"] == "not applicable"
    assert "the control is constant over seeds" in line.loc["v", "note"]


def _frozen_runs(base, joint, frozen, frozen_base=None):
    """frozen_base: each frozen run's own no-noise accuracy, its base as retrained for it (default: base)."""
    frozen_base = base if frozen_base is None else frozen_base
    active = {"sigma_mean": 0.05}  # every generator makes noise (the registry's manipulation check)
    return ([run_line("f", "sr", "baseline", "no_noise", s, b, kind="vpn_joint") for s, b in enumerate(base)]
            + [{**run_line("f", "sr", "vpn_dnn3", "class_enumeration", s, v, kind="vpn_joint"), **active}
               for s, v in enumerate(joint)]
            + [{**run_line("f", "sr", "vpn_dnn3", "class_enumeration", s, v, kind="vpn_frozen"), **active}
               for s, v in enumerate(frozen)]
            + [{**run_line("f", "sr", "vpn_dnn3", "no_noise", s, b, kind="vpn_frozen"), **active}
               for s, b in enumerate(frozen_base)])


def test_frozen_claims_pair_a_frozen_generator_with_its_own_base():
    base = [80.0, 81.0, 79.0, 80.5, 79.5]
    # seed 1's base was retrained elsewhere for its frozen run and scored 10.0: the baseline record must not
    # enter the frozen gain, which is one model with and without its generator
    frozen_base = [10.0 if s == 1 else b for s, b in enumerate(base)]
    runs = _frozen_runs(base, [b + 1 + 2 * (-1) ** s for s, b in enumerate(base)],
                        [b + 0.3 + 0.01 * s for s, b in enumerate(frozen_base)], frozen_base)
    registry = {e["id"]: e for e in audit.load_claims(CLAIMS)["effects"]}
    lines, cells = effects(runs, [registry["vpn.frozen_promotes"], registry["vpn.frozen_more_stable"]])
    promotes, stable = lines.loc["vpn.frozen_promotes"], lines.loc["vpn.frozen_more_stable"]
    assert promotes["verdict"] == "supported" and promotes["mean"] == pytest.approx(0.32) and promotes["n"] == 5
    # the frozen gain is held to the retraining noise a joint gain carries: base_s - base_(s+1), cyclic
    joint_gain = np.array([1 + 2 * (-1) ** s for s in range(5)])
    control = np.array([0.3 + 0.01 * s for s in range(5)]) + np.array(base) - np.roll(base, -1)
    assert stable["mean"] == pytest.approx(np.log(joint_gain.var(ddof=1) / control.var(ddof=1)))
    by_claim = cells.set_index("claim_id")
    assert by_claim.loc["vpn.frozen_promotes", "cell"] == "f/sr: vpn_dnn3 [class_enumeration] - vpn_dnn3 [no_noise]"
    assert by_claim.loc["vpn.frozen_more_stable", "cell"] == (
        "f/sr/vpn_dnn3: var vpn_joint: vpn_dnn3 [class_enumeration] - baseline [no_noise]"
        " vs var vpn_frozen: vpn_dnn3 [class_enumeration] - vpn_dnn3 [no_noise] + retraining difference")


def test_a_generator_that_does_nothing_is_not_more_stable_than_joint_training():
    # review case: with the report's own sds, a do-nothing generator read `supported` 93% of the time
    rng = np.random.default_rng(0)
    claim = next(e for e in audit.load_claims(CLAIMS)["effects"] if e["id"] == "vpn.frozen_more_stable")
    supported = 0
    for _ in range(100):
        base = 88.8 + 0.37 * rng.standard_normal(5)
        joint = 88.8 + 0.37 * rng.standard_normal(5)  # retrained with a generator that changes nothing
        supported += effects(_frozen_runs(base, joint, base), [claim])[0].loc[claim["id"], "verdict"] == "supported"
    assert supported <= 5


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
    # a frozen run is measured against its own base (its no_noise evaluation), never a baseline record
    frozen_control = effects_by_id["vpn.frozen_promotes"]["control"]
    assert "kind" not in frozen_control and frozen_control["eval_modes"] == ["no_noise"]
    assert "method" in effects_by_id["vpn.frozen_promotes"]["pair_on"]


def test_row_mapping_follows_the_papers_protocols():
    tables = audit.load_claims(CLAIMS)["tables"]
    rows = tables["joint_fmnist_cifar10"]["row_map"]
    assert rows["vpn_dnn3"] == ["vpn_dnn3", "class_enumeration"]
    assert rows["vpn_dnn3_no_noise"] == ["vpn_dnn3", "no_noise"]
    assert rows["random_noise"] == ["random_noise", "no_noise"]
    assert tables["imagenet_headline"]["row_map"]["noisynn_optimal_q"] == ["linear_optimal_q", "noise_class_sorted"]


def test_shipped_numbers_equal_the_shared_transcription():
    """params/claims.yaml against the published numbers as transcribed, committed under tests/data/ so
    this runs in every checkout."""
    shared = yaml.safe_load(PUBLISHED_CLAIMS.read_text())
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


@pytest.mark.skipif(not SHARED_CLAIMS.exists(), reason="shared/paper/claims.yaml is not present")
def test_the_committed_transcription_is_the_shared_one():
    assert PUBLISHED_CLAIMS.read_bytes() == SHARED_CLAIMS.read_bytes()


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
    # what the runs are (aggregate.method_traits, recipe): linear_helps selects by these, not by set kind
    clean = {"noise": "", "apply_at": "", "site": "", "trained_clean": True, "recipe": "r1"}
    optimal_q = {"noise": "optimal_q", "apply_at": "both", "site": "default", "trained_clean": False, "recipe": "r1"}
    main = [runs_line("imnet", "vitb", "baseline", "no_noise", s, 80.0 + s, "paper", **clean) for s in SEEDS]
    for s in SEEDS:
        main.append(runs_line("imnet", "vitb", "linear_optimal_q", "noise_class_sorted", s, 93.85 + wobble[s], "paper",
                              top5=99.5, **optimal_q))
        main.append(runs_line("imnet", "vitb", "linear_optimal_q", "noise_shuffled", s, 82.0 + s + wobble[s], "paper",
                              top5=97.0, **optimal_q))
    protocol = []  # a runs table from before the traits columns: its runs fit no claim that selects by them
    for s in SEEDS:
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_class_sorted", s, 90.0 + s, "paper"))
        protocol.append(runs_line("imnet", "vitb", "clean_train", "noise_shuffled", s, 70.0 + s * 1.1, "paper"))
        protocol.append(runs_line("imnet", "vitb", "clean_train", "no_noise", s, 80.0 + s * 0.9, "paper"))
    background = [{**runs_line("clutter", "dnn3", g, mode, s, 50.0, "paper"), "sigma_mean": 1.5, "sigma_mean_background": 2.0,
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
    assert lines.loc["noisynn.sorted_vs_shuffled", "verdict"] == "supported (higher)"
    assert lines.loc["noisynn.sorted_vs_clean", "verdict"] == "supported (higher)"
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
    assert len(tested) >= 5 and (tested["p_family"] >= tested["p_value"]).all()
    written = pd.read_csv(out / "audit.csv")
    assert set(audit.AUDIT_COLUMNS) <= set(written.columns)
    cells = pd.read_csv(out / "effects_cells.csv")
    assert set(audit.CELL_COLUMNS) <= set(cells.columns)
    helps = cells[cells["claim_id"] == "noisynn.linear_helps"]
    assert len(helps) == 1 and helps["treatment"].iloc[0] == "noisynn_main/linear_optimal_q [noise_shuffled]"


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
    headings = ["Scoreboard", "Effect claims", "Manipulation check by reading", "Effect claims per cell", "Paper tables",
                "Deviations from the papers and the authors' code"]
    positions = [report.index(f"## {heading}\n") for heading in headings]
    assert positions == sorted(positions)
    assert "paper scale 5" in report and "other scales 3" in report and "Bonferroni over a family of" in report
    assert "joint_imagenet ±0.5" in report and "alpha = 0.05" in report
    assert (out / "figures" / "audit.png").stat().st_size > 10_000


def test_layer_sweep_pairs_the_last_block_with_the_first():
    wobble = [0.0, 0.1, -0.1, 0.05, -0.05]  # the last block's seeds vary (a constant difference has no t-test)
    lines = [{**runs_line("digits", "vit", "linear_shift", "noise_shuffled", s, base + s + (wobble[s] if b == 10 else 0),
                          "paper", site=f"block:{b}"), "run_id": f"digits-vit-linear_shift-siteblock{b}-s{s}"}
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


# ---- the test set's own uncertainty ----

def _with_predictions(lines, folder, rng, accuracy_of, shared=0.0):
    """Store, for each run line, predictions on 2,000 images that score its top-1 (the first image the same in
    every seed, as one shared test set), and point the line at them. shared: how much of an image's chance of
    being right is its own difficulty, the same in every run (0: runs err on independent images)."""
    from pipeline_src.spec.predictions import save_predictions

    target = np.arange(2000) % 10
    difficulty = np.random.default_rng(99).random(2000)
    out = []
    for line in lines:
        path = folder / f"{line['run_id']}.npz"
        right = shared * difficulty + (1 - shared) * rng.random(2000) < accuracy_of(line) / 100
        save_predictions(path, {line["eval_mode"]: np.where(right, target, (target + 1) % 10)}, target)
        measured = 100.0 * right.mean()
        out.append({**line, "top1": measured, "predictions": str(path)})
    return out


def test_intervals_cover_the_test_set_where_runs_stored_predictions(tmp_path):
    rng = np.random.default_rng(0)
    lines = _with_predictions(two_sides([1.0, 1.2, 0.8, 1.1, 0.9], base=[80.0] * 5), tmp_path, rng,
                              lambda line: line["top1"], shared=0.8)
    seeds_only = [{k: v for k, v in line.items() if k != "predictions"} for line in lines]
    with_images, cells = effects(lines, [paired_claim()])
    without, cells_seeds = effects(seeds_only, [paired_claim()])
    assert cells.loc[0, "uncertainty"] == "seeds + test images" and cells_seeds.loc[0, "uncertainty"] == "seeds only"
    # by hand, the two-way random-effects estimate: (MS_images - MS_interaction) / (n N) for the image term
    from pipeline_src.spec.predictions import correct
    per_seed = [correct(tmp_path / f"d-m-noisy-s{s}.npz")["noise"].astype(float)
                - correct(tmp_path / f"d-m-clean-s{s}.npz")["none"].astype(float) for s in range(5)]
    table = np.array(per_seed) * 100
    ms_images = 5 * table.mean(axis=0).var(ddof=1)
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0) + table.mean()
    ms_interaction = (residual ** 2).sum() / (4 * 1999)
    image_var = (ms_images - ms_interaction) / (5 * 2000)
    assert image_var > 0
    values = cells.loc[0, "mean"], np.array([100 * d.mean() for d in per_seed])
    half = (cells.loc[0, "ci_high"] - cells.loc[0, "ci_low"]) / 2
    expected = 2.776445 * np.sqrt(values[1].var(ddof=1) / 5 + image_var)  # t(0.975, 4)
    assert half == pytest.approx(expected, rel=1e-5)
    assert half > (cells_seeds.loc[0, "ci_high"] - cells_seeds.loc[0, "ci_low"]) / 2
    assert with_images.loc["c", "uncertainty"] == "seeds + test images"
    # a seed without predictions: the whole cell falls back to seeds only, and says so
    mixed = lines[:-1] + seeds_only[-1:]
    assert effects(mixed, [paired_claim()])[1].loc[0, "uncertainty"] == "seeds only"


def test_number_claims_stay_over_seeds_the_paper_scored_the_same_test_set(tmp_path):
    rng = np.random.default_rng(1)
    lines = _with_predictions([run_line("d", "m", "baseline", "no_noise", s, 80.0 + 0.1 * s) for s in SEEDS],
                              tmp_path, rng, lambda line: line["top1"])
    claim = {"claim_id": "p.t.baseline.d/m", "table": "t", "row": "baseline", "column": "d/m", "paper": 80.0,
             "method": "baseline", "eval_mode": "no_noise", "kind": "k", "metric": "top1", "tolerance": 1.0}
    line = audit.audit_numbers([claim], pd.DataFrame(lines), 0.05, {"default": 3}).iloc[0]
    seeds_only = verdicts.t_interval([x["top1"] for x in lines])
    assert (line["ci_low"], line["ci_high"]) == pytest.approx(seeds_only[3:])
    assert line["uncertainty"] == "seeds (same test set as the paper)"


# ---- the rule holes of issue 36: each case was run through the rules of b9881d5 and read wrong there ----

def _family(size, claim_id="c"):
    """A multiplicity family of `size` (claim, reading) pairs, `claim_id` under the runs' own reading."""
    return {(claim_id, "declared")} | {(f"other{i}", "declared") for i in range(size - 1)}


def test_mixed_needs_cells_decisive_after_the_family_correction():
    # cell a: p ~ 1e-5; cell b the other way at p = 0.019, 0.56 after x29: b decides nothing in a family of
    # 29, so the claim is not mixed (b9881d5 read `mixed` from the uncorrected p)
    runs = (two_sides([2.0, 2.2, 1.8, 2.1, 1.9], model="a")
            + two_sides([-1.0, -2.5, -0.6, -1.8, -0.8], model="b"))
    line, cells = effects(runs, [paired_claim()], family=_family(29))
    assert cells.set_index("model")["p_value"]["b"] == pytest.approx(0.019419, abs=1e-5)
    assert line.loc["c", "verdict"] == "inconclusive"
    assert line.loc["c", "p_family"] == pytest.approx(29 * 0.019419, abs=1e-3)
    # in a family of one both cells are decisive: mixed, naming them
    assert effects(runs, [paired_claim()], family=_family(1))[0].loc["c", "verdict"] == "mixed"


def test_a_null_cells_sign_never_makes_a_claim_mixed():
    # two tight +2 cells and one at -0.01 that is noise: under "at least 60% of cells" that is support
    # (b9881d5 read `mixed`: the null cell's sign counted)
    runs = (two_sides([2.0, 2.1, 1.9, 2.0, 2.2], model="a") + two_sides([2.1, 1.9, 2.0, 2.2, 2.0], model="b")
            + two_sides([0.3, -0.2, 0.1, -0.4, 0.15], model="c"))
    claim = paired_claim(holds_in={"share": 0.6, "reason": "most cases"})
    line, cells = effects(runs, [claim])
    assert cells.set_index("model").loc["c", "mean"] == pytest.approx(-0.01)
    assert line.loc["c", "verdict"] == "supported"


def test_a_cell_without_variance_gets_an_exact_test_never_a_t_test():
    # five seeds all +0.01, seeds only: se = 0 gave p = 0 and `supported` at b9881d5; the exact sign-flip
    # test over 5 seeds cannot go below 2 / 2^5
    line, cells = effects(two_sides([0.01] * 5), [paired_claim()])
    cell = cells.iloc[0]
    assert cell["p_value"] == pytest.approx(0.0625) and cell["test"] == "exact sign-flip over seeds"
    assert np.isnan(cell["ci_low"]) and np.isnan(cell["ci_high"]) and "no variance over seeds" in cell["note"]
    assert line.loc["c", "verdict"] == "inconclusive" and line.loc["c", "p_family"] == pytest.approx(0.0625)
    # ten seeds can decide it exactly (2 / 2^10)
    ten = effects(two_sides([0.01] * 10), [paired_claim()])[0].loc["c"]
    assert ten["verdict"] == "supported" and ten["p_family"] == pytest.approx(2 / 1024)
    # an equivalence claim on a constant cell: exact sign tests at the band's edges, not TOST with se = 0
    equal = effects(two_sides([0.0] * 5), [paired_claim(test_type="equivalence")])[1].iloc[0]
    assert equal["p_value"] == pytest.approx(1 / 32) and equal["test"] == "exact sign-flip over seeds"


def test_a_cell_without_seed_variance_but_with_predictions_gets_mcnemar_over_images(tmp_path):
    from pipeline_src.spec.predictions import save_predictions

    target, image = np.arange(1000) % 10, np.arange(1000)
    wrong = (target + 1) % 10
    lines = []
    for s in SEEDS:  # every seed: images 0-519 right with noise, 20-519 without: +2.00 points, no seed variance
        for method, mode, right in (("clean", "none", (image >= 20) & (image < 520)), ("noisy", "noise", image < 520)):
            line = run_line("d", "m", method, mode, s, 100 * right.mean())
            save_predictions(tmp_path / f"{line['run_id']}.npz", {mode: np.where(right, target, wrong)}, target)
            lines.append({**line, "predictions": str(tmp_path / f"{line['run_id']}.npz")})
    line, cells = effects(lines, [paired_claim()])
    cell = cells.iloc[0]
    assert cell["mean"] == pytest.approx(2.0) and cell["std"] == 0 and cell["uncertainty"] == "seeds + test images"
    # 20 images move, all one way: McNemar's exact p = 2 / 2^20
    assert cell["p_value"] == pytest.approx(2 / 2 ** 20) and cell["test"] == "exact McNemar over test images"
    assert line.loc["c", "verdict"] == "supported"
    assert verdicts.image_sign_p([100.0] * 10 + [-100.0] * 10 + [0.0] * 50) == pytest.approx(1.0)


def test_a_split_cell_gets_no_t_interval_verdict():
    # the ResNet-18-generator DNN3 cell of vpn.improves_resnet18 [ours]: 3 seeds near -50, 2 near -5 read
    # `contradicted (paper's effect excluded)` at b9881d5, on a t-interval (-64 to -0.08) of no population
    claim = paired_claim(paper_effect={"table": "t", "treatment": "{method}", "control": "base"})
    tables = {"t": {"columns": ["d/m"], "rows": {"noisy": [82.19], "base": [81.57]}}}
    line, cells = effects(two_sides([-1.18, -52.56, -40.83, -8.35, -57.32]), [claim], tables=tables)
    cell = cells.iloc[0]
    assert cell["split"] == "3 seeds near -50.2, 2 near -4.8"
    assert np.isnan(cell["ci_low"]) and np.isnan(cell["ci_high"]) and cell["p_paper_adj"] == 1.0  # no test
    assert cell["test"] == "exact sign-flip over seeds" and cell["p_value"] == pytest.approx(0.0625)
    assert cell["verdict"] == "inconclusive" and line.loc["c", "verdict"] == "inconclusive"


def test_the_images_term_counts_the_seed_by_image_interaction_once():
    rng = np.random.default_rng(3)
    # pure interaction: each seed errs on its own images; the images add nothing the seeds do not carry
    independent = [(rng.random(4000) < 0.1).astype(float) - (rng.random(4000) < 0.1) for _ in range(5)]
    double_counted = (np.mean(independent, axis=0) * 100).var(ddof=1) / 4000  # b9881d5's term
    assert double_counted > 0.05 and audit.image_variance(independent) < 0.1 * double_counted
    # a pure image effect (the same images move in every seed): no interaction, the whole term stays
    same = [(np.arange(4000) < 200).astype(float)] * 5
    assert audit.image_variance(same) == pytest.approx((np.mean(same, axis=0) * 100).var(ddof=1) / 4000)


def test_the_papers_effect_is_excluded_only_beyond_its_own_spread_and_rounding():
    tables = {"t": {"columns": ["d/m"], "rows": {"noisy": [82.07], "base": [81.57]}}}  # paper effect +0.50
    claim = paired_claim(paper_effect={"table": "t", "treatment": "{method}", "control": "base"})
    # seed sd 0.37 around 0: the paper's own 5-seed mean of a difference with that sd spreads 0.17, which
    # our interval alone ignored (b9881d5: `contradicted (paper's effect excluded)`, p 0.04)
    spread = [0.0, 0.45, -0.45, 0.3, -0.3]
    line, cells = effects(two_sides(spread), [claim], tables=tables)
    assert cells.loc[0, "p_paper_adj"] > 0.05 and line.loc["c", "verdict"] == "inconclusive"
    # an effect 0.01 short of the paper's is within its 2-decimal rounding, however tight our seeds
    tables = {"t": {"columns": ["d/m"], "rows": {"noisy": [81.60], "base": [81.57]}}}  # paper effect +0.03
    tight = [0.02, 0.021, 0.019, 0.0205, 0.0195]
    line, cells = effects(two_sides(tight, base=[80.0] * 5), [claim], tables=tables)
    assert cells.loc[0, "p_paper_adj"] == pytest.approx(1.0)
    assert line.loc["c", "verdict"] != "short of the paper's effect"


GATE = {"name": "generator active", "reason": "test", "generator_methods": ["vpn_*"], "min_sigma_mean": 1 / 255,
        "min_changed_share": 0.01, "base_margin_points": 5}
GATE_SETTINGS = {**SETTINGS, "num_classes": {"d": 10}}


def _generator_runs(base, gain, sigma, method="vpn_dnn3", folder=None, moved=3, model="m"):
    """folder: store each generator run's predictions there, its noise moving `moved` of 1,000 test images."""
    from pipeline_src.spec.predictions import save_predictions

    lines = []
    for s, b in enumerate(base):
        lines.append(run_line("d", model, "baseline", "no_noise", s, b))
        extra = {"sigma_mean": sigma[s]}
        if folder is not None:
            target = np.arange(1000) % 10
            noisy = np.where(np.arange(1000) < moved, (target + 1) % 10, target)
            extra["predictions"] = str(folder / f"{method}-s{s}.npz")
            save_predictions(Path(extra["predictions"]), {"class_enumeration": noisy, "no_noise": target}, target)
        for mode, value in (("class_enumeration", b + gain[s]), ("no_noise", b + gain[s] - 0.05)):
            lines.append({**run_line("d", model, method, mode, s, value), **extra})
    return lines


def _gated_claim():
    return {"id": "g", "claim": "", "manipulation": GATE,
            "test": {"type": "paired", "kind": "k", "expected_sign": "+",
                     "treatment": {"methods": ["vpn_*"], "eval_modes": ["class_enumeration"]},
                     "control": {"methods": ["baseline"], "eval_modes": ["no_noise"]}}}


def test_a_cell_whose_base_is_at_chance_never_decides():
    # the adam_code DNN3 cells: the base at 10% on 10 classes; b9881d5 let +0.632 take part in the verdicts
    gain = [0.6, 0.7, 0.5, 0.65, 0.55]
    line, cells = effects(_generator_runs([10.0, 10.02, 10.0, 10.0, 10.0], gain, [0.3] * 5), [_gated_claim()],
                          GATE_SETTINGS)
    assert cells.loc[0, "verdict"] == "not applicable (base at chance)"
    assert cells.loc[0, "manipulation_check"] == "generator active" and "15.00" in cells.loc[0, "manipulation"]
    assert line.loc["g", "verdict"] == "not applicable (base at chance)"
    assert line.loc["g", "gated"] == "base at chance 1" and line.loc["g", "manipulation_check"] == "generator active"
    # the same effect on a trained base counts
    trained = effects(_generator_runs([80.0, 80.1, 79.9, 80.2, 80.0], gain, [0.3] * 5), [_gated_claim()], GATE_SETTINGS)
    assert trained[0].loc["g", "verdict"] == "supported" and trained[1].loc[0, "manipulation"].startswith("passes")


def test_an_inert_generator_or_one_without_data_never_decides(tmp_path):
    base, gain = [80.0, 80.1, 79.9, 80.2, 80.0], [0.6, 0.7, 0.5, 0.65, 0.55]
    # the sgd_code generators: sigma below one grey level, 0.3% of predictions moved
    inert = effects(_generator_runs(base, gain, [6e-4] * 5, folder=tmp_path), [_gated_claim()], GATE_SETTINGS)
    assert inert[1].loc[0, "verdict"] == "not applicable (generator inert)"
    assert "predictions changed 0.30%" in inert[1].loc[0, "manipulation"]
    assert inert[0].loc["g", "verdict"] == "not applicable (generator inert)" and inert[0].loc["g", "cells"] == "0/1"
    # the same sigma with 2% of predictions moved: active by the declared share
    (tmp_path / "moving").mkdir()
    moving = effects(_generator_runs(base, gain, [6e-4] * 5, folder=tmp_path / "moving", moved=20), [_gated_claim()],
                     GATE_SETTINGS)
    assert moving[0].loc["g", "verdict"] == "supported"
    # a small sigma without predictions is not known to be inert; no sigma at all neither: no data
    for sigma in (6e-4, np.nan):
        unknown = effects(_generator_runs(base, gain, [sigma] * 5), [_gated_claim()], GATE_SETTINGS)
        assert unknown[1].loc[0, "verdict"] == "not applicable (no manipulation data)"
    # one inert seed among active ones: the cell does not count
    mixed = effects(_generator_runs(base, gain, [0.3, 0.3, 0.0, 0.3, 0.3]), [_gated_claim()], GATE_SETTINGS)
    assert mixed[1].loc[0, "verdict"] == "not applicable (generator inert)"
    assert "active in 4 of 5 runs, inert in 1" in mixed[1].loc[0, "manipulation"]


def test_the_registry_declares_the_vpn_manipulation_check_with_its_reason():
    claims = audit.load_claims(CLAIMS)
    for effect in claims["effects"]:
        check = effect.get("manipulation")
        assert (check is not None) == effect["id"].startswith("vpn."), effect["id"]
        if check:
            assert check["reason"] and check["min_sigma_mean"] == pytest.approx(1 / 255, rel=0.01)
    assert claims["settings"]["num_classes"]["fashion-mnist"] == 10


def test_a_cell_that_falls_back_to_seeds_only_says_which_runs_lack_predictions(tmp_path):
    rng = np.random.default_rng(5)
    lines = _with_predictions(two_sides([1.0, 1.2, 0.8, 1.1, 0.9], base=[80.0] * 5), tmp_path, rng,
                              lambda line: line["top1"])
    lines[-1] = {k: v for k, v in lines[-1].items() if k != "predictions"}  # seed 4's noisy run lost its file
    cell = effects(lines, [paired_claim()])[1].iloc[0]
    assert cell["uncertainty"] == "seeds only"
    assert "1 of 10 runs have no predictions.npz (k/d-m-noisy-s4)" in str(cell["note"])


def test_audit_md_counts_each_gates_cells_per_reading_and_tells_claim_from_cell_verdicts(tmp_path):
    base, gain = [80.0, 80.1, 79.9, 80.2, 80.0], [0.6, 0.7, 0.5, 0.65, 0.55]
    runs = _generator_runs(base, gain, [0.3] * 5) + _generator_runs([10.0] * 5, gain, [0.3] * 5, model="n")
    _, cells = effects(runs, [_gated_claim()], GATE_SETTINGS)
    summary = audit_pages.gate_summary(cells)
    row = next(line for line in summary.splitlines() if line.startswith("| declared"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["declared", "1", "1"]
    assert "not applicable (base at chance)" in summary and "passes" in summary
    assert audit_pages.gate_summary(cells.assign(manipulation_check="")) == "No cell has a manipulation check."


# ---- claims select runs by what they are (kind: any), from any set ----

def tb_line(set_name, model, label, eval_mode, seed, top1, noise="optimal_q", apply_at="test", recipe="r1"):
    """A run line of a test-batch set (kind eval_protocol) with what the run is: noise, site, apply_at,
    trained clean and recipe (aggregate.method_traits and aggregate.recipe)."""
    return {"set": set_name, "kind": "eval_protocol", "dataset": "fmnist", "model": model, "method": label,
            "eval_mode": eval_mode, "seed": seed, "top1": top1, "run_id": f"fmnist-{model}-{label}-s{seed}",
            "scale": "paper", "dataset_paper": "fashion-mnist", "model_paper": model, "config": label,
            "evidence": f"{set_name}/fmnist-{model}-{label}-s{seed}", "noise": noise, "apply_at": apply_at,
            "site": "default", "trained_clean": apply_at == "test", "recipe": recipe}


def registry_claims(*ids):
    effects = {claim["id"]: claim for claim in audit.load_claims(CLAIMS)["effects"]}
    return [effects[i] for i in ids]


LINEAR = ("noisynn.linear_helps", "noisynn.linear_helps_class_sorted")


def test_a_claim_is_decided_from_runs_that_a_set_of_another_kind_made():
    # no set of kind noisynn_main: the test-batch set's models are what linear_helps is about
    lines = []
    for s in SEEDS:
        lines += [tb_line("tb_vit", "vit6", "clean_train", "no_noise", s, 89.0 + 0.1 * s),
                  tb_line("tb_vit", "vit6", "clean_train", "noise_shuffled", s, 87.0 + 0.12 * s),
                  tb_line("tb_vit", "vit6", "clean_train", "noise_class_sorted", s, 92.0 + 0.1 * s)]
    set_info = {"tb_vit": {"kind": "eval_protocol", "readings": ["declared"], "methods": ["clean_train"],
                           "method_specs": [{"label": "clean_train", "name": "noisynn", "noise": {"kind": "optimal_q"},
                                             "apply_at": "test", "site": "default"}]}}
    family = audit.claim_family(registry_claims(*LINEAR), set_info)
    assert family == {(LINEAR[0], "declared"), (LINEAR[1], "declared")}
    frame, cells = effects(lines, registry_claims(*LINEAR), family=family)
    line = frame.loc[LINEAR[0]]
    assert line["verdict"] == "contradicted" and line["cells"] == "1/1"
    assert line["mean"] == pytest.approx(-2.0 + 0.02 * 2) and line["p_family"] == pytest.approx(2 * line["p_value"])
    assert line["evidence"].split() == [f"tb_vit/fmnist-vit6-clean_train-s{s}" for s in SEEDS]


def test_the_family_follows_the_run_matching_of_the_fashion_mnist_params():
    from pipeline_src.spec.config import audit_set_info, load_params

    claims = audit.load_claims(CLAIMS)["effects"]
    family = audit.claim_family(claims, audit_set_info(load_params(REPO_ROOT / "params" / "fashion_mnist.yaml")))
    # each NoisyNN claim under each of the authors' protocols its declared treatments follow (the ViT's: optimal
    # Q at test only, the clean_train methods; the CNN's: a circular shift of 0.4 in training and at test), and
    # under `ours` where a treatment follows neither (noisy_train: optimal Q in training too; Gaussian, impulse)
    assert {pair for pair in family if pair[0].startswith("noisynn.")} == {
        (LINEAR[0], "authors_vit"), (LINEAR[0], "authors_cnn"), (LINEAR[0], "ours"),
        (LINEAR[1], "authors_vit"), (LINEAR[1], "authors_cnn"), (LINEAR[1], "ours"),
        # the evaluation-only harmful-noise sets (on the test-batch study's clean models): neither protocol
        ("noisynn.gaussian_hurts", "ours"), ("noisynn.impulse_hurts", "ours"),
        # the site sweeps are the CNN protocol swept over site: in before any of their runs exist (`last` and
        # `first` pick sweep positions among runs, so no declared method has to spell them)
        ("noisynn.last_layer", "authors_cnn"),
        # the same clean-trained model, optimal Q switched on at test: the ViT protocol's batches
        ("noisynn.sorted_vs_shuffled", "authors_vit"), ("noisynn.sorted_vs_clean", "authors_vit")}
    assert len(family) == 44  # 33 VPN pairs and these 11, from the params and the registry alone


def test_the_family_counts_each_protocol_a_declared_treatment_follows():
    """No run exists: the params alone put a claim in the family once per reading its treatments give."""
    protocols = {"authors_vit": {"source": "s", "noise": {"kind": "optimal_q"}, "apply_at": "test"}}
    specs = [{"label": "clean_train", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "test",
              "site": "default"},
             {"label": "noisy_train", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "both",
              "site": "default"}]
    set_info = {"tb": {"kind": "eval_protocol", "readings": ["declared"], "methods": ["clean_train", "noisy_train"],
                       "method_specs": specs}, "noisynn_protocols": protocols}
    family = audit.claim_family(registry_claims(LINEAR[0]), set_info)
    assert family == {(LINEAR[0], "authors_vit"), (LINEAR[0], "declared")}
    # without noisy_train, no treatment follows neither protocol: the own reading leaves the family
    only_clean = {**set_info, "tb": {**set_info["tb"], "methods": ["clean_train"], "method_specs": specs[:1]}}
    assert audit.claim_family(registry_claims(LINEAR[0]), only_clean) == {(LINEAR[0], "authors_vit")}


def test_a_cell_is_judged_under_the_protocol_its_treatment_follows():
    """A model trained clean with optimal Q at test follows the authors' ViT protocol; one trained with it
    on follows neither (the own reading). Both pair with the same clean control, as they always did."""
    lines = []
    for s in SEEDS:
        lines += [tb_line("tb_vit", "vit6", "clean_train", "no_noise", s, 89.0 + 0.1 * s),
                  tb_line("tb_vit", "vit6", "clean_train", "noise_shuffled", s, 87.0 + 0.12 * s),
                  tb_line("tb_vit", "vit6", "noisy_train", "noise_shuffled", s, 88.0 + 0.11 * s, apply_at="both")]
    runs = pd.DataFrame(lines).assign(
        noisynn_protocol=lambda f: f["method"].map({"clean_train": "authors_vit", "noisy_train": ""}))
    family = {(LINEAR[0], "authors_vit"), (LINEAR[0], "declared")}
    frame, cells = audit.audit_effects(registry_claims(LINEAR[0]), runs, SETTINGS, family)
    by_treatment = cells.set_index("treatment")
    assert by_treatment.loc["tb_vit/clean_train [noise_shuffled]", "reading"] == "authors_vit"
    assert by_treatment.loc["tb_vit/noisy_train [noise_shuffled]", "reading"] == "declared"
    assert set(cells["control"]) == {"tb_vit/clean_train [no_noise]"}
    assert frame.set_index("reading").loc["authors_vit", "mean"] == pytest.approx(-2.0 + 0.02 * 2)
    assert frame.set_index("reading").loc["declared", "mean"] == pytest.approx(-1.0 + 0.01 * 2)
    assert (frame["p_family"] == (2 * frame["p_value"]).clip(upper=1)).all()


def test_a_runs_protocol_comes_from_its_records_method(tmp_path):
    """load_runs reads which protocol a run follows from its record's method: the committed clean_train
    (optimal Q at test only) follows the ViT protocol, noisy_train (optimal Q in training too) none."""
    from pipeline_src.spec.config import audit_set_info, load_params

    set_info = audit_set_info(load_params(REPO_ROOT / "params" / "fashion_mnist.yaml"))
    source = REPO_ROOT / "reports/fashion-mnist"
    table = tmp_path / "tables" / "test_batch_study_vit_runs.csv"
    table.parent.mkdir(parents=True)
    committed = pd.read_csv(source / "tables" / "test_batch_study_vit_runs.csv")
    committed = committed[committed["seed"] == 0]
    committed.to_csv(table, index=False)
    for run in committed["run_id"].unique():
        target = tmp_path / "runs" / "test_batch_study_vit" / run / "metrics.json"
        target.parent.mkdir(parents=True)
        target.write_text((source / "runs" / "test_batch_study_vit" / run / "metrics.json").read_text())
    runs = audit.load_runs([table], set_info)
    protocol = runs.drop_duplicates("method").set_index("method")["noisynn_protocol"]
    assert protocol.to_dict() == {"clean_train": "authors_vit", "noisy_train": ""}
    assert set(runs["reading"]) == {"ours"}  # the training reading, on which sides still pair


def test_a_noise_trained_model_is_paired_with_the_clean_model_of_its_own_seed_and_recipe():
    lines = []
    for s in SEEDS:
        lines += [tb_line("tb_resnet", "resnet", "clean_train", "no_noise", s, 92.0 + s),
                  tb_line("tb_resnet", "resnet", "clean_train", "noise_shuffled", s, 45.0 + s),
                  # trained with the noise: its own no-noise evaluation is no control (2 points above the clean)
                  tb_line("tb_resnet", "resnet", "noisy_train", "no_noise", s, 94.0 + s, apply_at="both"),
                  tb_line("tb_resnet", "resnet", "noisy_train", "noise_shuffled", s, 90.0 + s + 0.1 * (s % 2),
                          apply_at="both"),
                  # the authors' CNN condition in a set without a clean model: the same-recipe one of tb_resnet
                  tb_line("tb_shift", "resnet", "shift_train", "noise_shuffled", s, 89.0 + s + 0.1 * (s % 3),
                          noise="circular_shift", apply_at="both"),
                  # a clean model of another recipe (say more epochs), 5 points better: never a control
                  tb_line("tb_long", "resnet", "clean_long", "no_noise", s, 97.0 + s, recipe="r2")]
    frame, cells = effects(lines, registry_claims(LINEAR[0]))
    cells = cells.set_index("treatment")
    assert set(cells.index) == {"tb_resnet/clean_train [noise_shuffled]", "tb_resnet/noisy_train [noise_shuffled]",
                                "tb_shift/shift_train [noise_shuffled]"}
    assert set(cells["control"]) == {"tb_resnet/clean_train [no_noise]"}
    # paired seed by seed: the differences are -2 + 0.1 * (s % 2) (a wrong seed would add whole points)
    noisy = cells.loc["tb_resnet/noisy_train [noise_shuffled]"]
    assert [float(v) for v in noisy["seeds"].split(", ")] == pytest.approx([-2.0, -1.9, -2.0, -1.9, -2.0])
    shift = cells.loc["tb_shift/shift_train [noise_shuffled]"]
    assert shift["mean"] == pytest.approx(-3.0 + 0.1 * (0 + 1 + 2 + 0 + 1) / 5)
    assert "tb_resnet/fmnist-resnet-clean_train-s4" in shift["evidence"] and "tb_long" not in " ".join(cells["evidence"])
    # the model trained clean with the noise at test is compared with its own no-noise evaluation
    assert cells.loc["tb_resnet/clean_train [noise_shuffled]", "mean"] == pytest.approx(-47.0)


def test_the_class_sorted_companion_never_decides_linear_helps():
    # class-sorted batches help (same-class neighbours), shuffled ones hurt: two claims, two verdicts
    lines = []
    for s in SEEDS:
        lines += [tb_line("tb_vit", "vit6", "clean_train", "no_noise", s, 89.0 + 0.1 * s),
                  tb_line("tb_vit", "vit6", "clean_train", "noise_shuffled", s, 87.0 + 0.12 * s),
                  tb_line("tb_vit", "vit6", "clean_train", "noise_class_sorted", s, 99.0 + 0.05 * s)]
    frame, cells = effects(lines, registry_claims(*LINEAR))
    assert frame.loc[LINEAR[0], "verdict"] == "contradicted" and frame.loc[LINEAR[0], "mean"] < 0
    assert frame.loc[LINEAR[1], "verdict"] == "supported" and frame.loc[LINEAR[1], "mean"] > 9
    helps = cells[cells["claim_id"] == LINEAR[0]]
    assert len(helps) == 1 and not helps["treatment"].str.contains("class_sorted").any()
    # without shuffled or single evaluations, linear_helps has no cell at all: class-sorted never stands in
    alone = [line for line in lines if line["eval_mode"] != "noise_shuffled"]
    frame, cells = effects(alone, registry_claims(*LINEAR))
    assert frame.loc[LINEAR[0], "verdict"] == "not run" and frame.loc[LINEAR[1], "verdict"] == "supported"


# ---- the run record is the only contract ----

def test_the_reading_and_configuration_reach_the_audit_from_the_record(tmp_path):
    """A record whose run id carries neither its reading (no `.sgd_code`) nor its sweep point is audited
    under the reading and configuration its fields say: the audit cuts nothing out of run ids."""
    from pipeline_src.results.aggregate import load_runs as runs_table

    source = REPO_ROOT / "reports/fashion-mnist/runs/vpn_joint_readings/fmnist-dnn3-baseline.sgd_code-s0/metrics.json"
    record = {**json.loads(source.read_text()), "run_id": "plain-id", "sweep": {"noise.strength": 0.1}}
    assert record["reading"] == "sgd_code"
    path = tmp_path / "runs" / "vpn_joint_readings" / "plain-id" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    table = tmp_path / "tables" / "vpn_joint_readings_runs.csv"
    table.parent.mkdir()
    runs_table([path]).to_csv(table, index=False)
    runs = audit.load_runs([table], {})  # no set info: nothing but the record says which reading
    assert set(runs["reading"]) == {"sgd_code"} and set(runs["config"]) == {"baseline-strength0.1"}
    claim = {"claim_id": "p.t.baseline.fmnist/dnn3", "table": "t", "row": "baseline", "column": "fmnist/dnn3",
             "paper": 90.0, "method": "baseline", "eval_mode": "no_noise", "kind": record["set_kind"],
             "metric": "top1", "tolerance": 1.0}
    lines = audit.audit_numbers([claim], runs, 0.05, {"default": 3})
    assert lines["reading"].tolist() == ["sgd_code"] and lines["evidence"].tolist() == ["vpn_joint_readings/plain-id"]
