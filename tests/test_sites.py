"""Site names on the pipeline's models and on timm models nobody configured for: stages from timm's
feature_info, blocks within them, one-line errors naming the valid sites."""
import pytest
import torch

from pipeline_src.methods.models import build_model
from pipeline_src.spec.run_record import load_record, method_as_run
from pipeline_src.methods.sites import block_sites, resolve_site, stage_sites

timm = pytest.importorskip("timm")


def meta_model(arch, in_chans=3, **kwargs):
    with torch.device("meta"):  # structure only: no weights are allocated
        return timm.create_model(arch, num_classes=5, in_chans=in_chans, **kwargs)


@pytest.fixture(scope="module")
def vit():
    return meta_model("test_vit", img_size=32)


@pytest.fixture(scope="module")
def resnet():
    return meta_model("test_resnet")


@pytest.fixture(scope="module")
def dnn3():
    return build_model("dnn3", (1, 8, 8), 5, hidden=16)


def test_pipeline_models(vit, resnet, dnn3):
    assert block_sites(vit) == [f"blocks.{i}.attn" for i in range(6)]
    assert stage_sites(vit) == [f"blocks.{i}" for i in range(6)]
    assert block_sites(resnet) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert stage_sites(resnet) == ["layer1", "layer2", "layer3", "layer4"]  # act1 is the stem, not a stage
    assert block_sites(dnn3) == ["fc2", "head"] and stage_sites(dnn3) == []
    assert block_sites(build_model("sr", (1, 8, 8), 5)) == ["head"]


def test_resolve_site(vit, resnet, dnn3):
    assert resolve_site(vit, "default") == ("blocks.5.attn", 1)
    assert resolve_site(vit, "block:-2") == ("blocks.4.attn", 1)
    assert resolve_site(vit, "stage:1") == ("blocks.1", 1)
    assert resolve_site(vit, "embedding") == ("norm_pre", 1)
    assert resolve_site(vit, "image") == ("", 0)
    assert resolve_site(vit, "blocks.0.mlp.fc1") == ("blocks.0.mlp.fc1", 1)
    assert resolve_site(vit, "head") == ("head", 0)
    assert resolve_site(resnet, "default") == ("layer4.0", 0)
    assert resolve_site(resnet, "block:0") == ("layer1.0", 0)
    assert resolve_site(resnet, "stage:-1") == ("layer4", 0)
    assert resolve_site(dnn3, "default") == ("head", 0)
    assert resolve_site(dnn3, "block:0") == ("fc2", 0)


def test_convnext_blocks_sit_inside_its_stages():
    model = meta_model("convnext_atto")
    assert stage_sites(model) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert block_sites(model)[:3] == ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0"]
    assert len(block_sites(model)) == sum(len(model.stages[i].blocks) for i in range(4))
    assert resolve_site(model, "block:1") == ("stages.0.blocks.1", 0)
    assert resolve_site(model, "default") == (block_sites(model)[-1], 0)


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", "efficientnet_b0"])
def test_mobile_nets_count_every_group_timm_does_not_tap(arch):
    model = meta_model(arch)
    tapped = {info["module"] for info in model.feature_info}
    assert stage_sites(model) == [f"blocks.{i}" for i in range(len(model.blocks))]
    assert tapped - set(stage_sites(model)) <= {"bn1", "conv_stem"}  # the stem is not a stage
    blocks = block_sites(model)
    assert blocks[0] == "blocks.0.0" and len(blocks) == sum(len(g) if isinstance(g, torch.nn.Sequential) else 1
                                                             for g in model.blocks)
    for site in ("default", "block:1", "stage:2"):
        path, prefix = resolve_site(model, site)
        assert path in dict(model.named_modules()) and prefix == 0


def test_bad_site_name_lists_valid_names(vit):
    with pytest.raises(ValueError) as err:
        resolve_site(vit, "blocks.9.attn")
    message = str(err.value)
    assert "\n" not in message
    assert message == ("site 'blocks.9.attn' is not a module of VisionTransformer; valid: image, default, embedding, "
                       "block:<i> for i in [-6, 5], stage:<i> for i in [-6, 5], or a module path from "
                       "model.named_modules()")


@pytest.mark.parametrize("site", ["block:6", "block:-7"])
def test_block_index_out_of_range(vit, site):
    with pytest.raises(ValueError, match=rf"^site '{site}' is out of range: VisionTransformer has 6 blocks "
                                         r"\(indices -6 to 5\)$"):
        resolve_site(vit, site)


