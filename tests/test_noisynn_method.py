"""NoisyNN as a method: where noise applies, how test batches are formed, what is reported."""
import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline_src.methods.registry import build_method
from pipeline_src.methods.models import build_model
from pipeline_src.spec.method_spec import eval_modes, resolve_method
from pipeline_src.methods.noisynn import NoisyNNMethod, eval_batch_order

INFO = {"num_classes": 3, "in_shape": (1, 4, 4), "seed": 0, "batch_size": 8, "eval_batch_size": 8}


def spec(**kw):
    return {"label": "n", "name": "noisynn", **kw}


def make(**kw):
    """SR as a nearest-class-mean classifier for inputs x = noise + class index:
    logit_c = c * sum(x) - 8 c^2, so a prediction moves with the mean of what it is mixed with."""
    model = build_model("sr", INFO["in_shape"], INFO["num_classes"])
    with torch.no_grad():
        classes = torch.arange(INFO["num_classes"], dtype=torch.float32)
        model.head.weight.copy_(classes.view(-1, 1).expand(-1, 16))
        model.head.bias.copy_(-8 * classes ** 2)
    return NoisyNNMethod(model, resolve_method(spec(**kw), INFO["batch_size"], INFO["eval_batch_size"]), dict(INFO))


def head_logits(method, flat):
    """The head's map without its hooks (calling the module would apply the noise again)."""
    return F.linear(flat, method.model.head.weight, method.model.head.bias)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(24) % 3  # interleaved classes, so sorting by class changes the batches
    x = torch.randn(24, *INFO["in_shape"], generator=g) + y.view(-1, 1, 1, 1)
    return x, y


def sr_optimal_q_predictions(method, x, order, batch_size):
    """By hand: noise at SR's head mixes the flattened images of each batch cut from `order`."""
    pred = torch.empty(len(x), dtype=torch.long)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        flat = x[idx].flatten(1)
        mixed = (flat + flat.sum(0)) / (len(idx) + 1)
        pred[idx] = head_logits(method, mixed).argmax(1)
    return pred


