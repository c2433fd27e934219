"""Attach noise to any layer of any model with a removable forward pre-hook.

Model classes are never copied or edited: a site is a module path from
`model.named_modules()`, and the noise is applied to that module's first positional
input. Sites, by name:

- `default`: the authors' site. ViT: the last block's `attn` (its input is norm1's output,
  before qkv; the residual path is untouched). ResNet: the input of the last block of the
  last stage. DNN3 and SR: `head`, i.e. the last hidden layer's output (SR: the flattened image).
- `image`: the model root, so the input batch itself.
- `embedding` (ViT): a pre-hook on `norm_pre`, whose input is the token sequence right after
  patch embedding, class token concatenation, position embedding and its dropouts, i.e.
  exactly what the first block would see without a pre-norm. `norm_pre` exists (as Identity)
  in every timm VisionTransformer, so this point is stable; the class token is left alone.
- `block:<i>`: index into `block_sites(model)`, negative allowed.
- any module path of the model.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle

from pipeline_src.noise import apply_noise, resolve_noise

# ViT modules outside `blocks.` whose input is still the (B, N, D) token sequence
_VIT_TOKEN_MODULES = ("pos_drop", "patch_drop", "norm_pre", "norm")


def _is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)) and hasattr(model, "num_prefix_tokens")


def _is_resnet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, f"layer{s}", None), nn.Sequential) for s in range(1, 5))


def block_sites(model: nn.Module) -> list[str]:
    """Module paths a layer sweep walks, input to output; [] for a model we know no blocks of."""
    if _is_vit(model):
        return [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    if _is_resnet(model):
        return [f"layer{s}.{b}" for s in range(1, 5) for b in range(len(getattr(model, f"layer{s}")))]
    children = dict(model.named_children())
    if {"fc1", "fc2", "head"} <= set(children):  # DNN3: inputs of the two layers after a hidden one
        return ["fc2", "head"]
    if "head" in children and isinstance(children["head"], nn.Linear):  # softmax regression
        return ["head"]
    return []


def _site_names(model: nn.Module) -> str:
    sites = block_sites(model)
    tops = [name for name, _ in model.named_children()]
    special = "image, default, embedding" if _is_vit(model) else "image, default"
    return (f"{special}, block:<i> for i in [-{len(sites)}, {len(sites) - 1}] "
            f"(block sites: {', '.join(sites) or 'none known'}), or any module path "
            f"from model.named_modules() (top level: {', '.join(tops)})")


def _prefix_tokens(model: nn.Module, path: str) -> int:
    if not _is_vit(model):
        return 0
    if path.startswith("blocks.") or path in _VIT_TOKEN_MODULES:
        return int(model.num_prefix_tokens)
    return 0


def resolve_site(model: nn.Module, site: str) -> tuple[str, int]:
    """(module path, prefix tokens to leave untouched); path "" is the model root."""
    sites = block_sites(model)
    if site == "image":
        return "", 0
    if site == "default":
        if not sites:
            raise ValueError(f"site='default' is not defined for {type(model).__name__}; valid: {_site_names(model)}")
        path = sites[-1]
    elif site == "embedding":
        if not _is_vit(model):
            raise ValueError(f"site='embedding' exists only for ViTs, not {type(model).__name__}; valid: {_site_names(model)}")
        path = "norm_pre"
    elif site.startswith("block:"):
        try:
            index = int(site[len("block:"):])
        except ValueError:
            raise ValueError(f"site={site!r} is not block:<integer>; valid: {_site_names(model)}") from None
        if not -len(sites) <= index < len(sites):
            raise ValueError(f"site={site!r} is out of range: {type(model).__name__} has {len(sites)} block sites, "
                             f"valid indices {-len(sites)} to {len(sites) - 1}")
        path = sites[index]
    else:
        path = site
    if not path or path not in dict(model.named_modules()):
        raise ValueError(f"site={site!r} is not a module of {type(model).__name__}; valid: {_site_names(model)}")
    return path, _prefix_tokens(model, path)


def attach_noise(model: nn.Module, site: str, spec: dict, is_active: Callable[[], bool]) -> RemovableHandle:
    """Noise the input of the module at `site` whenever is_active() is True. Returns the hook handle."""
    spec = resolve_noise(spec)  # validates; resolved once, not on every forward
    path, prefix = resolve_site(model, site)
    module = model.get_submodule(path)

    def noise_input(_module, args):
        if not is_active():
            return None  # None keeps the original inputs
        return (apply_noise(args[0], spec, prefix), *args[1:])

    return module.register_forward_pre_hook(noise_input)
