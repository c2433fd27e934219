"""VPN: sampling, conditioning, objectives, frozen mode, class enumeration, errors, outputs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.methods.models import DNN3
from references import class_enumeration_loop
from pipeline_src.methods.generators import DNN3Generator, ResNet18Generator, build_generator
from pipeline_src.methods.vpn import VPNMethod, condition, sample_noise

SHAPE = (1, 8, 8)
C = 4


def info(**extra):
    return {"num_classes": C, "in_shape": SHAPE, "seed": 0, **extra}


def raw(**extra):
    return {"name": "vpn", "label": "vpn", "generator_hidden": 32, **extra}


def spec(**extra):
    """A resolved spec, as the run table hands it to the method."""
    return resolve_method(raw(**extra), 8, 8)


def tiny_cnn():
    """A base with BatchNorm buffers and dropout, to see that frozen mode fixes both."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, C))


def batch(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen), torch.randint(0, C, (n,), generator=gen)


def scaled_up(method):
    """The authors' N(0, 0.002) init makes sigma ~0; scale g's head so noise is visible."""
    with torch.no_grad():
        method.generator.head.weight.mul_(500)
    return method


def test_condition_adds_scaled_label():
    x = torch.rand(3, *SHAPE)
    y = torch.tensor([0, 2, 3])
    out = condition(x, y, num_classes=4, c=0.01)
    for i in range(3):
        torch.testing.assert_close(out[i], x[i] + 0.01 * y[i].item() / 3)


def test_sample_noise_has_zero_mean_and_std_sigma():
    torch.manual_seed(0)
    sigma = torch.tensor([[0.1, 0.5], [1.0, 2.0]])
    eps = sample_noise(sigma, k=20000)
    assert eps.shape == (20000, 2, 2)
    # 5 standard errors for the mean, 3 % for the std (its standard error is ~0.5 %)
    assert (eps.mean(0).abs() < 5 * sigma / math.sqrt(20000)).all()
    torch.testing.assert_close(eps.std(0), sigma, rtol=0.03, atol=0)


def test_sample_noise_uses_global_rng():
    sigma = torch.ones(3, 2)
    torch.manual_seed(5)
    a = sample_noise(sigma, 2)
    torch.manual_seed(5)
    assert torch.equal(a, sample_noise(sigma, 2))


@pytest.mark.parametrize("name", ["dnn3", "resnet18"])
def test_generator_output_is_nonnegative_and_input_shaped(name):
    g = build_generator(name, SHAPE, 32)
    out = g(torch.rand(2, *SHAPE))
    assert out.shape == (2, *SHAPE) and (out >= 0).all()


@pytest.mark.parametrize("name", ["dnn3", "resnet18"])
def test_gradients_reach_generator(name):
    method = VPNMethod(DNN3(64, C, 16), spec(generator=name, k=2), info())
    x, y = batch()
    method.training_loss(x, y).backward()
    grads = [p.grad for p in method.generator.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_noisy_ce_is_ce_of_noisy_inputs_over_k_draws():
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(k=3), info()))
    x, y = batch()
    torch.manual_seed(1)
    loss = method.training_loss(x, y)
    torch.manual_seed(1)
    eps = sample_noise(method.generator(condition(x, y, C, 0.01)), 3)
    expected = torch.stack([F.cross_entropy(method.model(x + e), y) for e in eps]).mean()
    torch.testing.assert_close(loss, expected)


def test_two_term_is_clean_ce_plus_lam_noisy_ce():
    model, generator = DNN3(64, C, 16), DNN3Generator(SHAPE, 32)
    two = scaled_up(VPNMethod(model, spec(objective="two_term", lam=0.3), info(), generator=generator))
    noisy = VPNMethod(model, spec(objective="noisy_ce"), info(), generator=generator)
    x, y = batch()
    torch.manual_seed(2)
    total = two.training_loss(x, y)
    torch.manual_seed(2)
    noisy_ce = noisy.training_loss(x, y)
    torch.testing.assert_close(total, F.cross_entropy(model(x), y) + 0.3 * noisy_ce)
    assert noisy_ce.item() != pytest.approx(F.cross_entropy(model(x), y).item())


def test_frozen_mode_keeps_base_weights_and_buffers(tmp_path):
    torch.manual_seed(0)
    trained = tiny_cnn()
    with torch.no_grad():  # make the checkpoint differ from a fresh init, buffers included
        trained[1].running_mean.fill_(0.3)
        trained[1].running_var.fill_(2.0)
    path = tmp_path / "base.pt"
    torch.save({"model": trained.state_dict()}, path)

    method = VPNMethod(tiny_cnn(), spec(mode="frozen"), info(base_checkpoint=str(path)))
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    for key, value in trained.state_dict().items():
        assert torch.equal(before[key], value), f"{key} not loaded from the checkpoint"
    g_before = [p.clone() for p in method.generator.parameters()]

    method.train()
    assert not method.model.training and method.generator.training
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in method.generator.parameters()}
    opt = torch.optim.Adam(trainable, lr=0.01)
    for step in range(3):
        x, y = batch(seed=step)
        opt.zero_grad()
        method.training_loss(x, y).backward()
        opt.step()
    for key, value in method.model.state_dict().items():
        assert torch.equal(value, before[key]), f"frozen base changed: {key}"
    assert any(not torch.equal(a, b) for a, b in zip(g_before, method.generator.parameters()))


