"""A method's name in the params -> the class that trains it, imported on use so a baseline job never
pays for the others."""
from __future__ import annotations

import importlib

from torch import nn

from pipeline_src.methods.base import Method

REGISTRY = {
    "baseline": "pipeline_src.methods.base:Method",
    "noisynn": "pipeline_src.methods.noisynn:NoisyNNMethod",
    "vpn": "pipeline_src.methods.vpn:VPNMethod",
}


def build_method(model: nn.Module, spec: dict, info: dict) -> Method:
    """info: num_classes, in_shape, and (frozen VPN) base_checkpoint."""
    module_name, class_name = REGISTRY[spec["name"]].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(model, spec, info)


def build_run_method(cfg, data, base_checkpoint=None) -> Method:
    """A run's model and method (cfg: a spec.config.RunConfig; data: its prepared dataset), freshly
    initialised: what training starts from, and what a trained model.pt ("method") loads into to be evaluated."""
    from pipeline_src.methods.models import build_from_cfg

    in_shape = tuple(data.x_train.shape[1:])
    num_classes = len(data.class_names)
    model = build_from_cfg(cfg.model_cfg, in_shape, num_classes)
    info = {"num_classes": num_classes, "in_shape": in_shape, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "eval_batch_size": cfg.eval_batch_size, "label_smoothing": cfg.label_smoothing,
            "base_checkpoint": str(base_checkpoint) if base_checkpoint else None}
    return build_method(model, cfg.method, info)
