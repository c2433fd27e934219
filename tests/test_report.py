"""Published reports: rebuilding from the committed metrics.json files gives the committed verdicts."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline_src.spec.config import REPO_ROOT, expand_runs, load_params
from pipeline_src.__main__ import main
from pipeline_src.results.collect import collect, missing_runs, same_run
from pipeline_src.results.report import batch_size_table, build, nearest_baselines

REPORT = REPO_ROOT / "reports" / "fashion-mnist"
PARAMS = REPO_ROOT / "params" / "fashion_mnist.yaml"


def test_rebuilding_the_committed_report_gives_its_verdicts(tmp_path):
    shutil.copytree(REPORT / "runs", tmp_path / "runs")
    shutil.copy(REPORT / "machines.json", tmp_path / "machines.json")
    build(PARAMS, tmp_path)
    columns = ["claim_id", "verdict", "n", "mean", "ci_low", "ci_high", "deviations"]

    def read(folder):
        return pd.read_csv(folder / "audit.csv", keep_default_na=False)[columns]

    pd.testing.assert_frame_equal(read(tmp_path), read(REPORT))
    pages = ["audit.md", "README.md", *(f"claims/{p.name}" for p in (REPORT / "claims").glob("*.md"))]
    for page in pages:
        assert (tmp_path / page).read_text() == (REPORT / page).read_text(), page
    assert sorted(p.name for p in (tmp_path / "claims").glob("*.md")) == sorted(p.name for p in (REPORT / "claims").glob("*.md"))
    assert json.loads((tmp_path / "provenance.json").read_text()) == json.loads((REPORT / "provenance.json").read_text())
    # what the params leave out is listed with its reason, and those cells stay `not run`
    left_out = load_params(PARAMS)["left_out"]
    assert left_out and all(f"- {what}: {why}" in (tmp_path / "README.md").read_text() for what, why in left_out.items())
    for training_figure in ("vpn_joint_training.png", "vpn_frozen_training.png"):
        assert (tmp_path / "figures" / training_figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    audit = read(tmp_path).set_index("claim_id")
    left_cells = audit[audit.index.str.contains(r"\.fashion-mnist/(?:resnet18|resnet34|vit)$")]
    assert len(left_cells) >= 20 and (left_cells["verdict"] == "not run").all()


def test_every_committed_run_belongs_to_the_params_and_carries_no_weights():
    declared = {f"{r.experiment_set}/{r.run_id}": r for r in expand_runs(load_params(PARAMS))}
    files = [p for p in (REPORT / "runs").rglob("*") if p.is_file()]
    assert files and {p.name for p in files} <= {"metrics.json", "predictions.npz"}  # never model.pt
    for path in (p for p in files if p.name == "metrics.json"):
        key = f"{path.parent.parent.name}/{path.parent.name}"
        assert key in declared, f"{key} is not a run of {PARAMS.name}"
        assert same_run(json.loads(path.read_text())["params"], declared[key])


def test_collect_takes_finished_runs_of_these_params_only(tmp_path):
    params = load_params(PARAMS)
    run, other = expand_runs(params)[:2]
    results = tmp_path / "results"
    for r, epochs in ((run, run.epochs), (other, other.epochs + 1)):  # the second ran with other params
        folder = results / "runs" / r.experiment_set / r.run_id
        folder.mkdir(parents=True)
        recorded = {**json.loads(r.to_json()), "epochs": epochs}
        (folder / "metrics.json").write_text(json.dumps({"params": recorded}))
        (folder / "model.pt").write_bytes(b"weights")
    assert collect(params, results, tmp_path / "report").copied == [f"{run.experiment_set}/{run.run_id}"]
    assert sorted(p.name for p in (tmp_path / "report" / "runs").rglob("*") if p.is_file()) == ["metrics.json"]
    again = collect(params, results, tmp_path / "report")
    assert again.copied == [] and again.reproduced == []  # unchanged files are not copied again


def test_a_rerun_replaces_a_reported_run_only_when_it_measured_other_numbers(tmp_path):
    params, run, key, source, target = _one_run_in_results_and_report(tmp_path)

    def finished(commit, seconds, top1):
        return json.dumps({"params": json.loads(run.to_json()), "provenance": {"git_commit": commit},
                           "history": [{"epoch": 1, "train_loss": 0.5, "seconds": seconds}],
                           "evaluations": {"no_noise": top1}})

    source.write_text(finished("a" * 40, 3.0, 84.3))
    collect(params, tmp_path / "results", tmp_path / "report")
    source.write_text(finished("b" * 40, 2.0, 84.3))  # other code version and timing, same numbers
    rerun = collect(params, tmp_path / "results", tmp_path / "report")
    assert (rerun.copied, rerun.reproduced) == ([], [key])
    assert json.loads(target.read_text())["provenance"]["git_commit"] == "a" * 40
    source.write_text(finished("b" * 40, 2.0, 84.1))
    assert collect(params, tmp_path / "results", tmp_path / "report").copied == [key]
    assert json.loads(target.read_text())["evaluations"]["no_noise"] == 84.1


def test_a_rerun_that_adds_a_measure_to_the_same_numbers_is_told_apart_from_one_that_differs(tmp_path, capsys):
    params, run, key, source, target = _one_run_in_results_and_report(tmp_path)

    def finished(top1, sigma=None):
        epoch = {"epoch": 1, "train_loss": 0.5, **({} if sigma is None else {"sigma_mean": sigma})}
        return json.dumps({"params": json.loads(run.to_json()), "history": [epoch],
                           "evaluations": {"no_noise": top1},
                           "diagnostics": {} if sigma is None else {"sigma_mean": sigma}})

    source.write_text(finished(84.3))  # recorded before the code measured sigma
    collect(params, tmp_path / "results", tmp_path / "report")
    source.write_text(finished(84.3, sigma=0.02))
    rerun = collect(params, tmp_path / "results", tmp_path / "report")
    assert (rerun.copied, rerun.reproduced, rerun.extended) == ([], [], [key])
    assert json.loads(target.read_text())["diagnostics"] == {"sigma_mean": 0.02}
    assert "other numbers" not in capsys.readouterr().err
    source.write_text(finished(84.4, sigma=0.03))  # more measures, but the accuracy moved: a different run
    rerun = collect(params, tmp_path / "results", tmp_path / "report")
    assert (rerun.copied, rerun.extended) == ([key], [])
    assert "measured other numbers" in capsys.readouterr().err


def test_missing_lists_the_runs_a_report_lacks_with_the_cells_closest_to_done_first(tmp_path, capsys):
    params = load_params(PARAMS)
    declared = expand_runs(params)
    by_id = {(r.experiment_set, r.run_id): r for r in declared}
    kept = [by_id["vpn_frozen", f"fmnist-sr-vpn_dnn3-s{seed}"] for seed in range(4)]  # 4 of the cell's 5 seeds
    kept.append(by_id["vpn_joint", "fmnist-dnn3-baseline-s2"])
    for run in kept:
        shutil.copytree(REPORT / "runs" / run.experiment_set / run.run_id, tmp_path / "runs" / run.experiment_set / run.run_id)
    stale = tmp_path / "runs" / "vpn_frozen" / "fmnist-sr-vpn_dnn3-s3" / "metrics.json"  # a record of other params
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "params": {**json.loads(kept[3].to_json()), "epochs": 3}}))

    todo = missing_runs(params, tmp_path)
    assert {(r.experiment_set, r.run_id) for r in todo} == set(by_id) - {(r.experiment_set, r.run_id) for r in kept[:3] + kept[4:]}
    assert [r.run_id for r in todo[:2]] == ["fmnist-sr-vpn_dnn3-s3", "fmnist-sr-vpn_dnn3-s4"]  # the cell with 2 to go
    assert todo[2].run_id.startswith("fmnist-dnn3-baseline-") and todo[2].seed == 0  # then one with 4 to go

    assert main(["missing", "--params", str(PARAMS), "--report", str(tmp_path), "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [f"results/fashion_mnist/runs/vpn_frozen/fmnist-sr-vpn_dnn3-s{s}/metrics.json" for s in (3, 4)]
    assert f"{len(todo)} declared runs" in err and "the first 2" in err
    assert main(["missing", "--params", str(PARAMS), "--report", str(tmp_path), "--limit", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_batch_size_table_pairs_each_noisy_evaluation_with_the_same_models_clean_one():
    rows = []
    for seed, clean in ((0, 90.0), (1, 92.0)):
        rows.append({"model": "vit", "method": "clean_train", "seed": seed, "eval_mode": "no_noise",
                     "test_batches": "-", "test_batch_size": 256, "top1": clean})
        rows.append({"model": "vit", "method": "clean_train", "seed": seed, "eval_mode": "noise_class_sorted",
                     "test_batches": "class_sorted", "test_batch_size": 10, "top1": clean + 1 + seed})
    table = batch_size_table(pd.DataFrame(rows)).set_index("test_batches")
    assert table.loc["clean", "top1_mean"] == 91.0 and table.loc["clean", "delta_vs_clean_mean"] == 0.0
    assert table.loc["class_sorted", "delta_vs_clean_mean"] == pytest.approx(1.5)
    assert table.loc["class_sorted", "delta_vs_clean_std"] == pytest.approx(0.5 ** 0.5)
    assert table.loc["class_sorted", "n"] == 2


def _record(device: str, top1: float = 84.30, loss: float = 0.5, sigma: float = 0.02) -> dict:
    return {"provenance": {"device": device, "git_commit": "a" * 40},
            "history": [{"epoch": 1, "train_loss": loss, "train_top1": 80.0, "sigma_mean": sigma, "seconds": 3.0}],
            "evaluations": {"class_enumeration": top1, "no_noise": top1},
            "diagnostics": {"sigma_zero_fraction": 0.0, "wrong_label_followed": 9.0, "bg_fg_sigma_ratio": float("nan")}}


def test_a_gpu_rerun_reproduces_within_the_stated_tolerances_and_a_cpu_rerun_only_exactly():
    from pipeline_src.results.collect import GPU_RELATIVE, GPU_TOP1_POINTS, measured

    committed = measured(_record("cpu"))
    exact = _record("cpu")
    exact["diagnostics"]["bg_fg_sigma_ratio"] = None
    assert measured(exact) == measured({**exact, "provenance": {"device": "cpu", "git_commit": "b" * 40}})
    assert measured({**exact, "evaluations": {"class_enumeration": 84.30 + 1e-9, "no_noise": 84.30}}) != measured(exact)

    close = 0.9 * GPU_TOP1_POINTS
    assert measured(_record("cuda", top1=84.30 + close, loss=0.5 * (1 + 0.9 * GPU_RELATIVE))) == committed
    assert measured(_record("cuda:0", top1=84.30 - close, sigma=0.02 * (1 - 0.9 * GPU_RELATIVE))) == committed
    assert committed == measured(_record("cuda", top1=84.30 + close))  # the rule is symmetric
    assert measured(_record("cuda", top1=84.30 + 1.1 * GPU_TOP1_POINTS)) != committed
    assert measured(_record("cuda", loss=0.5 * (1 + 1.1 * GPU_RELATIVE))) != committed
    assert measured(_record("cuda", sigma=0.02 * (1 + 1.1 * GPU_RELATIVE))) != committed
    longer = _record("cuda")
    longer["history"].append({**longer["history"][0], "epoch": 2})
    assert measured(longer) != committed  # another number of epochs, or another eval mode, never reproduces
    assert measured({**_record("cuda"), "evaluations": {"no_noise": 84.30}}) != committed


def test_collect_keeps_the_committed_record_for_a_gpu_rerun_within_tolerance(tmp_path):
    params, run, key, source, target = _one_run_in_results_and_report(tmp_path)

    def finished(device, top1):
        return json.dumps({"params": json.loads(run.to_json()), **_record(device, top1=top1)}, allow_nan=True)

    source.write_text(finished("cpu", 84.30))
    collect(params, tmp_path / "results", tmp_path / "report")
    source.write_text(finished("cuda", 84.40))  # a GPU rerun 0.1 points off: reproduced, record kept
    rerun = collect(params, tmp_path / "results", tmp_path / "report")
    assert (rerun.copied, rerun.reproduced) == ([], [key])
    assert json.loads(target.read_text())["provenance"]["device"] == "cpu"
    source.write_text(finished("cuda", 84.60))  # 0.3 points off: other numbers, the record is replaced
    assert collect(params, tmp_path / "results", tmp_path / "report").copied == [key]
    assert json.loads(target.read_text())["provenance"]["device"] == "cuda"


def _one_run_in_results_and_report(tmp_path):
    """The params' first run, and where a results folder and a report folder under tmp_path keep it."""
    params = load_params(PARAMS)
    run = expand_runs(params)[0]
    key = f"{run.experiment_set}/{run.run_id}"
    source = tmp_path / "results" / "runs" / key / "metrics.json"
    source.parent.mkdir(parents=True)
    return params, run, key, source, tmp_path / "report" / "runs" / key / "metrics.json"


