"""Augmentation baselines of the VPN tables, batched on float NCHW tensors in [0, 1].

Every sample gets its own random parameters (torchvision.transforms.v2 applied to a batch
draws one set for the whole batch), so geometric transforms go through one batched
affine_grid/grid_sample and the photometric ones broadcast per-sample factors. All draws
come from the global torch RNG of the batch's device, so the training loop's seeding and
RNG checkpoints cover them.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

def make_augment(spec: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """spec: a resolved augmentation spec (method_spec.resolve_augment): its kind and that kind's keys."""
    opts = {key: value for key, value in spec.items() if key != "kind"}
    return functools.partial(_checked, functools.partial(TRANSFORMS[spec["kind"]], **opts))


def _checked(transform, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects a float NCHW batch, got {x.dtype} of shape {tuple(x.shape)}")
    return transform(x)


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


# ----------------------------------------------------------------------------- geometry

def affine(x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Rotate each sample about its centre by angles[i] degrees (counter-clockwise, as
    torchvision's rotate), then shift it by shifts[i] = (dx, dy) pixels; outside is 0."""
    _, _, height, width = x.shape
    rad = torch.deg2rad(angles.to(x.dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # Inverse map (output pixel -> input pixel) in pixel units about the centre, y pointing
    # down: p_in = M (p_out - t), M = [[cos, -sin], [sin, cos]].
    dx, dy = shifts[:, 0].to(x.dtype), shifts[:, 1].to(x.dtype)
    tx = -(cos * dx - sin * dy)
    ty = -(sin * dx + cos * dy)
    # affine_grid works in [-1, 1] per axis (align_corners=False: pixel p -> (2p+1)/size - 1),
    # so off-diagonal terms carry the aspect ratio and translations scale by 2/size.
    theta = torch.stack([
        torch.stack([cos, -sin * height / width, 2 * tx / width], dim=1),
        torch.stack([sin * width / height, cos, 2 * ty / height], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    angles = _uniform(len(x), -degrees, degrees, x.device)
    return affine(x, angles, torch.zeros(len(x), 2, device=x.device))


def random_translation(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Whole-pixel shifts up to fraction * size per axis (as torchvision's RandomAffine rounds them)."""
    _, _, height, width = x.shape
    limits = torch.tensor([fraction * width, fraction * height], device=x.device)
    shifts = torch.round((torch.rand(len(x), 2, device=x.device) * 2 - 1) * limits)
    # whole-pixel shifts land on pixel centres, so nearest sampling copies pixels exactly
    return affine(x, torch.zeros(len(x), device=x.device), shifts, mode="nearest")


# ----------------------------------------------------------------------------- photometry

def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x) if x.shape[1] == 3 else x.mean(1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Brightness, contrast, then saturation (3-channel only) with per-sample factors drawn
    uniformly from [max(0, 1 - a), 1 + a], blended as torchvision's adjust_* functions do."""
    n = len(x)
    amounts = (brightness, contrast, saturation)
    factors = [_uniform(n, max(0.0, 1 - a), 1 + a, x.device).view(n, 1, 1, 1) for a in amounts]
    x = (x * factors[0]).clamp(0, 1)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + factors[1] * (x - mean)).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _grayscale(x)
        x = (gray + factors[2] * (x - gray)).clamp(0, 1)
    return x


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample, reflect padding (as torchvision)."""
    n, chans, height, width = x.shape
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-0.5 * (taps / sigmas.to(x.dtype).view(n, 1)) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(chans, 0)  # (n*chans, k)
    pad = kernel_size // 2
    # every (sample, channel) plane is its own group, so one conv blurs all with their own kernel
    out = F.pad(x.reshape(1, n * chans, height, width), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernels.view(n * chans, 1, 1, kernel_size), groups=n * chans)
    out = F.conv2d(out, kernels.view(n * chans, 1, kernel_size, 1), groups=n * chans)
    return out.view(n, chans, height, width)


def random_gaussian_blur(x: torch.Tensor, kernel_size: int, sigma) -> torch.Tensor:
    if kernel_size // 2 >= min(x.shape[-2:]):
        raise ValueError(f"augment gaussian_blur.kernel_size = {kernel_size} is too large for "
                         f"{tuple(x.shape[-2:])} images")
    return gaussian_blur(x, kernel_size, _uniform(len(x), sigma[0], sigma[1], x.device))


def random_pixel_noise(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A random `fraction` of each image's pixels (all channels of a chosen pixel) gets
    standard Gaussian noise added; the VPN paper's 'random noise' baseline."""
    n, _, height, width = x.shape
    chosen = torch.rand(n, 1, height, width, device=x.device) < fraction
    return (x + torch.randn_like(x) * chosen).clamp(0, 1)


TRANSFORMS = {"rotation": random_rotation, "translation": random_translation, "color_jitter": color_jitter,
              "gaussian_blur": random_gaussian_blur, "random_noise": random_pixel_noise}
