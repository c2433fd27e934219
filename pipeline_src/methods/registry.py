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
