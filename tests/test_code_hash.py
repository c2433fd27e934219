"""Each rule's code hash covers the package modules its command may import, found with ast: the
closure on the real package, what a hash follows, and a DAG that reruns training after an edit of a
module training imports and not after an edit of a results-only module."""
import copy
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline_src.plumbing import code_hash
from pipeline_src.plumbing.code_hash import command_code, command_modules

STAGES = {"prepare": "prepare_data", "train": "train", "evaluate": "evaluate", "aggregate": "aggregate_set"}


def names(command):
    return {path.relative_to(code_hash.PACKAGE_DIR).with_suffix("").as_posix() for path in command_modules(command)}


def test_training_runs_the_modules_no_hand_list_named():
    train = names("train")
    # stream and distributed were missing from the hand-kept list; noisynn and vpn are imported only
    # through methods.registry.REGISTRY's "module:class" strings
    assert {"data/stream", "training/distributed", "methods/vpn", "methods/generators", "methods/noisynn", "training/train",
            "methods/registry", "methods/base", "data/prepared", "data/fashion_mnist", "methods/models",
            "methods/sites"} <= train
    assert {"results/aggregate", "results/audit", "results/verdicts", "results/report", "results/plots",
            "methods/model_check", "spec/preflight", "plumbing/code_hash"}.isdisjoint(train)
    assert not {name for name in train if name.startswith(("evaluation/", "tracking/audit"))}


def test_evaluation_runs_the_methods_and_no_training_module():
    evaluate = names("evaluate")
    assert {"evaluation/evaluate", "methods/vpn", "methods/generators", "methods/noisynn", "data/prepared",
            "spec/predictions"} <= evaluate
    assert {"tracking/live", "tracking/runs", "tracking/store", "tracking/entities"} <= evaluate  # its MLflow run
    assert not {name for name in evaluate if name.startswith(("training/", "results/"))}


def test_results_code_runs_no_training_module():
    aggregate = names("aggregate")
    assert {"results/aggregate", "results/plots"} <= aggregate
    assert not {name for name in aggregate if name.startswith(("training/", "methods/", "data/"))}
    check_models = names("check-models")
    assert {"methods/model_check", "methods/models", "methods/sites"} <= check_models
    assert "training/train" not in check_models


