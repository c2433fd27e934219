"""VPN (variational positive-incentive noise, arXiv 2306.07651) as a training method.

A generator g maps the label-conditioned input x + c*y/(C-1) to a per-element noise
scale sigma >= 0; the classifier f sees x + sigma * z with z ~ N(0, I). The noise mean
is fixed at zero so g cannot write the label into the image. Definitions: docs/methods.md
section 2; where the paper text and the authors' code differ
both are offered (objective: noisy_ce = code, two_term = text).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.methods.generators import ResNet18Generator, build_generator
from pipeline_src.fileio import torch_load
from pipeline_src.spec.method_spec import VPN_SETTINGS
from pipeline_src.methods.base import Method, eval_mode, predict

# Class enumeration runs C copies of the input through g and f; a pass holds at most this
# many rows (or one eval batch, whichever is larger) so memory stays bounded for large C.
ENUM_MAX_ROWS = 4096
# The label-free enumeration reuses the labelled one's sigma (g is the costly half of a pass) when
# those C*N*D values fit in this many bytes, and runs g again otherwise; the numbers are the same.
ENUM_SIGMA_CACHE_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------- the maths

def condition(x: torch.Tensor, y, num_classes: int, c: float) -> torch.Tensor:
    """x + c * y / (C - 1): the class index as a constant added to every element of its sample."""
    y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
    shift = c * y / (num_classes - 1)
    return x + shift.reshape(-1, *([1] * (x.dim() - 1)))


def sample_noise(sigma: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """k reparameterised draws eps = sigma * z, z ~ N(0, I): shape (k, *sigma.shape).

    z comes from the global RNG of sigma's device unless a private generator is given.
    """
    z = torch.randn((k, *sigma.shape), dtype=sigma.dtype, device=sigma.device, generator=generator)
    return sigma.unsqueeze(0) * z


# ----------------------------------------------------------------------------- the method

class VPNMethod(Method):
    """Classifier f plus noise generator g; `generator` overrides the one named in spec."""

    def __init__(self, model: nn.Module, spec: dict, info: dict, generator: nn.Module | None = None):
        super().__init__(model, spec, info)
        self.settings = _resolve_settings(spec, info)
        self.num_classes = int(info["num_classes"])
        self.in_shape = tuple(int(s) for s in info["in_shape"])
        self.k, self.c, self.lam = self.settings["k"], self.settings["c"], self.settings["lam"]
        self.objective = self.settings["objective"]
        self.frozen = self.settings["mode"] == "frozen"
        if generator is None:
            generator = build_generator(self.settings["generator"], self.in_shape, self.settings["generator_hidden"],
                                        self.settings["generator_width"], self.settings["generator_small_stem"])
        _check_generator_shape(generator, self.in_shape)
        self.generator = generator
        if self.frozen:
            self._load_frozen_base(info.get("base_checkpoint"))

    def resolved_spec(self) -> dict:
        """The settings that ran, defaults filled; for a ResNet-18 generator, the stem it got."""
        resolved = {**self.spec, **self.settings}
        if isinstance(self.generator, ResNet18Generator):
            resolved["generator_small_stem"] = self.generator.small_stem
        return resolved

    def _load_frozen_base(self, path) -> None:
        if not path:
            raise ValueError("VPN mode 'frozen' needs info['base_checkpoint'] (a trained base model); none given")
        if not Path(path).is_file():
            raise ValueError(f"VPN mode 'frozen': base checkpoint {path} does not exist")
        state = torch_load(path, "delete it and run Snakemake again: its base run trains anew")
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError(f"VPN mode 'frozen': base checkpoint {path} has no 'model' entry")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:300]
            raise ValueError(f"VPN mode 'frozen': base checkpoint {path} does not fit the model: {reason}") from None
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # keeps BatchNorm statistics and dropout of the frozen base fixed
            self.model.eval()
        return self

    # ------------------------------------------------------------------ training

    def noisy_ce(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE of f(x + eps) against y, averaged over k draws per input."""
        sigma = self.generator(condition(x, y, self.num_classes, self.c))
        eps = sample_noise(sigma, self.k)
        logits = self.model((x.unsqueeze(0) + eps).flatten(0, 1))
        return F.cross_entropy(logits, y.repeat(self.k))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"VPN input has shape {tuple(x.shape[1:])} per sample, expected {self.in_shape}")
        if self.augment is not None:
            x = self.augment(x)
        if self.objective == "two_term":
            return F.cross_entropy(self.model(x), y) + self.lam * self.noisy_ce(x, y)
        return self.noisy_ce(x, y)

    # ------------------------------------------------------------------ evaluation

    @torch.inference_mode()
    def eval_predictions(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        # x may be an ImageStream, which has a length and a shape per sample but no numel
        sigma_bytes = len(x) * math.prod(self.in_shape) * self.num_classes * 4  # float32
        sigmas = [] if sigma_bytes <= ENUM_SIGMA_CACHE_BYTES else None
        with eval_mode(self):
            return {"class_enumeration": self.class_enumeration(x, batch_size, sigmas=sigmas),
                    "no_noise": predict(self.model, x, batch_size),
                    "class_enumeration_mean_sigma": self.class_enumeration(x, batch_size, label_free=True,
                                                                           sigmas=sigmas)}

    @torch.inference_mode()
    def enumeration_sigma(self, x: torch.Tensor) -> torch.Tensor:
        """sigma_k = g(x_i + c*k/(C-1)) for every candidate k, class-major: row k*b + i."""
        num_classes, b = self.num_classes, len(x)
        candidates = torch.arange(num_classes, device=x.device).repeat_interleave(b)
        repeated = x.repeat(num_classes, *([1] * (x.dim() - 1)))
        return self.generator(condition(repeated, candidates, num_classes, self.c))

    @torch.inference_mode()
    def enumeration_scores(self, x: torch.Tensor, z: torch.Tensor | None = None,
                           label_free: bool = False, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """score[i, k] = softmax(f(x_i + sigma_k * z_k))[k], sigma_k = g(x_i + c*k/(C-1)).

        All C candidates go through g and f in one pass: the batch is repeated class-major
        (row k*b + i is image i under candidate k). z, if given, is (C, b, *in_shape); sigma, if
        given, is enumeration_sigma(x).
        label_free: every candidate gets the mean of sigma_k over k, so the noise scale cannot
        carry the candidate label; the draws z_k still differ per candidate. The gap to the
        labelled scores is how much of the enumeration goes through the label.
        """
        num_classes, b = self.num_classes, len(x)
        repeated = x.repeat(num_classes, *([1] * (x.dim() - 1)))
        if sigma is None:
            sigma = self.enumeration_sigma(x)
        if label_free:
            per_class = sigma.view(num_classes, b, *sigma.shape[1:])
            sigma = per_class.mean(0, keepdim=True).expand_as(per_class).reshape(sigma.shape)
        if z is None:
            eps = sample_noise(sigma)[0]
        else:
            eps = sigma * z.reshape(sigma.shape).to(sigma.device)
        probs = self.model(repeated + eps).softmax(-1).view(num_classes, b, num_classes)
        return probs.diagonal(dim1=0, dim2=2)  # probs[k, i, k] -> (b, C)

    @torch.inference_mode()
    def class_enumeration(self, x: torch.Tensor, batch_size: int, z: torch.Tensor | None = None,
                          max_rows: int = ENUM_MAX_ROWS, label_free: bool = False,
                          sigmas: list | None = None) -> torch.Tensor:
        """Predicted classes by class enumeration; z (C, N, *in_shape) fixes the draws.

        sigmas: each pass's enumeration_sigma, appended while the list is shorter than the passes
        and read back after, so a second enumeration of the same x and batch_size skips g."""
        rows = max(batch_size, min(batch_size * self.num_classes, max_rows))
        per_pass = max(1, rows // self.num_classes)
        preds = []
        for j, i in enumerate(range(0, len(x), per_pass)):
            xb = x[i:i + per_pass]
            if sigmas is not None and len(sigmas) == j:
                sigmas.append(self.enumeration_sigma(xb))
            sigma = None if sigmas is None else sigmas[j]
            preds.append(self.enumeration_scores(xb, None if z is None else z[:, i:i + per_pass], label_free,
                                                 sigma).argmax(1))
        return torch.cat(preds)

    # ------------------------------------------------------------------ what g learned

    @torch.inference_mode()
    def diagnostics(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, batch_size: int) -> dict:
        """What g learned, with true-label conditioning, and whether f reads the label g was given.

        sigma_mean and sigma_zero_fraction (elements where sigma is exactly 0: a generator whose last
        ReLU died outputs 0 everywhere, and VPN is then plain training). top1_true_label_noise: accuracy
        with noise drawn for the true label, which is what training sees. wrong_label_followed: the share
        of predictions that name a random wrong label given to g (about (100 - top-1) / (C - 1) when the
        noise carries no label, near 100 when f reads the label off the noise). With an object mask, the
        channel-mean sigma on background and on the object.
        """
        if mask is not None and mask.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"VPN diagnostics: mask shape {tuple(mask.shape)} does not match images "
                             f"{tuple(x.shape)}; expected (N, H, W)")
        # private generators: measuring never moves the training RNG stream
        rng = torch.Generator(device="cpu").manual_seed(int(self.info.get("seed", 0)))
        draws = torch.Generator(device=x.device).manual_seed(int(self.info.get("seed", 0)))
        sums = _DiagnosticSums()
        with eval_mode(self):
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                wrong = (yb + torch.randint(1, self.num_classes, yb.shape, generator=rng).to(yb.device)) % self.num_classes
                # true label first, then the wrong one: the draws come off `draws` in this order
                hits, sigma = self._noisy_hits(xb, yb, draws)
                sums.true_label_correct += hits
                true_sigma = sigma.double().cpu()
                sums.wrong_label_followed += self._noisy_hits(xb, wrong, draws)[0]
                sums.sigma += true_sigma.sum().item()
                sums.sigma_zeros += (true_sigma == 0).sum().item()
                sums.sigma_elements += true_sigma.numel()
                if mask is not None:
                    channel_mean = true_sigma.mean(1)
                    obj = mask[i:i + batch_size].bool().cpu()
                    sums.background_sigma += channel_mean[~obj].sum().item()
                    sums.background_pixels += (~obj).sum().item()
                    sums.object_sigma += channel_mean[obj].sum().item()
                    sums.object_pixels += obj.sum().item()
        out = {"sigma_mean": sums.sigma / sums.sigma_elements, "sigma_zero_fraction": sums.sigma_zeros / sums.sigma_elements,
               "top1_true_label_noise": 100.0 * sums.true_label_correct / len(x),
               "wrong_label_followed": 100.0 * sums.wrong_label_followed / len(x)}
        if mask is None:
            return out
        background = sums.background_sigma / sums.background_pixels if sums.background_pixels > 0 else float("nan")
        obj_mean = sums.object_sigma / sums.object_pixels if sums.object_pixels > 0 else float("nan")
        ratio = background / obj_mean if obj_mean > 0 else float("nan")
        return {**out, "sigma_mean_background": background, "sigma_mean_object": obj_mean, "bg_fg_sigma_ratio": ratio}

    def _noisy_hits(self, x: torch.Tensor, given: torch.Tensor, draws: torch.Generator) -> tuple[int, torch.Tensor]:
        """How many predictions of f(x + eps) name `given`, eps drawn with g conditioned on `given`; and g's sigma."""
        sigma = self.generator(condition(x, given, self.num_classes, self.c))
        pred = self.model(x + sample_noise(sigma, 1, generator=draws)[0]).argmax(1)
        return (pred == given).sum().item(), sigma

    @torch.inference_mode()
    def save_figures(self, out_dir, x: torch.Tensor, y: torch.Tensor, n: int = 4) -> Path:
        """vpn_sigma.png: per test image the image, its sigma map and one draw of x + eps."""
        x, y = x[:n], y[:n]
        with eval_mode(self):
            sigma = self.generator(condition(x, y, self.num_classes, self.c))
        # a private generator, so drawing a figure never moves the training RNG stream
        rng = torch.Generator(device=sigma.device).manual_seed(int(self.info.get("seed", 0)))
        noisy = x + sample_noise(sigma, 1, generator=rng)[0]
        from pipeline_src.methods.vpn_figure import plot_sigma  # matplotlib only when a figure is drawn

        return plot_sigma(Path(out_dir) / "vpn_sigma.png", x.cpu(), y.cpu(), sigma.cpu(), noisy.cpu(), self.c)


# ----------------------------------------------------------------------------- helpers

@dataclasses.dataclass
class _DiagnosticSums:
    """Running sums over the diagnostics' batches, in float64 (Python floats) so the means do not drift."""
    sigma: float = 0.0  # of g's sigma under the true label
    sigma_zeros: float = 0.0  # elements where that sigma is exactly 0
    sigma_elements: float = 0.0
    true_label_correct: float = 0.0  # predictions equal to the true label g was given
    wrong_label_followed: float = 0.0  # predictions equal to the wrong label g was given
    background_sigma: float = 0.0  # channel-mean sigma summed over background pixels (with a mask)
    background_pixels: float = 0.0
    object_sigma: float = 0.0
    object_pixels: float = 0.0


def _resolve_settings(spec: dict, info: dict) -> dict:
    """The VPN settings of a resolved spec (method_spec.resolve_method), checked against the data."""
    settings = {key: spec[key] for key in VPN_SETTINGS}
    if int(info["num_classes"]) < 2:
        raise ValueError(f"VPN needs at least 2 classes for its label conditioning, got {info['num_classes']}")
    return settings


def _check_generator_shape(generator: nn.Module, in_shape: tuple[int, ...]) -> None:
    """One forward on zeros: sigma must have the input's shape, or VPN cannot add it."""
    param = next(generator.parameters(), None)
    probe = torch.zeros(2, *in_shape, device=param.device if param is not None else "cpu")
    with eval_mode(generator), torch.no_grad():
        try:
            out_shape = tuple(generator(probe).shape[1:])
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:200]
            raise ValueError(f"VPN generator does not accept inputs of shape {in_shape}: {reason}") from None
    if out_shape != tuple(in_shape):
        raise ValueError(f"VPN generator outputs sigma of shape {out_shape} for inputs of shape {tuple(in_shape)}")