def test_models_without_blocks_say_so_without_contradiction():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    for site, words in [("default", "needs known blocks"), ("block:1", "has no blocks that timm names"),
                        ("stage:0", "has no stages that timm names")]:
        with pytest.raises(ValueError, match=words) as err:
            resolve_site(model, site)
        assert str(err.value).endswith("valid: image, or a module path from model.named_modules()")


def test_embedding_site_only_for_vit(resnet):
    with pytest.raises(ValueError, match="^site 'embedding' exists only for ViTs, not ResNet"):
        resolve_site(resnet, "embedding")


def test_block_site_must_be_integer(dnn3):
    with pytest.raises(ValueError, match="^site 'block:last' is not block:<integer>"):
        resolve_site(dnn3, "block:last")


@pytest.mark.parametrize("arch, site, module", [("convnext_atto", "stage:1", "stages.1"),
                                                ("mobilenetv3_small_050", "block:2", "blocks.1.1"),
                                                ("efficientnet_b0", "default", "blocks.6.0")])
def test_timm_models_nobody_configured_train_with_noise_through_params_alone(tmp_path, arch, site, module):
    """One epoch on 32 px clutter images, optimal Q at the site, from a params file and the command line."""
    params = {"results_dir": str(tmp_path / "results"), "device": "cpu", "seeds": [0],
              "training": {"epochs": 1, "batch_size": 16, "eval_batch_size": 32},
              "datasets": {"clutter": {"source": "synthetic-clutter", "n_train": 32, "n_test": 16}},
              "models": {"m": {"arch": arch}},
              "experiment_sets": {"s": {"datasets": ["clutter"], "models": ["m"],
                                        "methods": [{"label": "q", "name": "noisynn", "site": site,
                                                     "noise": {"kind": "optimal_q"}}]}}}
    metrics = _check_prepare_train(params, tmp_path, "clutter", "s", "clutter-m-q-s0")
    spec = method_as_run(metrics)
    assert (spec["site"], spec["site_module"]) == (site, module)
    assert_top1_is_the_stored_predictions(metrics, tmp_path / "run", n_test=16)


REGNET_PARAMS = "tests/params_regnet.yaml"


@pytest.fixture(scope="module")
def regnet():
    """regnetx_002 at the tiny size of tests/params_regnet.yaml, with real weights (CPU, milliseconds)."""
    import yaml

    from pipeline_src.spec.config import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / REGNET_PARAMS).read_text())["models"]["regnet"]
    torch.manual_seed(0)
    return timm.create_model(cfg["arch"], num_classes=5, in_chans=1, **cfg["timm_kwargs"]).eval()


def test_regnet_stages_are_its_feature_info_levels_though_no_container(regnet):
    assert [level["module"] for level in regnet.feature_info] == ["stem", "s1", "s2", "s3", "s4"]
    assert not isinstance(regnet.s1, torch.nn.Sequential) and not hasattr(regnet.s1, "blocks")
    assert stage_sites(regnet) == ["s1", "s2", "s3", "s4"]  # the stem (a ConvNormAct) is no stage
    assert block_sites(regnet) == ["s1.b1", "s2.b1", "s3.b1", "s3.b2", "s4.b1"]
    assert resolve_site(regnet, "stage:0") == ("s1", 0)
    assert resolve_site(regnet, "stage:-1") == ("s4", 0)
    assert resolve_site(regnet, "block:3") == ("s3.b2", 0)
    assert resolve_site(regnet, "default") == ("s4.b1", 0)  # the last block, as on a ResNet
    with pytest.raises(ValueError, match=r"^site 'stage:4' is out of range: RegNet has 4 stages \(indices -4 to 3\)$"):
        resolve_site(regnet, "stage:4")


@pytest.mark.parametrize("site", ["stage:0", "default"])
def test_noise_at_a_regnet_site_changes_its_logits(regnet, site):
    from pipeline_src.methods.hooks import attach_noise

    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = regnet(x)
        handle = attach_noise(regnet, site, {"kind": "circular_shift", "strength": 0.3}, lambda: True)
        noisy = regnet(x)
        handle.remove()
        restored = regnet(x)
    assert not torch.allclose(clean, noisy)
    assert torch.equal(clean, restored)