def test_unknown_command_is_one_line():
    with pytest.raises(ValueError, match=r"^python -m pipeline_src has no command 'trian' \(no cmd_trian in __main__.py\)$"):
        command_code("trian")


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package that code_hash reads instead of the real one."""
    package = tmp_path / "pipeline_src"
    shutil.copytree(code_hash.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_hash, "PACKAGE_DIR", package)
    monkeypatch.setattr(code_hash, "MAIN", package / "__main__.py")
    return package


def test_a_hash_follows_its_closure_and_nothing_else(package_copy):
    before = {command: command_code(command) for command in STAGES}
    with open(package_copy / "training" / "distributed.py", "a") as module:
        module.write("\nEDITED = 1\n")
    after = {command: command_code(command) for command in STAGES}
    assert after["train"] != before["train"] and after["aggregate"] == before["aggregate"]

    aggregate = package_copy / "results" / "aggregate.py"
    aggregate.write_text(aggregate.read_text() + "\nEDITED = 1\n")
    assert command_code("aggregate") != after["aggregate"] and command_code("train") == after["train"]


def test_a_new_module_counts_once_imported_and_as_a_registry_string(package_copy):
    (package_copy / "methods" / "newmethod.py").write_text("X = 1\n")
    before = command_code("train")
    assert "methods/newmethod" not in names("train")
    registry = package_copy / "methods" / "registry.py"
    registry.write_text(registry.read_text().replace('"vpn": "pipeline_src.methods.vpn:VPNMethod",',
                                                     '"vpn": "pipeline_src.methods.vpn:VPNMethod",\n    "new": "pipeline_src.methods.newmethod:X",'))
    assert "methods/newmethod" in names("train") and command_code("train") != before


def test_the_cli_function_of_another_command_is_not_training_code(package_copy):
    main = package_copy / "__main__.py"
    before = command_code("train")
    main.write_text(main.read_text().replace('print(f"{args.set}: {len(table)} rows', 'print(f"{args.set}: {len(table)} rows!'))
    assert command_code("train") == before
    main.write_text(main.read_text().replace("def cmd_train(args) -> None:\n", "def cmd_train(args) -> None:\n    edited = 1\n"))
    assert command_code("train") != before


def test_comments_docstrings_and_layout_rerun_nothing_a_changed_constant_does(package_copy):
    evaluate = package_copy / "evaluation" / "evaluate.py"
    text = evaluate.read_text()
    before = {command: command_code(command) for command in STAGES}
    first_def = text.index("\ndef ")
    evaluate.write_text("# a comment\n" + text[:first_def]
                        + "\n\n# another comment, and blank lines\n\n" + text[first_def:].replace('"""', '"""Edited: ', 1))
    assert {command: command_code(command) for command in STAGES} == before
    assert "workers=threads or 1)" in text
    evaluate.write_text(text.replace("workers=threads or 1)", "workers=threads or 2)", 1))
    after = {command: command_code(command) for command in STAGES}
    assert after["evaluate"] != before["evaluate"] and after["aggregate"] == before["aggregate"]


def test_hashing_imports_nothing():
    code = ("import sys; from pipeline_src.plumbing.code_hash import command_code; [command_code(c) for c in "
            "('prepare', 'train', 'aggregate', 'check-models')]; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline_src.') and m not in ('pipeline_src.plumbing', 'pipeline_src.plumbing.code_hash')),"
            " 'torch' in sys.modules, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False False"


ONE_RUN = {"scale": "embedded_default", "device": "cpu", "seeds": [0],
           "training": {"epochs": 1, "batch_size": 64, "eval_batch_size": 128},
           "datasets": {"digits": {"source": "digits"}},
           "models": {"sr": {"arch": "sr"}, "dnn3": {"arch": "dnn3", "hidden": 16}},
           "experiment_sets": {
               "baseline": {"datasets": ["digits"], "models": ["sr"],
                            "methods": [{"label": "baseline", "name": "baseline"}]},
               "eval_protocol": {"datasets": ["digits"], "models": ["dnn3"],
                                 "methods": [{"label": "clean_train", "name": "noisynn",
                                              "noise": {"kind": "optimal_q"}, "apply_at": "test",
                                              "test_batches": "class_sorted"}]}}}


@pytest.mark.slow
def test_each_edit_reruns_the_stages_it_changes_and_nothing_else(tmp_path):
    """In a copy of the repository (the tree others work in stays untouched): two finished runs, then each
    edit's dry run, then the edit undone."""
    from helpers import SNAKEMAKE, job_counts, repo_copy, run

    repo = repo_copy(tmp_path)
    params = tmp_path / "one.yaml"

    def write_params(change=lambda p: None):
        spec = {**copy.deepcopy(ONE_RUN), "results_dir": str(tmp_path / "results")}
        change(spec)
        params.write_text(yaml.safe_dump(spec))

    def dry_run():
        out = run(SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(params), cwd=repo)
        return job_counts(out) if "Job stats:" in out else {}

    write_params()
    run(SNAKEMAKE, "--cores", "2", "--configfile", str(params), cwd=repo)

    def jobs_after_editing(module, edit=b"\nEDITED = 1\n"):
        path = repo / "pipeline_src" / module
        original = path.read_bytes()
        path.write_bytes(original + edit)
        try:
            return dry_run()
        finally:
            path.write_bytes(original)

    assert jobs_after_editing("results/report.py") == {}  # no rule runs it
    for module in ("data/stream.py", "training/distributed.py", "training/train.py", "methods/noisynn.py"):
        assert jobs_after_editing(module).get("train") == 2, module  # stream, distributed: missed by a hand list
    assert jobs_after_editing("evaluation/evaluate.py", b"\n# a comment cannot change a number\n") == {}
    measuring = jobs_after_editing("evaluation/evaluate.py")
    assert measuring.get("evaluate") == 2 and "train" not in measuring and "prepare_data" not in measuring
    results_only = jobs_after_editing("results/aggregate.py")
    assert results_only.get("aggregate_set") == 2 and "train" not in results_only and "evaluate" not in results_only

    # a label only the audit reads: renaming the papers' column retrains nothing, the audit reruns
    write_params(lambda p: p["models"]["sr"].update(paper_name="softmax_regression"))
    relabelled = dry_run()
    assert relabelled.get("audit") == 1 and not {"train", "evaluate", "prepare_data"} & set(relabelled)

    # one more test protocol and test batch size: the NoisyNN run is evaluated again, never retrained
    def more_protocols(p):
        p["experiment_sets"]["eval_protocol"]["methods"][0].update(eval_protocols=["none", "shuffled"],
                                                                   eval_batch_sizes=[4])
    write_params(more_protocols)
    measured_again = dry_run()
    assert measured_again.get("evaluate") == 1 and measured_again.get("aggregate_set") == 1
    assert "train" not in measured_again and "prepare_data" not in measured_again