def test_the_nearest_reading_to_a_papers_baseline_is_named_per_column_and_reproduced_ones_listed():
    rows = [  # table, row, column, reading, paper, mean, n, verdict
        ("joint", "baseline", "fmnist/sr", "ours", 74.97, 84.34, 5, "differs (higher)"),
        ("joint", "baseline", "fmnist/sr", "sgd_plain", 74.97, 75.92, 5, "inconclusive"),
        ("frozen", "baseline", "fmnist/sr", "sgd_plain", 74.97, 75.92, 5, "inconclusive"),  # the same runs
        ("joint", "baseline", "fmnist/dnn3", "ours", 81.57, 88.83, 5, "differs (higher)"),
        ("joint", "baseline", "fmnist/dnn3", "sgd_code", 81.57, 81.40, 3, "reproduced"),
        ("joint", "baseline", "fmnist/dnn3", "sgd_plain", 81.57, 73.07, 5, "differs (lower)"),
        ("joint", "vpn_dnn3", "fmnist/dnn3", "sgd_plain", 82.00, 82.00, 5, "reproduced"),  # not a baseline row
    ]
    keyed = pd.DataFrame(rows, columns=["table", "row", "column", "reading", "paper", "mean", "n", "verdict"])
    lines = nearest_baselines(keyed).splitlines()[2:]
    assert lines == [
        "- fmnist/dnn3: paper 81.57; nearest under `sgd_code`, 81.40 (-0.17, n=3) of 3 readings; "
        "`reproduced` under `sgd_code`",
        "- fmnist/sr: paper 74.97; nearest under `sgd_plain`, 75.92 (+0.95, n=5) of 2 readings; "
        "`reproduced` under none",
    ]
    assert nearest_baselines(keyed[keyed["row"] != "baseline"]).startswith("No baseline row")


