"""Params: schema errors are one clear line; the run table expands as declared."""
import copy
import subprocess
import sys

import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT, ParamsError, expand_runs, load_params, validate_params
from pipeline_src.spec.preflight import base_run_of

DEFAULT = REPO_ROOT / "params" / "default.yaml"
PAPER = REPO_ROOT / "params" / "paper.yaml"


@pytest.fixture(scope="module")
def raw_default():
    return yaml.safe_load(DEFAULT.read_text())


@pytest.mark.parametrize("path", [DEFAULT, PAPER, REPO_ROOT / "params" / "fashion_mnist.yaml"])
def test_shipped_params_validate_and_expand(path):
    params = load_params(path)
    runs = expand_runs(params)
    assert runs, "no runs declared"
    assert len({(r.experiment_set, r.run_id) for r in runs}) == len(runs), "run ids collide"
    if path == PAPER:
        assert {r.set_kind for r in runs} >= {"baseline", "noisynn_main", "harmful_noise", "layer_sweep",
                                              "strength_sweep", "eval_protocol", "vpn_joint", "vpn_frozen",
                                              "vpn_background"}


def test_defaults_are_filled(raw_default):
    raw = copy.deepcopy(raw_default)
    del raw["seeds"], raw["device"]
    params = validate_params(raw)
    assert params["seeds"] == [0, 1, 2] and params["device"] == "auto"


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["training"].update(epoch=3), "training: unknown key 'epoch'; allowed keys: batch_size, compile, epochs"),
    (lambda p: p["training"].update(epochs=-1), "training.epochs: -1 is less than the minimum of 1"),
    (lambda p: p["training"].update(batch_size="big"), "training.batch_size: 'big' is not of type 'integer'"),
    (lambda p: p["datasets"]["digits"].update(source="mnist"),
     "datasets.digits.source: 'mnist' is not allowed; allowed values: digits, fashion-mnist"),
    (lambda p: p["experiment_sets"]["baseline"]["models"].append("resnt"),
     "experiment_sets.baseline.models: 'resnt' is not defined; defined models: sr, dnn3, resnet, vit"),
    (lambda p: p["experiment_sets"]["noisynn_main"]["methods"][1].update(apply_at="always"),
     "'always' is not allowed; allowed values: train, test, both"),
])
def test_bad_params_give_one_line_naming_the_key(raw_default, mutate, expected):
    raw = copy.deepcopy(raw_default)
    mutate(raw)
    with pytest.raises(ParamsError) as err:
        validate_params(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_grid_expands_one_run_per_value_and_seed():
    runs = expand_runs(load_params(DEFAULT), "strength_sweep")
    strengths = sorted({r.method["noise"]["strength"] for r in runs})
    assert strengths == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert len(runs) == 5 * 3
    assert "digits-vit-linear_shift-strength0.3-s1" in {r.run_id for r in runs}
    assert all(r.sweep == {"noise.strength": r.method["noise"]["strength"]} for r in runs)
    # the grid point is named in the run id only; the spec keeps the method's own label
    assert {r.method["label"] for r in runs} == {"linear_shift"}


def test_set_training_override_applies_only_to_that_set():
    params = load_params(DEFAULT)
    by_set = {r.experiment_set: r.epochs for r in expand_runs(params)}
    assert by_set["vpn_background"] == 5
    assert by_set["baseline"] == params["training"]["epochs"]


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0, 1\nmodels: {a: 1}\n")
    with pytest.raises(ParamsError, match=r"bad.yaml is not valid YAML at line 2, column 7: expected ',' or ']'"):
        load_params(bad)


def test_readings_run_every_cell_under_each_with_its_own_training():
    params = load_params(REPO_ROOT / "params" / "fashion_mnist.yaml")
    runs = {r.run_id: r for r in expand_runs(params, "vpn_joint_readings")}
    assert len(runs) == 3 * 2 * 2 * 5  # readings x models x methods x seeds
    plain, code = runs["fmnist-sr-baseline.sgd_plain-s0"], runs["fmnist-sr-baseline.adam_code-s0"]
    assert (plain.reading, plain.optimizer["name"], plain.optimizer["momentum"], plain.optimizer["lr"]) == (
        "sgd_plain", "sgd", 0.0, 0.001)
    assert (code.optimizer["name"], code.optimizer["lr"], code.optimizer["weight_decay"]) == ("adam", 0.1, 0.0005)
    assert plain.epochs == code.epochs == 40 and plain.params_hash() != code.params_hash()
    # the set without readings keeps its ids and the params' own training
    own = {r.run_id: r for r in expand_runs(params, "vpn_joint")}["fmnist-sr-baseline-s0"]
    assert own.reading == "" and own.optimizer["name"] == "adam"
    # a frozen run freezes the base trained under its own reading
    frozen = next(r for r in expand_runs(params, "vpn_frozen_readings") if r.reading == "sgd_code")
    assert base_run_of(frozen) == ("vpn_joint_readings", f"fmnist-{frozen.model}-baseline.sgd_code-s{frozen.seed}")


def test_an_undefined_reading_is_one_line_naming_the_defined_ones(raw_default):
    raw = copy.deepcopy(raw_default)
    raw["readings"] = {"sgd_plain": {"source": "ours", "training": {"optimizer": {"name": "sgd"}}}}
    raw["experiment_sets"]["baseline"]["readings"] = ["sgd_plan"]
    with pytest.raises(ParamsError, match=r"baseline.readings: 'sgd_plan' is not defined; defined readings: sgd_plain$"):
        validate_params(raw)


def test_renaming_a_paper_column_leaves_the_training_identity_alone(raw_default):
    renamed = copy.deepcopy(raw_default)
    for model in renamed["models"].values():
        model["paper_name"] = "renamed"
    before, after = (expand_runs(validate_params(copy.deepcopy(r))) for r in (raw_default, renamed))
    assert [r.to_json() for r in before] == [r.to_json() for r in after]


def test_run_config_round_trips_and_hash_tracks_params():
    run = expand_runs(load_params(DEFAULT), "baseline")[0]
    again = type(run).from_json(run.to_json())
    assert again == run and again.params_hash() == run.params_hash()
    changed = type(run).from_json(run.to_json().replace('"epochs":3', '"epochs":4'))
    assert changed.params_hash() != run.params_hash()


def run_check(raw: dict, tmp_path) -> subprocess.CompletedProcess:
    """`python -m pipeline_src check` on these params, as a user runs it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    return subprocess.run([sys.executable, "-m", "pipeline_src", "check", "--params", str(bad)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_check_command_prints_one_line_without_traceback(tmp_path, raw_default):
    raw = copy.deepcopy(raw_default)
    raw["training"]["optimizer"]["name"] = "adagrad"
    out = run_check(raw, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: invalid params: training.optimizer.name: 'adagrad' is not allowed; allowed values: adam, sgd, adamw"]


@pytest.mark.parametrize("change, expected", [
    ({"k": 0}, "experiment_sets.vpn_frozen.methods.0.k: 0 is less than the minimum of 1"),
    ({"c": -0.1}, "experiment_sets.vpn_frozen.methods.0.c: -0.1 is less than the minimum of 0"),
    ({"base_label": "nope"}, "frozen mode: no run 'fmnist-sr-nope-s0' in experiment set 'vpn_joint'"),
])
def test_preflight_rejects_bad_vpn_runs_before_any_job(raw_default, change, expected):
    from pipeline_src.spec.preflight import check_runs

    raw = copy.deepcopy(raw_default)
    raw["experiment_sets"]["vpn_frozen"]["methods"][0].update(change)
    with pytest.raises(ParamsError) as err:
        params = validate_params(raw)
        check_runs(params, expand_runs(params))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_authors_code_protocol_follows_each_papers_code():
    params = load_params(PAPER)
    paper_runs = {(r.experiment_set, r.run_id): r for r in expand_runs(params)}
    code_runs = {(r.experiment_set, r.run_id): r for r in expand_runs({**params, "protocol": "authors_code"})}
    vit = code_runs[("noisynn_main", "imagenet-vit_b16-linear_optimal_q-s0")]
    assert (vit.epochs, vit.batch_size, vit.label_smoothing, vit.protocol) == (50, 16, 0.1, "authors_code")
    assert vit.optimizer["name"] == "adamw" and vit.optimizer["lr"] == 1e-6 and vit.optimizer["warmup_epochs"] == 10
    assert vit.method["test_batch_size"] == 10 and vit.model_cfg["input_norm"]["mean"][0] == 0.485
    cnn = code_runs[("noisynn_cnn", "imagenet-resnet50-linear_shift-s0")]
    # the spec's own strength (0.3, the paper's) stays; the authors' 512 test batch fills the gap
    assert cnn.method["noise"]["strength"] == 0.3 and cnn.method["test_batch_size"] == 512
    assert "input_norm" not in cnn.model_cfg  # their ImageNet statistics go with weights we cannot load
    # no public recipe: a ViT trained from scratch and the `baseline` set keep the params' own training
    scratch = code_runs[("layer_sweep", "tiny_imagenet-vit_tiny_in-linear_shift-siteblock0-s0")]
    assert scratch.optimizer == paper_runs[("layer_sweep", scratch.run_id)].optimizer and scratch.epochs == 100
    base = code_runs[("baseline", "fmnist-resnet18_small-baseline-s0")]
    assert base.optimizer["name"] == "adam" and "input_norm" not in base.model_cfg
    imagenet = code_runs[("vpn_joint_imagenet", "imagenet-resnet50-vpn_dnn3-s0")]
    assert imagenet.optimizer["name"] == "sgd" and "small_stem" not in imagenet.model_cfg
    sweep = code_runs[("strength_sweep", "tiny_imagenet-resnet34-linear_shift-strength0.4-s0")]
    assert sweep.batch_size == 512 and sweep.optimizer["lr"] == 1e-3
    vpn = code_runs[("vpn_joint_tiny", "tiny_imagenet-resnet18-vpn_resnet18-s0")]
    assert vpn.method["generator_small_stem"] is False and vpn.model_cfg["small_stem"] is True
    assert (vpn.epochs, vpn.optimizer["name"], vpn.optimizer["lr"]) == (200, "sgd", 0.1)
    base = code_runs[("vpn_joint_tiny", "tiny_imagenet-resnet18-baseline-s0")]
    assert "generator_small_stem" not in base.method
    same = paper_runs[("noisynn_main", "imagenet-vit_b16-linear_optimal_q-s0")]
    assert same.protocol == "paper" and same.label_smoothing == 0.0 and "input_norm" not in same.model_cfg


def test_a_protocol_default_fills_only_the_methods_the_schema_gives_that_key():
    from pipeline_src.spec.protocols import AUTHORS_CODE, _fill_method

    cnn = AUTHORS_CODE["noisynn_cnn"]["method"]
    shift = _fill_method({"label": "s", "name": "noisynn", "noise": {"kind": "circular_shift"}}, cnn)
    assert shift["noise"]["strength"] == 0.4 and shift["test_batches"] == "class_sorted"
    optimal = _fill_method({"label": "q", "name": "noisynn", "noise": {"kind": "optimal_q"}}, cnn)
    assert "strength" not in optimal["noise"] and optimal["test_batch_size"] == 512
    assert _fill_method({"label": "b", "name": "baseline"}, cnn) == {"label": "b", "name": "baseline"}
    vpn = AUTHORS_CODE["vpn"]["method"]
    assert _fill_method({"label": "v", "name": "vpn", "generator": "dnn3"}, vpn)["generator_small_stem"] is False
    assert "generator_small_stem" not in _fill_method({"label": "b", "name": "baseline"}, vpn)


def test_check_refuses_two_run_ids_of_one_training(tmp_path):
    """Under protocol authors_code the VPN readings of params/fashion_mnist.yaml (sgd_plain, adam_code,
    sgd_code) all become the authors' one recipe (SGD lr 0.1, 200 epochs): check refuses, in one line
    naming two of the run ids, rather than train it three times and count it three times in the family."""
    path = REPO_ROOT / "params" / "fashion_mnist.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw.get("protocol", "paper") == "paper" and expand_runs(load_params(path))  # as shipped: accepted
    out = run_check({**raw, "protocol": "authors_code"}, tmp_path)  # written with its sets in sorted order
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: invalid params: experiment_sets.vpn_frozen_readings: run ids fmnist-sr-vpn_dnn3.sgd_plain-s0 and "
        "fmnist-sr-vpn_dnn3.adam_code-s0 resolve to the same training under protocol authors_code: keep one "
        "reading of those it makes equal, or choose another protocol"]


def test_the_readings_name_each_noisynn_protocols_source_and_what_neither_changes():
    from pipeline_src.spec.config import audit_set_info

    readings = audit_set_info(load_params(REPO_ROOT / "params" / "fashion_mnist.yaml"))["readings"]
    assert "optimal_q at test only" in readings["authors_vit"] and "--tra 0 --inf 1" in readings["authors_vit"]
    assert "circular_shift strength 0.4 in training and at test" in readings["authors_cnn"]
    assert "Shawey94/NoisyNN NoisyCNN_CircularShiftQ/script.txt" in readings["authors_cnn"]
    # `ours` is the training block, and for NoisyNN neither protocol: each such method says what it changes
    assert "noisy_train: optimal_q in training and at test (authors_vit: optimal_q at test only)" in readings["ours"]
    assert "gaussian_image, gaussian_latent: gaussian at test only, a kind neither protocol uses" in readings["ours"]


@pytest.mark.parametrize("protocols, expected", [
    ({"authors_vit": {"noise": {"kind": "optimal_q"}, "apply_at": "test"}},
     "noisynn_protocols.authors_vit: 'source' is a required property"),
    ({"authors_vit": {"source": "x", "noise": {"kind": "optimal_q"}, "apply_at": "inference"}},
     "noisynn_protocols.authors_vit.apply_at: 'inference' is not allowed; allowed values: train, test, both"),
    ({"sgd_code": {"source": "x", "noise": {"kind": "optimal_q"}, "apply_at": "test"}},
     "noisynn_protocols.sgd_code: the name is already a reading (readings or own_reading); a protocol is judged "
     "as a reading of its own: give it another name"),
    ({"a": {"source": "x", "noise": {"kind": "optimal_q"}, "apply_at": "test"},
      "b": {"source": "y", "noise": {"kind": "optimal_q"}, "apply_at": "test"}},
     "noisynn_protocols.b: the same noise and apply_at as a; a method would follow both"),
])
def test_a_bad_noisynn_protocol_fails_check_in_one_line(tmp_path, protocols, expected):
    raw = yaml.safe_load((REPO_ROOT / "params" / "fashion_mnist.yaml").read_text())
    assert set(raw["noisynn_protocols"]) == {"authors_vit", "authors_cnn"}  # as shipped: declared and accepted
    out = run_check({**raw, "noisynn_protocols": protocols}, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: invalid params: {expected}"]


def test_missing_weights_file_is_one_line_at_preflight(tmp_path, raw_default):
    raw = copy.deepcopy(raw_default)
    raw["models"]["vit"]["weights_file"] = "weights/vit_b16_in21k_ft_in1k.pth"
    out = run_check(raw, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: invalid params: models.vit.weights_file: weights/vit_b16_in21k_ft_in1k.pth does not exist; "
        "put the weights file there (a state_dict for the timm model) or remove the key"]


def _one_model_params(tmp_path, arch, dataset, site="default"):
    return validate_params({
        "results_dir": str(tmp_path / "results"),
        "datasets": {"d": dataset}, "models": {"m": {"arch": arch}},
        "experiment_sets": {"s": {"datasets": ["d"], "models": ["m"],
                                  "methods": [{"label": "q", "name": "noisynn", "site": site}]}}})


@pytest.mark.parametrize("arch, dataset, expected", [
    ("resnt18", {"source": "digits"}, "invalid params: models.m (resnt18) cannot be built: model arch 'resnt18' is "
                                      "not sr, dnn3 or a timm model name"),
    ("convnext_atto", {"source": "digits"}, "invalid params: models.m (convnext_atto) does not accept the inputs of "
                                            "dataset d, of shape [1, 8, 8]: "),
])
def test_preflight_builds_each_model_before_any_job(tmp_path, arch, dataset, expected):
    from pipeline_src.spec.preflight import check_runs

    params = _one_model_params(tmp_path, arch, dataset)
    with pytest.raises(ParamsError) as err:
        check_runs(params, expand_runs(params))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_preflight_model_check_is_cached_once_clean(tmp_path, monkeypatch):
    from pipeline_src.spec import preflight

    params = _one_model_params(tmp_path, "convnext_atto", {"source": "synthetic-clutter"}, site="stage:3")
    preflight.check_runs(params, expand_runs(params))
    assert len(list((tmp_path / "results" / "preflight").glob("models-*.json"))) == 1

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the cached model check ran again")

    monkeypatch.setattr(preflight.subprocess, "run", no_subprocess)
    preflight.check_runs(params, expand_runs(params))  # same models and sites: answered from the cache
    params["experiment_sets"]["s"]["methods"][0]["site"] = "stage:4"
    with pytest.raises(AssertionError, match="ran again"):
        preflight.check_runs(params, expand_runs(params))
