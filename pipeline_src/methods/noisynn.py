"""NoisyNN as a training method: a classifier with batch-mixing noise hooked into one layer.

Where noise applies (train, test, both) and how test batches are formed (class-sorted as
in the authors' loader, shuffled with the run's seed, or one image at a time) are params,
because with batch-mixing noise a test prediction depends on which other test images share
its batch (docs/methods.md section 1.4). Every evaluation protocol is reported side by side.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_src.methods.hooks import noise_input_of
from pipeline_src.methods.sites import resolve_site
from pipeline_src.spec.method_spec import TEST_BATCHES, eval_plan
from pipeline_src.methods.base import Method, eval_mode, predict


def eval_batch_order(how: str, y: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices into the test set in the order batches are cut from it."""
    if how == "class_sorted":  # the authors' ImageFolder loader walks classes in order
        return torch.sort(y, stable=True).indices
    if how == "shuffled":  # own generator: the order depends on the seed only, not on the RNG stream
        return torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    if how == "single":
        return torch.arange(len(y), device=y.device)
    raise ValueError(f"test_batches={how!r} is not allowed; allowed: {', '.join(TEST_BATCHES)}")


class NoisyNNMethod(Method):
    """The base model with noise on the input of one layer (a removable forward pre-hook).

    Noise follows the model's mode: in train mode it is on iff apply_at is train or both, so a
    backward pass that recomputes activations (gradient checkpointing) sees the same noise
    switch as the forward did; in eval mode it is on only inside a noisy evaluation.
    """

    def __init__(self, model: nn.Module, spec: dict, info: dict):
        resolved = spec  # resolved once, by config.expand_runs (method_spec.resolve_method)
        site_path, prefix_tokens = resolve_site(model, resolved["site"])  # fail fast, before any state
        super().__init__(model, resolved, info)
        self.site_path, self.prefix_tokens = site_path, prefix_tokens
        self.train_noise = resolved["apply_at"] in ("train", "both")
        self.eval_noise = False
        self.noise_handle = noise_input_of(model.get_submodule(site_path), prefix_tokens, resolved["noise"],
                                           self._noise_active)

    def _noise_active(self) -> bool:
        return self.train_noise if self.model.training else self.eval_noise

    def resolved_spec(self) -> dict:
        """The spec that ran: defaults filled, the module the site resolved to, the test batch size."""
        size = self.spec["test_batch_size"] or self.info.get("eval_batch_size")
        return {**self.spec, "site_module": self.site_path, "test_batch_size": size}

    def eval_plan(self, eval_batch_size: int) -> dict[str, dict]:
        return eval_plan(self.spec, eval_batch_size)

    @torch.inference_mode()
    def predictions(self, how: str, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Predicted classes in the test set's own order: `how` is none (noise off) or how test
        batches of batch_size are formed with noise on (class_sorted, shuffled, single).

        y only decides the class-sorted batch order; it is not looked at otherwise.
        """
        with eval_mode(self.model):
            try:
                if how == "none":
                    return predict(self.model, x, batch_size)
                order = eval_batch_order(how, y, self.info["seed"])
                size = 1 if how == "single" else batch_size
                # A forked, seeded RNG: random kinds draw the same test noise every time, and
                # evaluating mid-training leaves the training stream where it was.
                devices = [y.device.index or 0] if y.is_cuda else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.info["seed"])
                    self.eval_noise = True
                    pred = predict(self.model, x, size, order)
                result = torch.empty_like(pred)
                result[order] = pred
                return result
            finally:
                self.eval_noise = False

    @torch.inference_mode()
    def eval_predictions(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        """eval_mode -> predictions in test-set order; the first key is the headline for the run's own setting."""
        return {mode: self.predictions(plan["test_batches"] if plan["noise"] else "none", x, y, plan["test_batch_size"])
                for mode, plan in self.eval_plan(batch_size).items()}