def test_the_committed_report_is_an_index_with_one_page_per_claim_and_links_that_resolve():
    import re

    from pipeline_src.results.audit import load_claims

    index = REPORT / "README.md"
    assert len(index.read_bytes()) <= 20_000
    claims = load_claims(REPO_ROOT / "params" / "claims.yaml")
    ids = [f"{spec['paper']}.{name}" for name, spec in claims["tables"].items()] + [c["id"] for c in claims["effects"]]
    pages = sorted((REPORT / "claims").glob("*.md"))
    assert sorted(p.stem for p in pages) == sorted(ids)
    assert all(f"](claims/{claim_id}.md)" in index.read_text() for claim_id in ids)
    def anchors(md: Path) -> set[str]:  # GitHub's heading slugs
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", md.read_text(), flags=re.M)}

    tables = REPORT / "tables" / "README.md"
    set_tables = [t.name for t in (REPORT / "tables").glob("*.md") if not t.name.startswith("paper_")]
    assert set_tables and all(f"]({name})" in tables.read_text() for name in set_tables if name != "README.md")
    for page in [index, tables, *pages]:
        for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.relative_to(REPORT)} links {target}, which is not there"
                if anchor and target.endswith(".md"):
                    assert anchor in anchors(page.parent / target), f"{page.relative_to(REPORT)} links {target}#{anchor}"