def test_class_sorted_and_shuffled_batches_differ_in_composition(data):
    _, y = data
    sorted_order = eval_batch_order("class_sorted", y, seed=0)
    shuffled_order = eval_batch_order("shuffled", y, seed=0)
    sorted_batches = [set(y[sorted_order[i:i + 8]].tolist()) for i in range(0, 24, 8)]
    shuffled_batches = [set(y[shuffled_order[i:i + 8]].tolist()) for i in range(0, 24, 8)]
    assert sorted_batches == [{0}, {1}, {2}]
    assert all(len(classes) > 1 for classes in shuffled_batches)
    assert torch.equal(sorted_order[:8], torch.arange(0, 24, 3))  # stable: same-class order kept
    assert torch.equal(shuffled_order, torch.randperm(24, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(shuffled_order, eval_batch_order("shuffled", y, seed=1))


@pytest.mark.parametrize("how", ["class_sorted", "shuffled"])
def test_noisy_predictions_follow_batch_composition_exactly(data, how):
    x, y = data
    method = make(noise={"kind": "optimal_q"}, apply_at="test")
    with torch.no_grad():
        expected = sr_optimal_q_predictions(method, x, eval_batch_order(how, y, 0), 8)
        assert torch.equal(method.predictions(how, x, y, 8), expected)


def test_class_sorted_and_shuffled_predictions_differ(data):
    x, y = data
    method = make(noise={"kind": "optimal_q"}, apply_at="test")
    assert not torch.equal(method.predictions("class_sorted", x, y, 8),
                           method.predictions("shuffled", x, y, 8))
    method.spec["eval_protocols"] = ["class_sorted", "none"]
    # same-class batches keep the class mean, mixed ones pull every image towards class 1
    assert method.evaluations(x, y, 8) == {"noise_shuffled": pytest.approx(100 / 3), "noise_class_sorted": 100.0,
                                           "no_noise": 100.0}


def test_single_batches_with_optimal_q_equal_no_noise(data):
    x, y = data
    method = make(noise={"kind": "optimal_q"}, apply_at="test", test_batches="single", eval_protocols=["none"])
    assert torch.equal(method.predictions("single", x, y, 8), method.predictions("none", x, y, 8))
    scores = method.evaluations(x, y, 8)
    assert list(scores) == ["noise_single", "no_noise"]
    assert scores["noise_single"] == scores["no_noise"]


def test_headline_and_protocol_keys():
    assert eval_modes(resolve_method(spec(apply_at="train"), 8, 8)) == ["no_noise"]
    assert eval_modes(resolve_method(spec(), 8, 8)) == ["noise_shuffled"]
    resolved = resolve_method(spec(apply_at="test", test_batches="class_sorted",
                                   eval_protocols=["none", "class_sorted", "shuffled", "single", "none"]), 8, 8)
    assert eval_modes(resolved) == ["noise_class_sorted", "no_noise", "noise_shuffled", "noise_single"]
    resolved = resolve_method(spec(apply_at="train", eval_protocols=["none", "class_sorted"]), 8, 8)
    assert eval_modes(resolved) == ["no_noise", "noise_class_sorted"]


def test_evaluations_keys_restore_mode_and_rng(data):
    x, y = data
    method = make(noise={"kind": "gaussian", "strength": 0.5}, apply_at="both", eval_protocols=["none", "single"])
    method.train()
    state = torch.get_rng_state()
    first = method.evaluations(x, y, 8)
    assert list(first) == ["noise_shuffled", "no_noise", "noise_single"]
    assert method.model.training
    assert torch.equal(torch.get_rng_state(), state)
    assert method.evaluations(x, y, 8) == first


def test_training_loss_noise_follows_apply_at(data):
    x, y = data
    for apply_at, noisy in (("train", True), ("both", True), ("test", False)):
        method = make(noise={"kind": "optimal_q"}, apply_at=apply_at).train()
        with torch.no_grad():
            flat = x[:8].flatten(1)
            inputs = (flat + flat.sum(0)) / 9 if noisy else flat
            expected = F.cross_entropy(head_logits(method, inputs), y[:8])
            assert torch.allclose(method.training_loss(x[:8], y[:8]), expected, rtol=1e-6, atol=0)


def test_defaults_filled_from_the_schema():
    resolved = resolve_method(spec(), 64, 256)
    assert resolved == {
        "label": "n", "name": "noisynn", "site": "default", "apply_at": "both", "test_batches": "shuffled",
        "eval_protocols": [], "test_batch_size": 256, "eval_batch_sizes": [],
        "noise": {"kind": "circular_shift", "strength": 0.3}}
    assert resolve_method(resolved, 64, 256) == resolved  # a resolved spec resolves to itself


def test_registry_builds_noisynn():
    model = build_model("dnn3", INFO["in_shape"], 3, hidden=8)
    method = build_method(model, resolve_method(spec(site="block:0"), 8, 8), dict(INFO))
    assert isinstance(method, NoisyNNMethod) and method.site_path == "fc2"


@pytest.mark.parametrize("bad, batch, message", [
    (spec(noise={"kind": "optimal_q"}), 1, "batch_size=1 is out of range for optimal_q in training: batch_size >= 2"),
    (spec(noise={"kind": "circular_shift", "strength": 0.5}), 8,
     "noise.strength: 0.5 is greater than or equal to the maximum of 0.5 (0 <= a < 0.5"),
    (spec(apply_at="always"), 8, "apply_at: 'always' is not allowed; allowed values: train, test, both"),
    (spec(eval_protocols=["sorted"]), 8, "eval_protocols.0: 'sorted' is not allowed"),
    (spec(generator="dnn3"), 8, "method: key 'generator' does not apply here; allowed keys: label, name, augment"),
    (spec(site="block:x"), 8, "site: 'block:x' is not one of: image | embedding | default | block:<i> | stage:<i>"),
])
def test_resolve_method_one_line_errors(bad, batch, message):
    with pytest.raises(ValueError) as err:
        resolve_method(bad, batch, 8)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("site, message", [
    ("fc9", "site 'fc9' is not a module of SoftmaxRegression; valid: image, default, block:<i> for i in [-1, 0]"),
    ("block:3", "site 'block:3' is out of range: SoftmaxRegression has 1 block ("),
])
def test_constructor_rejects_bad_site_before_training(site, message):
    with pytest.raises(ValueError) as err:
        make(site=site)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_test_batch_sizes_each_evaluated_at_their_own_size(data):
    x, y = data
    method = make(noise={"kind": "optimal_q"}, apply_at="test", test_batches="class_sorted", test_batch_size=4,
                  eval_protocols=["none", "class_sorted", "shuffled"], eval_batch_sizes=[2, 12])
    plan = method.eval_plan(8)
    assert list(plan) == ["noise_class_sorted", "no_noise", "noise_shuffled", "noise_class_sorted_b2",
                          "noise_shuffled_b2", "noise_class_sorted_b12", "noise_shuffled_b12"]
    assert plan["noise_class_sorted"]["test_batch_size"] == 4  # test_batch_size, not the eval batch
    assert plan["noise_shuffled_b12"] == {"noise": True, "test_batches": "shuffled", "test_batch_size": 12}
    scores = method.evaluations(x, y, 8)
    for mode in ("noise_class_sorted", "noise_shuffled_b2", "noise_class_sorted_b12"):
        how, size = plan[mode]["test_batches"], plan[mode]["test_batch_size"]
        expected = sr_optimal_q_predictions(method, x, eval_batch_order(how, y, 0), size)
        assert scores[mode] == pytest.approx(100.0 * (expected == y).float().mean().item())
    assert method.resolved_spec()["test_batch_size"] == 4 and method.resolved_spec()["site_module"]


# ---- the residual branch of a ResNet block (site branch:<i>) through the method

def small_resnet18():
    """A real timm resnet18 at tiny widths; BN scales drawn at random, since timm zeroes each block's last
    one and a fresh branch would then add nothing to mix."""
    torch.manual_seed(0)
    model = build_model("resnet18", (1, 8, 8), 3, small_stem=True, timm_kwargs={"channels": [4, 4, 8, 8]})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model


def resnet_method(model, site, strength=0.4):
    shift = {"kind": "circular_shift", "strength": strength}
    return NoisyNNMethod(copy.deepcopy(model), resolve_method(spec(site=site, noise=shift, apply_at="both"), 9, 9),
                         dict(INFO, num_classes=3, in_shape=(1, 8, 8))).train()


def branch_only_logits(model, x, a):
    """By hand, on a hook-free model: the last block's conv1 gets its input circularly shifted (sample i
    takes (1 - a) of itself and a of sample i+1), while the skip path adds the unshifted input."""
    h = model.layer4[0](model.layer3(model.layer2(model.layer1(model.act1(model.bn1(model.conv1(x)))))))
    block = model.layer4[1]
    mixed = (1 - a) * h + a * torch.roll(h, shifts=-1, dims=0)
    branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(mixed)))))
    return model.fc(model.global_pool(torch.relu(branch + h)))


