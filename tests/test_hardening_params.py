"""Issue 38, params half: nothing from params reaches a shell line or a path unchecked, run ids cannot
collide, numbers are finite, and what would fail late (or be ignored) stops at `check` with one line
naming the key. Each case here passed `check` on b9881d5."""
import copy
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline_src.__main__ import main
from pipeline_src.spec.config import REPO_ROOT, expand_runs, validate_params

from helpers import ENV, SNAKEMAKE, TINY, snakemake

RESULTS_ANYWHERE_ENV = "PIPELINE_RESULTS_ANYWHERE"  # spec/config.py; spelled out, so this file runs on older code
NAME_RULE = "letters, digits and _ only (names become folders, shell words and run ids, which '-' separates)"


def check(tmp_path, params: dict, capsys) -> tuple[int, list[str]]:
    """`python -m pipeline_src check` on these params: exit code and stderr lines."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    code = main(["check", "--params", str(path)])
    return code, capsys.readouterr().err.splitlines()


def tiny(**top) -> dict:
    return {**copy.deepcopy(TINY), "results_dir": "results/test_hardening", **top}


def with_set(params: dict, name: str, spec: dict) -> dict:
    params["experiment_sets"][name] = spec
    return params


def renamed(mapping: dict, old: str, new: str) -> dict:
    return {new if k == old else k: v for k, v in mapping.items()}


def _label_newline():
    p = tiny()
    p["experiment_sets"]["baseline"]["methods"][0]["label"] = "baseline\n"
    return p


def _lr(value):
    p = tiny()
    p["training"]["optimizer"] = {"lr": value}
    return p


def _strength_nan():
    p = tiny()
    p["experiment_sets"]["noisynn_main"]["methods"][0]["noise"]["strength"] = float("nan")
    return p


def _model_renamed(new):
    p = tiny()
    p["models"] = renamed(p["models"], "sr", new)
    p["experiment_sets"]["baseline"]["models"] = [new, "dnn3"]
    return p


def _set_renamed(new):
    p = tiny()
    p["experiment_sets"] = renamed(p["experiment_sets"], "baseline", new)
    p["experiment_sets"][new]["kind"] = "baseline"
    return p


# (params, the one line `check` must print)
CASES = {
    "results_dir injection": (
        tiny(results_dir="results_x$(touch INJECTED)"),
        "error: invalid params: results_dir: 'results_x$(touch INJECTED)' is not allowed: a relative path of folder "
        "names made of letters, digits, _, . and - (not first), separated by /"),
    "set name with a command": (
        _set_renamed("x$(touch INJECTED)"),
        f"error: invalid params: experiment_sets: 'x$(touch INJECTED)' is not allowed: {NAME_RULE}"),
    "set my-set": (_set_renamed("my-set"), f"error: invalid params: experiment_sets: 'my-set' is not allowed: {NAME_RULE}"),
    "model s r": (_model_renamed("s r"), f"error: invalid params: models: 's r' is not allowed: {NAME_RULE}"),
    "label with a final newline": (
        _label_newline(),
        "error: invalid params: experiment_sets.baseline.methods.0.label: 'baseline\\n' is not allowed: letters, "
        "digits, _ and . only (a label becomes part of run ids, which '-' separates)"),
    "lr nan": (_lr(float("nan")), "error: invalid params: training.optimizer.lr: nan is not a finite number"),
    "lr inf": (_lr(float("inf")), "error: invalid params: training.optimizer.lr: inf is not a finite number"),
    "noise strength nan": (
        _strength_nan(),
        "error: invalid params: experiment_sets.noisynn_main.methods.0.noise.strength: nan is not a finite number"),
    "batch_size 1e20": (
        tiny(training={"batch_size": 10**20}),
        "error: invalid params: training.batch_size: 100000000000000000000 is out of range: integers lie in "
        "[-2**63, 2**63 - 1], what torch takes"),
    "seed 2**64": (
        tiny(seeds=[2**64]),
        "error: invalid params: seeds.0: 18446744073709551616 is out of range: integers lie in [-2**63, 2**63 - 1], "
        "what torch takes"),
    "dataset name with the run-id separator": (
        {**tiny(), "datasets": {"x-y": {"source": "digits"}, "x": {"source": "digits"}},
         "models": {"m": {"arch": "sr"}, "y-m": {"arch": "sr"}},
         "experiment_sets": {"baseline": {"datasets": ["x-y", "x"], "models": ["m", "y-m"],
                                          "methods": [{"label": "baseline", "name": "baseline"}]}}},
        f"error: invalid params: datasets: 'x-y' is not allowed: {NAME_RULE}"),
    "two grid values, one run id": (
        with_set(tiny(), "layer_sweep", {"datasets": ["digits"], "models": ["dnn3"], "seeds": [0], "methods": [
            {"label": "shift", "name": "noisynn", "grid": {"site": ["block:1", "block1"]}}]}),
        "error: invalid params: experiment_sets.layer_sweep: run id digits-dnn3-shift-siteblock1-s0 names two runs, "
        "(dataset digits, model dnn3, method shift, site 'block:1', seed 0) and (dataset digits, model dnn3, method "
        "shift, site 'block1', seed 0): rename one, or drop one grid value"),
    "grid value with shell characters": (
        with_set(tiny(), "layer_sweep", {"datasets": ["digits"], "models": ["dnn3"], "seeds": [0], "methods": [
            {"label": "shift", "name": "noisynn", "grid": {"site": ["fc2;touch INJECTED"]}}]}),
        "error: invalid params: experiment_sets.layer_sweep: run id 'digits-dnn3-shift-sitefc2;touchINJECTED-s0' of "
        "(dataset digits, model dnn3, method shift, site 'fc2;touch INJECTED', seed 0) may hold only letters, digits, "
        "_, . and -: change the grid values that bring the others"),
    "grid key with a command": (
        with_set(tiny(), "layer_sweep", {"datasets": ["digits"], "models": ["dnn3"], "seeds": [0], "methods": [
            {"label": "shift", "name": "noisynn", "grid": {"noise.str$(touch INJECTED)": [0.1]}}]}),
        "error: invalid params: experiment_sets.layer_sweep.methods.0.grid: 'noise.str$(touch INJECTED)' is not "
        "allowed: a method key, dotted into noise or augment (noise.strength): letters, digits and _ between dots"),
    "frozen base_set with a command": (
        with_set(tiny(), "vpn_frozen", {"datasets": ["digits"], "models": ["sr"], "methods": [
            {"label": "vpn", "name": "vpn", "mode": "frozen", "base_set": "a;b", "base_label": "baseline"}]}),
        f"error: invalid params: experiment_sets.vpn_frozen.methods.0.base_set: 'a;b' is not allowed: {NAME_RULE}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_stop_at_check_with_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(RESULTS_ANYWHERE_ENV, raising=False)
    params, expected = CASES[case]
    code, lines = check(tmp_path, params, capsys)
    assert code == 2 and lines == [expected]


@pytest.mark.parametrize("how", ["absolute", "climbing out"])
def test_results_outside_the_project_need_the_explicit_switch(how, tmp_path, capsys, monkeypatch):
    """(b9881d5 took both, and its check wrote its model cache there: as root, results_dir /etc made /etc/preflight;
    these point into tmp_path, so that a regression writes nowhere else.)"""
    outside = tmp_path / "results"
    results_dir = str(outside) if how == "absolute" else os.path.relpath(outside, Path.cwd())
    assert ".." in Path(results_dir).parts or Path(results_dir).is_absolute()
    monkeypatch.setenv(RESULTS_ANYWHERE_ENV, "1")
    params = tiny(results_dir=results_dir)
    assert validate_params(params)["results_dir"] == results_dir
    monkeypatch.delenv(RESULTS_ANYWHERE_ENV)
    code, lines = check(tmp_path, params, capsys)
    assert code == 2 and lines == [
        f"error: invalid params: results_dir: '{results_dir}' may leave the project; give a relative path without '..' "
        f"(or set {RESULTS_ANYWHERE_ENV}=1 to write results outside it)"]
    assert not outside.exists()


def test_committed_params_keep_their_names_and_run_ids(monkeypatch):
    """Names and run ids of the committed params files all pass, unchanged in form."""
    monkeypatch.delenv(RESULTS_ANYWHERE_ENV, raising=False)
    from pipeline_src.spec.config import load_params

    ids = {}
    for name in ("default", "paper", "fashion_mnist"):
        ids[name] = {(r.experiment_set, r.run_id) for r in expand_runs(load_params(REPO_ROOT / f"params/{name}.yaml"))}
    assert ("vpn_joint_readings", "fmnist-dnn3-vpn_dnn3.sgd_code-s0") in ids["fashion_mnist"]
    assert ("layer_sweep", "digits-vit-linear_shift-siteblock0-s0") in ids["default"]
    assert ("harmful_noise", "digits-dnn3-gaussian_image-strength0.1-s0") in ids["default"]


# ---------------------------------------------------------------- through Snakemake: nothing runs

@pytest.mark.parametrize("target, params", [
    # the prepare rule's output paths and log carry results_dir into its shell line
    ("prepared", tiny(results_dir="results_x$(touch {canary})")),
    # init_tracking's shell line carries every set name (--sets)
    ("tracking", _set_renamed("b$(touch {canary})")),
])
def test_injection_through_snakemake_runs_nothing(target, params, tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_ANYWHERE_ENV, raising=False)
    canary = tmp_path / "INJECTED"
    text = yaml.safe_dump(params, sort_keys=False).replace("{canary}", str(canary))
    path = tmp_path / "params.yaml"
    path.write_text(text)
    results = yaml.safe_load(text)["results_dir"]
    goal = f"{results}/prepared/digits/data.npz" if target == "prepared" else f"{results}/tracking.json"
    env = {k: v for k, v in ENV.items() if k != RESULTS_ANYWHERE_ENV}
    out = subprocess.run([SNAKEMAKE, goal, "--cores", "1", "--configfile", str(path)], capture_output=True, text=True,
                         cwd=REPO_ROOT, env=env)
    assert not canary.exists()
    assert out.returncode != 0 and "Traceback" not in out.stderr
    expected = {"prepared": f"error: invalid params: results_dir: 'results_x$(touch {canary})' is not allowed: a "
                            "relative path of folder names made of letters, digits, _, . and - (not first), separated by /",
                "tracking": f"error: invalid params: experiment_sets: 'b$(touch {canary})' is not allowed: {NAME_RULE}"}
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [expected[target]]


# ---------------------------------------------------------------- what only a built model can tell

def _sweep(model_cfg: dict, sites: list[str], dataset="digits") -> dict:
    p = tiny()
    p["models"]["net"] = model_cfg
    return with_set(p, "layer_sweep", {"datasets": [dataset], "models": ["net"], "seeds": [0, 1], "methods": [
        {"label": "shift", "name": "noisynn", "grid": {"site": sites}}]})


def test_two_sites_resolving_to_one_module_are_refused(tmp_path, capsys):
    code, lines = check(tmp_path, _sweep({"arch": "test_resnet", "small_stem": True},
                                         ["stage:0", "stage:3", "stage:-1"]), capsys)
    assert code == 2 and lines == [
        "error: invalid params: experiment_sets.layer_sweep runs digits-net-shift-sitestage3-s0 and "
        "digits-net-shift-sitestage-1-s0: sites 'stage:3' and 'stage:-1' are both layer4 of ResNet, one experiment "
        "under two run ids: keep one of the sites"]


@pytest.mark.parametrize("arch", ["convnext_atto", "mobilenetv3_small_050", "efficientnet_b0", "fastvit_t8"])
def test_small_stem_without_a_stem_to_change_is_refused(arch, tmp_path, capsys):
    p = tiny()
    p["models"]["net"] = {"arch": arch, "small_stem": True}
    p["experiment_sets"]["baseline"]["models"] = ["net"]
    code, lines = check(tmp_path, p, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: invalid params: models.net ({arch}) cannot be built: small_stem: ")
    assert lines[0].endswith(f"({arch}) has no stem this pipeline changes (a ResNet's conv1 and max-pool, or a ViT's "
                             "patch size); remove small_stem")


def test_pretrained_without_local_weights_is_refused_at_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))  # the model check's subprocess inherits it
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch"))
    p = tiny()
    p["models"]["net"] = {"arch": "resnet10t", "timm_kwargs": {"pretrained": True}}
    p["experiment_sets"]["baseline"]["models"] = ["net"]
    code, lines = check(tmp_path, p, capsys)
    assert code == 2 and lines == [
        "error: invalid params: models.net.timm_kwargs.pretrained: the weights of resnet10t (Hugging Face Hub "
        "timm/resnet10t.c3_in1k) are not on this machine, and jobs do not download them: fetch them into the cache "
        "once (python -c \"import timm; timm.create_model('resnet10t', pretrained=True)\") or save a state_dict and "
        "name it in models.net.weights_file"]


def test_fashion_mnist_path_without_its_files_is_refused(tmp_path, capsys):
    p = tiny()
    p["datasets"]["fm"] = {"source": "fashion-mnist", "path": "/etc"}
    p["experiment_sets"]["baseline"]["datasets"] = ["fm"]
    code, lines = check(tmp_path, p, capsys)
    assert code == 2 and lines == [
        "error: invalid params: datasets.fm.path: /etc does not hold the Fashion-MNIST files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each .gz or not), and prepare "
        "would read another folder instead: point path at the folder of the four files, or remove it "
        "(data/raw/fashion-mnist is searched without it)"]


def test_the_check_knows_the_readers_fashion_mnist_files():
    from pipeline_src.data.fashion_mnist import FASHION_MNIST_FILES as read
    from pipeline_src.spec.datasets import FASHION_MNIST_FILES as checked

    assert list(checked) == list(read)


def test_fastvit_and_other_models_without_img_size_train(tmp_path):
    """FastViT has "vit" in its name and takes no img_size; it runs on 28 px as it is."""
    import torch

    from pipeline_src.methods.models import build_model

    model = build_model("fastvit_t8", (1, 28, 28), 10)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    vit = build_model("test_vit", (3, 16, 16), 4)  # takes img_size, and gets the image's
    assert vit(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_fastvit_passes_check_and_its_sites_resolve(tmp_path, capsys):
    """b9881d5 refused it: FastVit.__init__() got an unexpected keyword argument 'img_size'."""
    p = _sweep({"arch": "fastvit_t8"}, ["default", "stage:-1", "block:0"], dataset="fm")
    p["results_dir"] = str(tmp_path / "results")  # a clean check is cached there (conftest allows it outside)
    p["datasets"]["fm"] = {"source": "fashion-mnist"}
    code, lines = check(tmp_path, p, capsys)
    assert code == 0 and lines == []


# ---------------------------------------------------------------- a diverged training writes nothing

def test_training_whose_loss_becomes_nan_stops_naming_run_and_epoch(tmp_path, capsys, digits_dir, make_run):
    data = digits_dir
    run = make_run(optimizer={"name": "sgd", "lr": 1e30, "schedule": "none"})
    out = tmp_path / "run"
    code = main(["train", "--run-json", run.to_json(), "--data", str(data), "--model", str(out / "model.pt")])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and [line for line in lines if line.startswith("error:")] == [
        "error: run digits-dnn3-baseline-s0: the training loss became nan in epoch 1; nothing written for this run "
        "(try a lower lr)"]
    assert not any(out.iterdir())  # no model.pt, trained.json or checkpoint
    fine = replace(run, optimizer={**run.optimizer, "lr": 0.01}, epochs=1)
    assert main(["train", "--run-json", fine.to_json(), "--data", str(data), "--model", str(out / "model.pt")]) == 0


# ---------------------------------------------------------------- predictions.npz is an input

def test_the_audit_takes_every_runs_predictions_as_input(tmp_path):
    """A deleted predictions.npz is made again by its evaluate job (the audit reads it through the runs
    tables), instead of the audit silently falling back to seeds only (test_workflow's tiny run deletes one)."""
    params = {**copy.deepcopy(TINY), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = snakemake("-n", "--cores", "1", "--configfile", str(path))
    inputs = re.search(r"^rule audit:\n    input: (.*)$", out.stdout + out.stderr, flags=re.M).group(1).split(", ")
    predictions = sorted(Path(p).relative_to(tmp_path / "results/runs").as_posix() for p in inputs
                         if p.endswith("predictions.npz"))
    assert predictions == sorted(f"{s}/{r}/predictions.npz" for s, r in
                                 {(run.experiment_set, run.run_id) for run in expand_runs(validate_params(params))})


def test_dry_run_with_results_outside_the_project_writes_nothing_there(tmp_path):
    """b9881d5's dry run wrote the model check's cache into results_dir/preflight wherever it pointed."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny(), sort_keys=False))
    outside = tmp_path / "outside"
    env = {k: v for k, v in ENV.items() if k != RESULTS_ANYWHERE_ENV}
    out = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(path), "--config",
                          f"results_dir={outside}"], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert out.returncode != 0 and not outside.exists()
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        f"error: invalid params: results_dir: '{outside}' may leave the project; give a relative path without '..' "
        f"(or set {RESULTS_ANYWHERE_ENV}=1 to write results outside it)"]


UNREADABLE = {  # file text, Snakemake's own sentence, the line `check` prints (after "params file <path> ")
    "yaml syntax error": ("a: [1,\n", "Config file is not valid JSON or YAML.",
                          "is not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"),
    "empty file": ("", "Config file must be given as JSON or YAML with keys at top level.",
                   "is empty: it must hold a mapping of keys, as params/default.yaml does"),
    "top-level list": ("- a\n- b\n", "Config file must be given as JSON or YAML with keys at top level.",
                       "must hold a mapping of keys, not a list"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_params_file_bare_snakemake_and_check(case, tmp_path, capsys):
    """Bare `snakemake --configfile` reads the file before this workflow's code runs, so its words are
    Snakemake's: docs/usage.md quotes them and points to `check`, which names the file and the line."""
    text, snakemake_says, check_says = UNREADABLE[case]
    path = tmp_path / "params.yaml"
    path.write_text(text)
    out = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(path)], capture_output=True,
                         text=True, cwd=REPO_ROOT, env=ENV)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and snakemake_says in said and "Job stats" not in said
    assert f"`{snakemake_says}`" in " ".join((REPO_ROOT / "docs" / "usage.md").read_text().split())
    assert main(["check", "--params", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: params file {path} {check_says}"]
