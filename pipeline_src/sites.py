"""Where noise can go in a model: named sites, resolved to a module path of `model.named_modules()`.
Noise is applied to that module's first positional input (hooks.py). Site names mean the same on
every model timm builds, because stages come from timm's own `feature_info`:

- `stage:<i>`: the input of stage i. A stage is a feature level of timm's `feature_info` (ResNet
  layer1..4, ConvNeXt stages.*, the groups of MobileNet's and EfficientNet's `blocks`, ViT blocks);
  a level that sits in a container brings all its siblings, so a group timm does not tap still
  counts, and a stem level (a lone module at the top, such as ResNet's act1) is not a stage.
- `block:<i>`: the input of block i, counting the blocks of every stage in forward order (ResNet
  BasicBlocks, ConvNeXt blocks, MobileNet/EfficientNet inverted residuals). ViT: the authors' site
  in block i, its `attn` (input: norm1's output; the residual path is untouched). DNN3: fc2, head;
  softmax regression: head.
- `default`: the authors' site, the last block (ViT: the last block's attn; ResNet: the last block of
  the last stage; DNN3 and SR: `head`, the last hidden layer's output or the flattened image).
- `image`: the model root, so the input batch itself.
- `embedding` (ViT): the input of `norm_pre`, the token sequence right after patch embedding, class
  token and position embedding; `norm_pre` is in every timm VisionTransformer (Identity by default).
- any module path of the model.
Negative indices count from the end.
"""
from __future__ import annotations

from torch import nn

# ViT modules outside `blocks.` whose input is still the (B, N, D) token sequence
_VIT_TOKEN_MODULES = ("pos_drop", "patch_drop", "norm_pre", "norm")
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), _CONTAINERS) and hasattr(model, "num_prefix_tokens")


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def stage_sites(model: nn.Module) -> list[str]:
    """Module paths of the stages, input to output, from timm's feature_info; [] without one."""
    modules = dict(model.named_modules())
    stages: list[str] = []
    for level in getattr(model, "feature_info", None) or []:
        path = level["module"] if isinstance(level, dict) else level
        parent = path.rpartition(".")[0]
        if parent and isinstance(modules.get(parent), _CONTAINERS):
            found = [_join(parent, name) for name, _ in modules[parent].named_children()]
        elif isinstance(modules.get(path), _CONTAINERS) or _inner_blocks(modules.get(path)) is not None:
            found = [path]
        else:  # a stem level
            found = []
        stages += [p for p in found if p not in stages]
    return stages


def _inner_blocks(module: nn.Module | None) -> nn.Module | None:
    """A stage module's container of blocks: itself if a container, else its `blocks` (ConvNeXt)."""
    if isinstance(module, _CONTAINERS):
        return module
    inner = getattr(module, "blocks", None)
    return inner if isinstance(inner, _CONTAINERS) else None


def _blocks_in(path: str, module: nn.Module) -> list[str]:
    inner = _inner_blocks(module)
    if inner is None:
        return [path]
    inner_path = path if inner is module else _join(path, "blocks")
    return [block for name, child in inner.named_children() for block in _blocks_in(_join(inner_path, name), child)]


def block_sites(model: nn.Module) -> list[str]:
    """Module paths a layer sweep walks, input to output; [] for a model without known blocks."""
    if _is_vit(model):
        return [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    stages = stage_sites(model)
    if stages:
        return [block for path in stages for block in _blocks_in(path, model.get_submodule(path))]
    children = dict(model.named_children())
    if {"fc1", "fc2", "head"} <= set(children):  # DNN3: inputs of the two layers after a hidden one
        return ["fc2", "head"]
    if "head" in children and isinstance(children["head"], nn.Linear):  # softmax regression
        return ["head"]
    return []


def valid_sites(model: nn.Module) -> str:
    """The site names this model accepts, for error messages."""
    blocks, stages = block_sites(model), stage_sites(model)
    names = ["image", "default"] if blocks else ["image"]
    if _is_vit(model):
        names.append("embedding")
    if blocks:
        names.append(f"block:<i> for i in [{-len(blocks)}, {len(blocks) - 1}]")
    if stages:
        names.append(f"stage:<i> for i in [{-len(stages)}, {len(stages) - 1}]")
    return ", ".join(names) + ", or a module path from model.named_modules()"


def _indexed(model: nn.Module, site: str, kind: str, paths: list[str]) -> str:
    try:
        index = int(site[len(kind) + 1:])
    except ValueError:
        raise ValueError(f"site {site!r} is not {kind}:<integer>; valid: {valid_sites(model)}") from None
    if not paths:
        raise ValueError(f"site {site!r}: {type(model).__name__} has no {kind}s that timm names; "
                         f"valid: {valid_sites(model)}")
    if not -len(paths) <= index < len(paths):
        raise ValueError(f"site {site!r} is out of range: {type(model).__name__} has {len(paths)} {kind}"
                         f"{'s' if len(paths) > 1 else ''} "
                         f"(indices {-len(paths)} to {len(paths) - 1})")
    return paths[index]


def _prefix_tokens(model: nn.Module, path: str) -> int:
    if _is_vit(model) and (path.startswith("blocks.") or path in _VIT_TOKEN_MODULES):
        return int(model.num_prefix_tokens)
    return 0


def resolve_site(model: nn.Module, site: str) -> tuple[str, int]:
    """(module path, prefix tokens to leave untouched); path "" is the model root."""
    if site == "image":
        return "", 0
    if site == "default":
        blocks = block_sites(model)
        if not blocks:
            raise ValueError(f"site 'default' needs known blocks, and {type(model).__name__} has none that timm "
                             f"names; valid: {valid_sites(model)}")
        path = blocks[-1]
    elif site == "embedding":
        if not _is_vit(model):
            raise ValueError(f"site 'embedding' exists only for ViTs, not {type(model).__name__}; "
                             f"valid: {valid_sites(model)}")
        path = "norm_pre"
    elif site.startswith("block:"):
        path = _indexed(model, site, "block", block_sites(model))
    elif site.startswith("stage:"):
        path = _indexed(model, site, "stage", stage_sites(model))
    else:
        path = site
    if not path or path not in dict(model.named_modules()):
        raise ValueError(f"site {site!r} is not a module of {type(model).__name__}; valid: {valid_sites(model)}")
    return path, _prefix_tokens(model, path)
