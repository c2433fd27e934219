"""Training methods: what a run optimises and how it is evaluated.

A method wraps the classifier in an nn.Module that owns everything trained with it
(a VPN generator, a noise hook). The training loop only calls `training_loss` and
`evaluations`, so the loop is one for every method.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class Method(nn.Module):
    """Base model trained alone with cross-entropy; optional batched augmentation."""

    def __init__(self, model: nn.Module, spec: dict, info: dict):
        super().__init__()
        self.model = model
        self.spec = spec
        self.info = info
        self.augment = None
        if spec.get("augment"):
            from pipeline_src.methods.augment import make_augment

            self.augment = make_augment(spec["augment"])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: the forward DistributedDataParallel wraps (distributed.py)."""
        return self.training_loss(x, y)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            x = self.augment(x)
        return F.cross_entropy(self.model(x), y, label_smoothing=self.info.get("label_smoothing", 0.0))

    def resolved_spec(self) -> dict:
        """The method as it ran, every default filled (written to metrics.json and MLflow)."""
        return dict(self.spec)

    def eval_plan(self, eval_batch_size: int) -> dict[str, dict]:
        """eval_mode -> how it was evaluated (noise on, test batches, test batch size)."""
        return {"no_noise": {"noise": False, "test_batches": "-", "test_batch_size": eval_batch_size}}

    @torch.inference_mode()
    def eval_predictions(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        """eval_mode -> predicted class of every test image, in the test set's order. The first entry is
        the run's headline evaluation."""
        return {"no_noise": predict(self.model, x, batch_size)}

    def evaluations(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, float]:
        """eval_mode -> top-1 accuracy in percent, from eval_predictions."""
        return {mode: top1(pred, y) for mode, pred in self.eval_predictions(x, y, batch_size).items()}

    @torch.inference_mode()
    def diagnostics(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, batch_size: int) -> dict:
        """Extra measurements a method can report (VPN: what its generator learned); with mask None they
        are also logged each epoch on fixed training images."""
        return {}

    def save_figures(self, out_dir, x: torch.Tensor, y: torch.Tensor) -> None:
        """Per-run figures a method can draw from test images."""


def predict(model: nn.Module, x: torch.Tensor, batch_size: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes of x, batch_size images at a time; with `order`, of x[order] (indexed batch by
    batch, so a streamed x is never decoded whole)."""
    if order is None:
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return torch.cat([model(x[order[i:i + batch_size]]).argmax(1) for i in range(0, len(order), batch_size)])


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (pred == y).float().mean().item()


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """module.eval() for the block, then the train/eval mode it had, even if the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
