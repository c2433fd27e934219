"""Batched augmentation baselines: change images, keep shape and range, per-sample draws."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipeline_src.methods.augment import TRANSFORMS, affine, gaussian_blur
from pipeline_src.methods.augment import make_augment as make_resolved
from pipeline_src.spec.method_spec import resolve_augment


def make_augment(spec):
    """As the run table does it: the spec resolved (defaults, checks), then the transform."""
    return make_resolved(resolve_augment(spec))


def images(n=6, chans=3, height=16, width=16):
    """Smooth, structured images (not noise) so blur and shifts visibly change them."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(n, chans, height // 4, width // 4, generator=gen)
    return torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kind", list(TRANSFORMS))
@pytest.mark.parametrize("chans", [1, 3])
def test_changes_images_keeps_shape_and_range(kind, chans):
    x = images(chans=chans)
    torch.manual_seed(0)
    out = make_augment({"kind": kind})(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("kind", list(TRANSFORMS))
def test_parameters_differ_within_a_batch(kind):
    x = images(n=1).repeat(8, 1, 1, 1)  # eight copies of one image
    torch.manual_seed(0)
    out = make_augment({"kind": kind})(x)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= 4


@pytest.mark.parametrize("kind", list(TRANSFORMS))
def test_seeded_runs_repeat(kind):
    x = images()
    aug = make_augment({"kind": kind})
    torch.manual_seed(3)
    first = aug(x)
    torch.manual_seed(3)
    assert torch.equal(first, aug(x))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 12, 20)])
def test_rotation_matches_torchvision(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    for angle in (30.0, -17.0):
        ours = affine(x, torch.full((shape[0],), angle), torch.zeros(shape[0], 2))
        ref = TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_translation_moves_whole_pixels():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = affine(x, torch.zeros(1), torch.tensor([[1.0, 2.0]]), mode="nearest")
    expected = torch.zeros(1, 1, 5, 5)
    expected[..., 2:, 1:] = x[..., :3, :4]
    assert torch.equal(out, expected)


def test_blur_matches_torchvision_for_fixed_sigma():
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    ours = gaussian_blur(x, 5, torch.tensor([0.7, 0.7]))
    torch.testing.assert_close(ours, TF.gaussian_blur(x, [5, 5], [0.7, 0.7]), atol=1e-6, rtol=0)


def test_random_noise_touches_about_fraction_of_pixels():
    x = torch.full((4, 3, 32, 32), 0.5)
    torch.manual_seed(0)
    out = make_augment({"kind": "random_noise", "fraction": 0.25})(x)
    changed = (out != x).any(1).float().mean().item()
    assert changed == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("bad", [
    {"kind": "cutout"},
    {"kind": "rotation", "degrees": -5},
    {"kind": "rotation", "fraction": 0.1},
    {"kind": "translation", "fraction": 1.5},
    {"kind": "color_jitter", "brightness": "a lot"},
    {"kind": "gaussian_blur", "kernel_size": 4},
    {"kind": "gaussian_blur", "sigma": [2.0, 0.5]},
    {"kind": "random_noise", "fraction": True},
])
def test_bad_spec_is_one_line_error(bad):
    with pytest.raises(ValueError) as err:
        make_augment(bad)
    assert "\n" not in str(err.value)


def test_non_batch_input_is_one_line_error():
    with pytest.raises(ValueError, match="float NCHW"):
        make_augment({"kind": "rotation"})(torch.rand(3, 8, 8))
