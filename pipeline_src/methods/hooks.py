"""Attach noise at a named site of any model (sites.py) with a removable forward pre-hook.

Model classes are never copied or edited: the noise is applied to the first positional input of the
module the site resolves to, and removing the handle restores the model exactly.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

from pipeline_src.methods.noise import apply_noise
from pipeline_src.methods.sites import resolve_site


def attach_noise(model: nn.Module, site: str, spec: dict, is_active: Callable[[], bool]) -> RemovableHandle:
    """Noise the input of the module at `site` whenever is_active() is True. Returns the hook handle.
    spec: a resolved noise spec (method_spec.resolve_noise)."""
    path, prefix = resolve_site(model, site)
    return noise_input_of(model.get_submodule(path), prefix, spec, is_active)


def noise_input_of(module: nn.Module, prefix: int, spec: dict, is_active: Callable[[], bool]) -> RemovableHandle:
    """attach_noise on a module already found (prefix: leading tokens left untouched)."""

    def noise_input(_module, args):
        if not is_active():
            return None  # None keeps the original inputs
        return (apply_noise(args[0], spec, prefix), *args[1:])

    return module.register_forward_pre_hook(noise_input)
