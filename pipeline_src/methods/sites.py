"""Where noise can go in a model: named sites, resolved to a module path of `model.named_modules()`.
Noise is applied to that module's first positional input (hooks.py). Site names mean the same on
every model timm builds, because stages come from timm's own `feature_info`:

- `stage:<i>`: the input of stage i. A stage is a feature level of timm's `feature_info` (ResNet
  layer1..4, RegNet s1..s4, ConvNeXt stages.*, the groups of MobileNet's and EfficientNet's `blocks`,
  ViT blocks). A level that sits in a container brings all its siblings, so a group timm does not tap
  still counts. A level outside a container is a stage when it holds its blocks in a container (ResNet's
  layer1, a Sequential), or when it is one of several levels of the same class and holds more than
  layers (RegNet's four RegStage modules, whose blocks b1, b2, ... are plain children); a lone level
  of its own class (ResNet's act1, MobileNet's bn1, RegNet's stem, NFNet's final_conv) or a layer
  (Inception's ConvNormAct levels) is a stem or head, not a stage.
- `block:<i>`: the input of block i, counting the blocks of every stage in forward order (ResNet
  BasicBlocks, RegNet Bottlenecks, ConvNeXt blocks, MobileNet/EfficientNet inverted residuals). ViT: the authors' site
  in block i, its `attn` (input: norm1's output; the residual path is untouched). DNN3: fc2, head;
  softmax regression: head.
- `branch:<i>`: the residual branch of block i (counted as for `block:<i>`), the skip path left clean:
  the input of the block's first layer, where a timm ResNet BasicBlock or Bottleneck has already kept
  its input aside as the shortcut (and any downsample works on that copy). `block:<i>` mixes both paths,
  so `branch:-1` against `block:-1` isolates what mixing the skip path adds. Only models whose blocks are
  all such residual blocks have branch sites (a ViT's `block:<i>` already leaves its skip path clean).
- `default`: the authors' site, the last block (ViT: the last block's attn; ResNet: the last block of
  the last stage; DNN3 and SR: `head`, the last hidden layer's output or the flattened image).
- `image`: the model root, so the input batch itself.
- `embedding` (ViT): the input of `norm_pre`, the token sequence right after patch embedding, class
  token and position embedding; `norm_pre` is in every timm VisionTransformer (Identity by default).
- any module path of the model.
Negative indices count from the end.
"""
from __future__ import annotations

from collections import Counter

from torch import nn

# ViT modules outside `blocks.` whose input is still the (B, N, D) token sequence
_VIT_TOKEN_MODULES = ("pos_drop", "patch_drop", "norm_pre", "norm")
_CONTAINERS = (nn.Sequential, nn.ModuleList)
# Residual blocks whose forward keeps its input aside as the shortcut before calling the named child, so
# that child's input is the residual branch alone. Known by class, not by a child's name: a `conv1` in a
# block of another family says nothing about where that block takes its shortcut.
_BRANCH_ENTRY = {("timm.models.resnet", "BasicBlock"): "conv1", ("timm.models.resnet", "Bottleneck"): "conv1"}


def _is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), _CONTAINERS) and hasattr(model, "num_prefix_tokens")


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _in_container(modules: dict[str, nn.Module], path: str) -> bool:
    parent = path.rpartition(".")[0]
    return bool(parent) and isinstance(modules.get(parent), _CONTAINERS)


def stage_sites(model: nn.Module) -> list[str]:
    """Module paths of the stages, input to output, from timm's feature_info; [] without one."""
    modules = dict(model.named_modules())
    levels = [level["module"] if isinstance(level, dict) else level
              for level in getattr(model, "feature_info", None) or []]
    # levels outside a container, by class: a class that several levels share is a run of stages
    kinds = Counter(type(modules[path]) for path in levels
                    if path and path in modules and not _in_container(modules, path))
    stages: list[str] = []
    for path in levels:
        module = modules.get(path) if path else None  # "" (the whole model, as TResNet names one) is no stage
        if module is None:
            found = []
        elif _in_container(modules, path):
            parent = path.rpartition(".")[0]
            found = [_join(parent, name) for name, _ in modules[parent].named_children()]
        elif _inner_blocks(module) is not None or (kinds[type(module)] > 1 and not _is_layer(module)):
            found = [path]
        else:  # a stem or head: a lone level of its own class, or a layer (Inception's ConvNormAct levels)
            found = []
        stages += [p for p in found if p not in stages]
    return stages