def test_branch_site_mixes_only_the_branch_in_the_training_forward():
    model = small_resnet18()
    g = torch.Generator().manual_seed(4)
    y = torch.arange(3).repeat_interleave(3)  # a class-sorted batch, as the authors' test loader gives
    x = torch.randn(9, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1)
    methods = {site: resnet_method(model, site) for site in ("branch:-1", "block:-1")}
    assert methods["branch:-1"].site_path == "layer4.1.conv1"
    assert methods["branch:-1"].resolved_spec()["site_module"] == "layer4.1.conv1"
    with torch.no_grad():
        loss = {site: method.training_loss(x, y) for site, method in methods.items()}
        clean = F.cross_entropy(copy.deepcopy(model).train()(x), y)
        by_hand = F.cross_entropy(branch_only_logits(copy.deepcopy(model).train(), x, 0.4), y)
        identity = resnet_method(model, "branch:-1", strength=0.0).training_loss(x, y)
    assert torch.allclose(loss["branch:-1"], by_hand, rtol=1e-5, atol=0)
    assert not torch.allclose(loss["branch:-1"], clean) and not torch.allclose(loss["branch:-1"], loss["block:-1"])
    assert torch.equal(identity, clean)  # strength 0 mixes nothing


def test_branch_site_refused_for_a_vit_before_training():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        vit = timm.create_model("test_vit", num_classes=3, in_chans=1, img_size=8, patch_size=4)
    with pytest.raises(ValueError) as err:
        NoisyNNMethod(vit, resolve_method(spec(site="branch:-1"), 8, 8), dict(INFO))
    assert str(err.value).startswith("site 'branch:-1' needs residual blocks with a known branch (timm ResNet "
                                     "BasicBlock or Bottleneck), and VisionTransformer has none; valid: ")
    assert "\n" not in str(err.value)
