"""NoisyNN as a training method: a classifier with batch-mixing noise hooked into one layer.

Where noise applies (train, test, both) and how test batches are formed (class-sorted as
in the authors' loader, shuffled with the run's seed, or one image at a time) are params,
because with batch-mixing noise a test prediction depends on which other test images share
its batch (METHODS.md section 1). Every evaluation protocol is reported side by side.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_src.hooks import attach_noise, resolve_site
from pipeline_src.methods import Method, predict, top1
from pipeline_src.noise import check_noise, resolve_noise

APPLY_AT = ("train", "test", "both")
TEST_BATCHES = ("shuffled", "class_sorted", "single")
EVAL_PROTOCOLS = ("none", *TEST_BATCHES)
# test_batch_size None: the run's eval_batch_size. eval_batch_sizes: extra test batch sizes, each
# evaluated under every batch-mixing protocol of eval_protocols (the batch-size study).
METHOD_DEFAULTS = {"site": "default", "apply_at": "both", "test_batches": "shuffled", "eval_protocols": [],
                   "test_batch_size": None, "eval_batch_sizes": []}
NOISE_DEFAULT = {"kind": "circular_shift", "strength": 0.3}
# keys of the schema's method entry that NoisyNN reads; the VPN ones are rejected
KNOWN_KEYS = ("label", "name", "augment", "grid", "noise", "site", "apply_at", "test_batches", "eval_protocols",
              "test_batch_size", "eval_batch_sizes")


def _one_of(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def check_method_spec(spec: dict, batch_size: int) -> dict:
    """Validate a NoisyNN method spec without a model; return it with defaults filled.

    batch_size is the training batch: it matters when noise applies in training (optimal Q
    cannot mix a batch of one). Site names are checked against a model by NoisyNNMethod.
    """
    unknown = [key for key in spec if key not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"method key {unknown[0]!r} is not used by noisynn; allowed: {', '.join(KNOWN_KEYS)}")
    resolved = {**METHOD_DEFAULTS, **spec}
    _one_of("apply_at", resolved["apply_at"], APPLY_AT)
    _one_of("test_batches", resolved["test_batches"], TEST_BATCHES)
    for protocol in resolved["eval_protocols"]:
        _one_of("eval_protocols item", protocol, EVAL_PROTOCOLS)
    site = resolved["site"]
    if not isinstance(site, str) or not site:
        raise ValueError(f"site={site!r} must be image, embedding, default, block:<i> or a module path")
    if site.startswith("block:"):
        try:
            int(site[len("block:"):])
        except ValueError:
            raise ValueError(f"site={site!r} is not block:<integer>") from None
    noise = resolved.get("noise", NOISE_DEFAULT)
    in_training = resolved["apply_at"] in ("train", "both")
    check_noise(noise, batch_size if in_training else None, training=True)
    resolved["noise"] = resolve_noise(noise)
    return resolved


def eval_plan(resolved: dict, eval_batch_size: int) -> dict[str, dict]:
    """eval_mode -> {noise, test_batches, test_batch_size}, in report order: the run's own setting
    first, then each protocol once, then each extra batch size under each batch-mixing protocol."""
    size = resolved["test_batch_size"] or eval_batch_size
    plan = {}

    def add(how: str, batch_size: int, suffix: str = "") -> None:
        if how == "none":
            plan.setdefault("no_noise", {"noise": False, "test_batches": "-", "test_batch_size": eval_batch_size})
        else:
            plan.setdefault(f"noise_{how}{suffix}", {"noise": True, "test_batches": how,
                                                     "test_batch_size": 1 if how == "single" else batch_size})

    add("none" if resolved["apply_at"] == "train" else resolved["test_batches"], size)
    for protocol in resolved["eval_protocols"]:
        add(protocol, size)
    for batch_size in resolved["eval_batch_sizes"]:
        for protocol in resolved["eval_protocols"]:
            if protocol in ("class_sorted", "shuffled"):
                add(protocol, batch_size, f"_b{batch_size}")
    return plan


def eval_modes(resolved: dict) -> list[str]:
    """Evaluation names in report order (see eval_plan)."""
    return list(eval_plan(resolved, 1))


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
        resolved = check_method_spec(spec, info["batch_size"])
        site_path, prefix_tokens = resolve_site(model, resolved["site"])  # fail fast, before any state
        super().__init__(model, resolved, info)
        self.site_path, self.prefix_tokens = site_path, prefix_tokens
        self.train_noise = resolved["apply_at"] in ("train", "both")
        self.eval_noise = False
        self.noise_handle = attach_noise(model, resolved["site"], resolved["noise"], self._noise_active)

    def _noise_active(self) -> bool:
        return self.train_noise if self.model.training else self.eval_noise

    def resolved_spec(self) -> dict:
        """The spec that ran: defaults filled, the module the site resolved to, the test batch size."""
        size = self.spec["test_batch_size"] or self.info.get("eval_batch_size")
        return {**self.spec, "site_module": self.site_path, "test_batch_size": size}

    def eval_plan(self, eval_batch_size: int) -> dict[str, dict]:
        return eval_plan(self.spec, eval_batch_size)

    @torch.no_grad()
    def predictions(self, how: str, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Predicted classes in the test set's own order: `how` is none (noise off) or how test
        batches of batch_size are formed with noise on (class_sorted, shuffled, single).

        y only decides the class-sorted batch order; it is not looked at otherwise.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            if how == "none":
                return predict(self.model, x, batch_size)
            order = eval_batch_order(how, y, self.info["seed"])
            size = 1 if how == "single" else batch_size
            # A forked, seeded RNG: random kinds draw the same test noise every time, and
            # evaluating mid-training leaves the training stream where it was.
            devices = [x.device.index or 0] if x.is_cuda else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.info["seed"])
                self.eval_noise = True
                pred = predict(self.model, x[order], size)
            result = torch.empty_like(pred)
            result[order] = pred
            return result
        finally:
            self.eval_noise = False
            self.model.train(was_training)

    @torch.no_grad()
    def evaluations(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, float]:
        """eval_mode -> top-1 percent; the first key is the headline for the run's own setting."""
        return {mode: top1(self.predictions(plan["test_batches"] if plan["noise"] else "none", x, y,
                                            plan["test_batch_size"]), y)
                for mode, plan in self.eval_plan(batch_size).items()}