def test_regnet_trains_with_noise_at_a_stage_through_params_alone(tmp_path):
    """tests/params_regnet.yaml as a user would run it: check (every site of the grid on the built
    model), prepare digits, and train the stage:1 run for its one epoch from the command line."""
    import yaml

    from pipeline_src.spec.config import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / REGNET_PARAMS).read_text())
    params["results_dir"] = str(tmp_path / "results")
    metrics = _check_prepare_train(params, tmp_path, "digits", "regnet_sites", "digits-regnet-q-sitestage1-s0")
    spec = method_as_run(metrics)
    assert (spec["site"], spec["site_module"]) == ("stage:1", "s2")
    assert len(metrics["history"]) == 1
    assert_top1_is_the_stored_predictions(metrics, tmp_path / "run")


def assert_top1_is_the_stored_predictions(metrics: dict, run_dir, n_test: int | None = None) -> None:
    """The recorded top-1 is the accuracy of the run's own stored predictions of its headline mode, one
    per test image: a score of other predictions, other labels or not in percent fails."""
    from pipeline_src.spec.predictions import load_predictions

    preds, target = load_predictions(run_dir / "predictions.npz")
    headline = next(iter(metrics["evaluations"]))
    assert n_test is None or len(target) == n_test
    assert len(preds[headline]) == len(target) > 0
    assert metrics["test_top1"] == metrics["evaluations"][headline]
    assert metrics["test_top1"] == pytest.approx(100.0 * (preds[headline] == target).mean(), abs=1e-4)  # float32 mean