def test_a_tables_page_gives_each_cells_per_seed_values_and_a_claim_without_runs_says_where_it_is_declared():
    runs = pd.read_csv(REPORT / "tables" / "vpn_joint_runs.csv")
    seeds = runs[(runs["dataset"] == "fmnist") & (runs["model"] == "sr") & (runs["method"] == "baseline")
                 & (runs["eval_mode"] == "no_noise")].sort_values("seed")["top1"]
    assert len(seeds) == 5
    page = (REPORT / "claims" / "vpn.joint_fmnist_cifar10.md").read_text()
    assert ", ".join(f"{v:.2f}" for v in seeds) in page

    from pipeline_src.results.not_run import not_run_reason

    paper = {"device": "cuda", "datasets": {"inet": {"paper_name": "imagenet"}, "tiny": {}},
             "models": {"vit": {"paper_name": "vit_b"}},
             "experiment_sets": {"main": {"kind": "noisynn_main", "datasets": ["inet"], "models": ["vit"]},
                                 "small": {"kind": "noisynn_main", "datasets": ["tiny"], "models": ["vit"]},
                                 "other": {"datasets": ["tiny"], "models": ["vit"]}}}
    assert not_run_reason(paper, {"noisynn_main"}) == \
        "not run: needs imagenet, tiny and a GPU (params/paper.yaml, sets main, small)"
    # datasets this report has runs on are not what it lacks; a table cell names its own dataset only
    assert not_run_reason(paper, {"noisynn_main"}, have=frozenset({"tiny"})).startswith("not run: needs imagenet and a GPU")
    assert not_run_reason(paper, {"noisynn_main"}, ["tiny/vit_b"], frozenset({"tiny"})).startswith("not run: needs a GPU")
    assert not_run_reason(paper, {"noisynn_main"}, ["imagenet/vit_b"]).endswith("(params/paper.yaml, set main)")
    assert not_run_reason({**paper, "device": "auto"}, {"other"}) == "not run: needs tiny (params/paper.yaml, set other)"
    assert not_run_reason(paper, {"vpn_joint"}) == "not run: no params file declares its runs"
    from pipeline_src.results.not_run import smoke_text

    assert smoke_text(paper, {"noisynn_main"}).endswith("smoke scale in `make reproduce` (imagenet, tiny)")
    assert smoke_text(paper, {"noisynn_main"}, ["cifar10/vit_b"]) == "none"  # its sets run other columns


def test_a_claim_pages_cells_give_the_p_against_the_papers_effect_that_their_verdict_rests_on():
    """A cell whose interval ends below the paper's effect but reads `inconclusive` shows why: its p vs paper."""
    cells = pd.read_csv(REPORT / "effects_cells.csv").set_index(["claim_id", "reading", "cell"])
    page = (REPORT / "claims" / "vpn.improves.md").read_text()
    rows = [[field.strip() for field in line.strip("|").split("|")] for line in page.splitlines()
            if line.startswith("| ") and "fmnist/" in line and " - " in line]
    header = next([f.strip() for f in line.strip("|").split("|")] for line in page.splitlines()
                  if line.startswith("| reading") and "p vs paper" in line)
    shown = {(row[0], row[1]): dict(zip(header, row)) for row in rows}
    cell = shown[("sgd_default", "fmnist/dnn3: vpn_dnn3 [class_enumeration] - baseline [no_noise]")]
    p = cells.loc[("vpn.improves", "sgd_default", "fmnist/dnn3: vpn_dnn3 [class_enumeration] - baseline [no_noise]"),
                  "p_paper_adj"]
    assert cell["p vs paper"] == f"{p:.3g}" and cell["verdict"] == "inconclusive" and p >= 0.05