def _inner_blocks(module: nn.Module | None) -> nn.Module | None:
    """A stage module's container of blocks: itself if a container, else its `blocks` (ConvNeXt)."""
    if isinstance(module, _CONTAINERS):
        return module
    inner = getattr(module, "blocks", None)
    return inner if isinstance(inner, _CONTAINERS) else None


def _is_layer(module: nn.Module) -> bool:
    """A layer (a conv, norm or activation, or a ConvNormAct of them), not something holding blocks:
    no child of it has parameters in a child of its own."""
    return not any(any(True for _ in grandchild.parameters())
                   for child in module.children() for grandchild in child.children())


def _blocks_in(path: str, module: nn.Module) -> list[str]:
    inner = _inner_blocks(module)
    if inner is None:
        return [path]
    inner_path = path if inner is module else _join(path, "blocks")
    return [block for name, child in inner.named_children() for block in _blocks_in(_join(inner_path, name), child)]


def _stage_blocks(model: nn.Module, path: str) -> list[str]:
    """A stage's blocks. A stage that is neither a container nor in one (RegNet's RegStage) holds its
    blocks as plain children; any other stage is walked as a container, or is one block itself."""
    stage = model.get_submodule(path)
    if _inner_blocks(stage) is None and not _in_container(dict(model.named_modules()), path):
        return [block for name, child in stage.named_children() for block in _blocks_in(_join(path, name), child)]
    return _blocks_in(path, stage)


def block_sites(model: nn.Module) -> list[str]:
    """Module paths a layer sweep walks, input to output; [] for a model without known blocks."""
    if _is_vit(model):
        return [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    stages = stage_sites(model)
    if stages:
        return [block for path in stages for block in _stage_blocks(model, path)]
    children = dict(model.named_children())
    if {"fc1", "fc2", "head"} <= set(children):  # DNN3: inputs of the two layers after a hidden one
        return ["fc2", "head"]
    if "head" in children and isinstance(children["head"], nn.Linear):  # softmax regression
        return ["head"]
    return []


def branch_sites(model: nn.Module) -> list[str]:
    """Module paths whose input is the residual branch of each block, in block_sites order; [] unless every
    block is a residual block _BRANCH_ENTRY knows, so that branch:<i> and block:<i> name the same block."""
    modules = dict(model.named_modules())
    blocks = block_sites(model)
    entries = [_BRANCH_ENTRY.get((type(modules[path]).__module__, type(modules[path]).__qualname__))
               for path in blocks]
    if not blocks or None in entries:
        return []
    return [_join(path, entry) for path, entry in zip(blocks, entries)]


def valid_sites(model: nn.Module) -> str:
    """The site names this model accepts, for error messages."""
    blocks, stages, branches = block_sites(model), stage_sites(model), branch_sites(model)
    names = ["image", "default"] if blocks else ["image"]
    if _is_vit(model):
        names.append("embedding")
    if blocks:
        names.append(f"block:<i> for i in [{-len(blocks)}, {len(blocks) - 1}]")
    if stages:
        names.append(f"stage:<i> for i in [{-len(stages)}, {len(stages) - 1}]")
    if branches:
        names.append(f"branch:<i> for i in [{-len(branches)}, {len(branches) - 1}]")
    return ", ".join(names) + ", or a module path from model.named_modules()"


def _indexed(model: nn.Module, site: str, kind: str, paths: list[str], noun: str = "") -> str:
    noun = noun or kind
    try:
        index = int(site[len(kind) + 1:])
    except ValueError:
        raise ValueError(f"site {site!r} is not {kind}:<integer>; valid: {valid_sites(model)}") from None
    if not paths:
        raise ValueError(f"site {site!r}: {type(model).__name__} has no {kind}s that timm names; "
                         f"valid: {valid_sites(model)}")
    if not -len(paths) <= index < len(paths):
        raise ValueError(f"site {site!r} is out of range: {type(model).__name__} has {len(paths)} {noun}"
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
    elif site.startswith("branch:"):
        branches = branch_sites(model)
        if not branches:
            raise ValueError(f"site {site!r} needs residual blocks with a known branch (timm ResNet BasicBlock or "
                             f"Bottleneck), and {type(model).__name__} has none; valid: {valid_sites(model)}")
        path = _indexed(model, site, "branch", branches, noun="residual block")
    else:
        path = site
    if not path or path not in dict(model.named_modules()):
        raise ValueError(f"site {site!r} is not a module of {type(model).__name__}; valid: {valid_sites(model)}")
    return path, _prefix_tokens(model, path)