def test_batched_enumeration_matches_loop_with_same_draws():
    torch.manual_seed(0)
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(c=0.5), info())).eval()
    x, _ = batch(n=37)
    z = torch.randn(C, 37, *SHAPE)
    looped = class_enumeration_loop(method, x, batch_size=8, z=z)
    for max_rows in (4, 24, 10_000):  # one image per pass, several passes, all at once
        assert torch.equal(method.class_enumeration(x, batch_size=8, z=z, max_rows=max_rows), looped)
    scores = method.enumeration_scores(x[:5], z[:, :5])
    assert scores.shape == (5, C) and (scores > 0).all() and (scores < 1).all()


def test_label_free_enumeration_reuses_the_labelled_sigma_with_the_same_predictions(monkeypatch):
    import pipeline_src.methods.vpn as vpn
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(c=5.0), info())).eval()
    x, y = batch(n=37)
    calls = []
    method.generator.register_forward_hook(lambda *_: calls.append(1))

    def predictions(cache_bytes):
        monkeypatch.setattr(vpn, "ENUM_SIGMA_CACHE_BYTES", cache_bytes)
        calls.clear()
        torch.manual_seed(3)
        return method.eval_predictions(x, y, batch_size=8), len(calls)

    cached, g_passes = predictions(vpn.ENUM_SIGMA_CACHE_BYTES)
    recomputed, g_passes_without = predictions(0)
    assert cached.keys() == recomputed.keys()
    assert all(torch.equal(cached[k], recomputed[k]) for k in cached)
    assert g_passes_without == 2 * g_passes == 2 * math.ceil(37 / 8)  # one g pass per enumeration pass


def test_evaluations_order_and_accuracy():
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(c=5.0), info()))
    x, y = batch(n=40)
    torch.manual_seed(1)
    result = method.evaluations(x, y, batch_size=5)
    assert list(result) == ["class_enumeration", "no_noise", "class_enumeration_mean_sigma"]
    # each is the top-1 of its own predictions, same draws: a mode scored against the wrong
    # predictions or labels, or not in percent, fails here
    torch.manual_seed(1)
    predictions = method.eval_predictions(x, y, batch_size=5)
    assert result == {mode: 100.0 * (pred == y).float().mean().item() for mode, pred in predictions.items()}
    assert method.training  # evaluation restores the mode it found
    with torch.no_grad():  # and no_noise is the bare classifier's accuracy
        assert result["no_noise"] == 100.0 * (method.model.eval()(x).argmax(1) == y).float().mean().item()


def test_label_free_enumeration_gives_every_candidate_the_mean_sigma():
    torch.manual_seed(0)
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(c=5.0), info())).eval()
    x, _ = batch(n=3)
    z = torch.randn(C, 3, *SHAPE)
    # by hand: sigma_k for each candidate, their mean over k, then the labelled scores of f(x + mean * z_k)
    sigmas = torch.stack([method.generator(x + 5.0 * k / (C - 1)) for k in range(C)])
    assert not torch.allclose(sigmas[0], sigmas[-1])  # the label does move sigma here
    mean_sigma = sigmas.mean(0)
    expected = torch.stack([method.model(x + mean_sigma * z[k]).softmax(-1)[:, k] for k in range(C)], dim=1)
    torch.testing.assert_close(method.enumeration_scores(x, z, label_free=True), expected)
    assert not torch.allclose(method.enumeration_scores(x, z), expected)


def test_resolved_spec_names_every_setting_and_the_stem():
    method = VPNMethod(DNN3(64, C, 16), spec(generator="resnet18", generator_width=4), info())
    resolved = method.resolved_spec()
    assert resolved["c"] == 0.01 and resolved["k"] == 1 and resolved["objective"] == "noisy_ce"
    assert resolved["generator_small_stem"] is True  # 8 px input: the 3x3 stride-1 stem
    authors = VPNMethod(DNN3(64, C, 16), spec(generator="resnet18", generator_width=4, generator_small_stem=False),
                        info())
    assert authors.resolved_spec()["generator_small_stem"] is False
    assert isinstance(authors.generator.stem[-1], nn.MaxPool2d)