def _check_prepare_train(params: dict, tmp_path, dataset: str, experiment_set: str, run_id: str) -> dict:
    """A params file run as a user would: check, prepare the dataset, train one run; its (upgraded) record."""
    import subprocess
    import sys

    import yaml

    from pipeline_src.spec.config import REPO_ROOT

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cli = [sys.executable, "-m", "pipeline_src"]
    for args in (["check", "--params", str(path)],
                 ["prepare", "--params", str(path), "--dataset", dataset, "--out", str(tmp_path / "data")],
                 ["run", "--params", str(path), "--set", experiment_set, "--run-id", run_id,
                  "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--threads", "1"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=REPO_ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
    return load_record(tmp_path / "run" / "metrics.json")


# ---- the residual branch of a ResNet block, apart from its skip path

SHIFT = {"kind": "circular_shift", "strength": 0.4}


@pytest.fixture(scope="module")
def small_resnet18():
    """A real timm resnet18 at tiny widths with weights, in eval mode, and a class-sorted batch."""
    torch.manual_seed(0)
    model = build_model("resnet18", (1, 8, 8), 3, small_stem=True, timm_kwargs={"channels": [4, 4, 8, 8]}).eval()
    with torch.no_grad():  # timm zeroes each block's last BN scale, so a fresh branch adds nothing to mix
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat_interleave(3)  # sorted: batch neighbours share a class except at the joins
    return model, torch.randn(9, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1)


def _captured(model, x, paths, site=None, spec=SHIFT):
    """Inputs of the modules in `paths` (pre-hooks registered after any noise hook, so they see what the
    module is given) and the model output, with noise at `site` when given."""
    from pipeline_src.methods.hooks import attach_noise

    seen, handles = {}, []
    if site is not None:
        handles.append(attach_noise(model, site, spec, lambda: True))
    for path in paths:  # clone: the block adds the shortcut in place further on
        handles.append(model.get_submodule(path).register_forward_pre_hook(
            lambda _m, args, path=path: seen.__setitem__(path, args[0].clone())))
    with torch.no_grad():
        out = model(x)
    for handle in handles:
        handle.remove()
    return seen, out


def test_branch_sites_address_the_first_layer_of_each_residual_block(small_resnet18):
    model, _ = small_resnet18
    assert resolve_site(model, "branch:-1") == ("layer4.1.conv1", 0)  # the last block, as `default`
    assert resolve_site(model, "branch:0") == ("layer1.0.conv1", 0)
    assert resolve_site(model, "branch:-2") == ("layer4.0.conv1", 0)
    with pytest.raises(ValueError, match=r"^site 'branch:8' is out of range: ResNet has 8 residual blocks "
                                         r"\(indices -8 to 7\)$"):
        resolve_site(model, "branch:8")


def test_branch_site_mixes_the_branch_and_leaves_the_shortcut_clean(small_resnet18):
    from pipeline_src.methods.noise import apply_noise

    model, x = small_resnet18
    block = "layer4.1"  # no downsample: its shortcut is its input itself
    clean, clean_out = _captured(model, x, [block])
    seen, _ = _captured(model, x, [block, f"{block}.conv1", f"{block}.bn2"], site="branch:-1")
    mixed = apply_noise(clean[block], SHIFT)
    assert not torch.allclose(mixed, clean[block])
    assert torch.equal(seen[block], clean[block])  # the block, so its shortcut, gets the clean input
    assert torch.equal(seen[f"{block}.conv1"], mixed)  # the branch gets the mixed one

    # the block's output is relu(branch + clean input): the clean tensor is what the skip path added
    branch_out, outputs = {}, {}
    hooks = [model.get_submodule(f"{block}.bn2").register_forward_hook(
                 lambda _m, _a, out: branch_out.__setitem__("v", out.clone())),
             model.get_submodule(block).register_forward_hook(lambda _m, _a, out: outputs.__setitem__("v", out.clone()))]
    _captured(model, x, [], site="branch:-1")
    for hook in hooks:
        hook.remove()
    assert torch.allclose(outputs["v"], torch.relu(branch_out["v"] + clean[block]))
    assert not torch.allclose(outputs["v"], torch.relu(branch_out["v"] + mixed))

    # a block with a downsample: the downsample works on the clean input too
    first = "layer4.0"
    clean, _ = _captured(model, x, [first])
    seen, _ = _captured(model, x, [f"{first}.downsample", f"{first}.conv1"], site="branch:-2")
    assert torch.equal(seen[f"{first}.downsample"], clean[first])
    assert torch.equal(seen[f"{first}.conv1"], apply_noise(clean[first], SHIFT))


def test_branch_mixing_changes_the_output_unlike_clean_or_whole_block_mixing(small_resnet18):
    model, x = small_resnet18
    _, clean = _captured(model, x, [])
    _, branch = _captured(model, x, [], site="branch:-1")
    _, whole = _captured(model, x, [], site="block:-1")
    assert not torch.allclose(branch, clean) and not torch.allclose(branch, whole)
    _, identity = _captured(model, x, [], site="branch:-1", spec={"kind": "circular_shift", "strength": 0.0})
    assert torch.equal(identity, clean)  # strength 0 is the identity: the hook itself changes nothing
    _, after = _captured(model, x, [])
    assert torch.equal(after, clean)  # removing the handle restores the model exactly


@pytest.mark.parametrize("make", [lambda: meta_model("test_vit", img_size=32), lambda: build_model("sr", (1, 8, 8), 5),
                                  lambda: build_model("dnn3", (1, 8, 8), 5, hidden=16)])
def test_branch_site_refused_without_residual_blocks(make):
    model = make()
    with pytest.raises(ValueError) as err:
        resolve_site(model, "branch:-1")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"site 'branch:-1' needs residual blocks with a known branch (timm ResNet "
                              f"BasicBlock or Bottleneck), and {type(model).__name__} has none; valid: image")
    assert "branch:<i>" not in message


def _fashion_mnist_model(name):
    """A model of params/fashion_mnist.yaml, structure only, at Fashion-MNIST's input shape."""
    import yaml

    from pipeline_src.methods.models import build_from_cfg
    from pipeline_src.spec.config import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / "params" / "fashion_mnist.yaml").read_text())["models"][name]
    with torch.device("meta"):
        return build_from_cfg(cfg, (1, 28, 28), 10, load_weights=False)


@pytest.mark.parametrize("name, sites, modules", [
    ("resnet18_w8", ["block:0", "block:4", "block:-1", "branch:-1"],
     ["layer1.0", "layer3.0", "layer4.1", "layer4.1.conv1"]),
    ("vit6", ["block:0", "block:3", "block:-1"], ["blocks.0.attn", "blocks.3.attn", "blocks.5.attn"]),
])
def test_site_sweep_first_middle_last_are_distinct_modules(name, sites, modules):
    """The injection-site sweep's first, middle (len // 2) and last block, and the residual branch of the
    last block, on the Fashion-MNIST models: each a different module, the last one the authors' default."""
    model = _fashion_mnist_model(name)
    resolved = [resolve_site(model, site)[0] for site in sites]
    assert resolved == modules and len(set(resolved)) == len(resolved)
    blocks = block_sites(model)
    assert resolved[1] == blocks[len(blocks) // 2]
    assert resolve_site(model, "default")[0] == resolved[2]