def test_diagnostics_sigma_on_background_and_object():
    method = VPNMethod(DNN3(64, C, 16), spec(), info())
    x, y = batch(n=6)
    sigma_full = method.generator(condition(x, y, C, 0.01)).detach()
    no_mask = method.diagnostics(x, y, None, 4)
    assert no_mask["sigma_mean"] == pytest.approx(sigma_full.mean().item(), rel=1e-4)
    assert no_mask["sigma_zero_fraction"] == pytest.approx((sigma_full == 0).double().mean().item())
    mask = torch.zeros(6, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    out = method.diagnostics(x, y, mask, 4)
    sigma = method.generator(condition(x, y, C, 0.01)).mean(1).detach()
    assert out["sigma_mean_background"] == pytest.approx(sigma[~mask].mean().item(), rel=1e-4)
    assert out["sigma_mean_object"] == pytest.approx(sigma[mask].mean().item(), rel=1e-4)
    assert out["bg_fg_sigma_ratio"] == pytest.approx(out["sigma_mean_background"] / out["sigma_mean_object"])
    assert out["sigma_mean"] == no_mask["sigma_mean"]


def test_diagnostics_see_a_dead_generator():
    """A ResNet-18 generator whose last ReLU never fires outputs sigma = 0 on every element."""
    method = VPNMethod(DNN3(64, C, 16), spec(generator="resnet18", generator_width=4), info())
    x, y = batch(n=6)
    alive = method.diagnostics(x, y, None, 4)
    assert alive["sigma_mean"] > 0 and alive["sigma_zero_fraction"] < 0.5
    with torch.no_grad():  # a last BN bias far below the shortcut's values: every output ReLU is off
        method.generator.stages[-1][-1].bn2.bias.fill_(-1e3)
    dead = method.diagnostics(x, y, None, 4)
    assert (dead["sigma_mean"], dead["sigma_zero_fraction"]) == (0.0, 1.0)
    clean = method.model(x).argmax(1)
    assert dead["top1_true_label_noise"] == pytest.approx(100.0 * (clean == y).double().mean().item())


def test_save_figures_writes_png_without_moving_global_rng(tmp_path):
    method = scaled_up(VPNMethod(DNN3(64, C, 16), spec(), info()))
    x, y = batch(n=3)
    torch.manual_seed(0)
    path = method.save_figures(tmp_path / "figs", x, y, n=2)
    assert path.name == "vpn_sigma.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["vpn_sigma.png"]
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("bad_spec, bad_info, message", [
    (raw(k=0), info(), "k: 0 is less than the minimum of 1"),
    (raw(c=-0.1), info(), "c: -0.1 is less than the minimum of 0"),
    (raw(mode="frozen"), info(), "needs info['base_checkpoint']"),
    (raw(mode="frozen"), info(base_checkpoint="/nonexistent/base.pt"), "does not exist"),
    (raw(generator="vae"), info(), "generator: 'vae' is not allowed; allowed values: dnn3, resnet18"),
])
def test_one_line_errors(bad_spec, bad_info, message):
    with pytest.raises(ValueError) as err:  # from resolving the spec, or from the method given the data
        VPNMethod(DNN3(64, C, 16), resolve_method(bad_spec, 8, 8), bad_info)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("generator", [DNN3Generator((1, 6, 6), 8), ResNet18Generator((1, 4, 4))])
def test_generator_of_wrong_shape_is_rejected(generator):
    with pytest.raises(ValueError) as err:
        VPNMethod(DNN3(64, C, 16), spec(), info(), generator=generator)
    assert "VPN generator" in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_that_does_not_fit_is_one_line_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": DNN3(64, C, 8).state_dict()}, path)
    with pytest.raises(ValueError) as err:
        VPNMethod(DNN3(64, C, 16), spec(mode="frozen"), info(base_checkpoint=str(path)))
    assert "does not fit the model" in str(err.value) and "\n" not in str(err.value)


class LabelReader(nn.Module):
    """A classifier that reads the class off the noise scale alone: logits = -|noise level - level of k|."""

    def forward(self, x):
        level = x.flatten(1).std(1, keepdim=True)  # images are 0, so this is the noise's spread
        return -(level - LabelWriter.level(torch.arange(C, dtype=x.dtype))).abs() * 1e3


class LabelWriter(nn.Module):
    """A generator that writes the label it is given into sigma, as a constant level per class."""

    @staticmethod
    def level(k):
        return 0.1 + 0.1 * k

    def forward(self, conditioned):
        k = (conditioned.flatten(1)[:, :1] * (C - 1) / 0.01).round()  # the images are zero: x + c*k/(C-1)
        return self.level(k).view(-1, 1, 1, 1).expand_as(conditioned).clone()


def test_diagnostics_see_a_classifier_that_reads_the_label_off_the_noise():
    x, y = torch.zeros(200, 1, 8, 8), torch.arange(200) % C
    reader = VPNMethod(LabelReader(), spec(), info(), generator=LabelWriter())
    out = reader.diagnostics(x, y, None, 64)
    assert out["top1_true_label_noise"] > 90 and out["wrong_label_followed"] > 90
    assert reader.diagnostics(x, y, None, 64) == out  # its own seeded draws: the same numbers every time
    blind = VPNMethod(DNN3(64, C, 16), spec(), info(), generator=LabelWriter())
    with torch.no_grad():
        blind.model.head.weight.zero_()  # constant logits: predicts class 0 whatever the noise says
    out = blind.diagnostics(x, y, None, 64)
    assert out["wrong_label_followed"] < 100.0 / (C - 1) + 5
