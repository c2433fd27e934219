"""Classifiers by name: softmax regression, DNN3, and any timm model.

timm is the factory for everything convolutional or attention-based, so a new
architecture needs a name in params, not code here. A model whose constructor takes
img_size (ViTs, Swin) is built for the dataset's image size; one that takes none
(ResNets, FastViT, ConvNeXt) runs at any size as it is. small_stem: ResNets lose
their stride-2 7x7 stem and max-pool, models taking a patch_size get one that fits
the image; any other model has no stem to change, and small_stem is an error.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_src.methods.base import eval_mode
from pipeline_src.fileio import torch_load
from pipeline_src.spec.config import weights_path

WEIGHTS_REMEDY = "give weights_file a state_dict of this model (torch.save(model.state_dict(), path))"


class SoftmaxRegression(nn.Module):
    """One linear layer on the flattened image."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.head(self.flatten(x))


class DNN3(nn.Module):
    """D-H-H-C multilayer perceptron with ReLU and no dropout (the VPN paper's DNN3)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.act1(self.fc1(self.flatten(x)))
        return self.head(self.act2(self.fc2(x)))


def _small_resnet_stem(model: nn.Module, in_chans: int) -> None:
    width = model.bn1.num_features  # also right for timm's deep (Sequential) stems
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _small_patch_size(img_size: int) -> int:
    """Largest patch size <= 4 that divides the image, so 8 px digits get 2x2 patches."""
    for patch in (4, 2, 1):
        if img_size % patch == 0 and img_size // patch >= 2:
            return patch
    return 1


def _create_model(timm, arch: str, kwargs: dict, optional: dict):
    """timm.create_model with the optional keyword arguments the model's constructor takes, and those taken:
    timm passes keywords through to the class, whose TypeError names the one it does not take. Asked of
    the constructor, not guessed from the name (FastViT has "vit" in its name and takes no img_size)."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(arch, **kwargs, **optional), optional
        except TypeError as err:
            refused = next((key for key in optional if f"'{key}'" in str(err)), None)
            if refused is None:
                raise
            del optional[refused]


def add_input_norm(model: nn.Module, mean, std) -> None:
    """Inputs in [0, 1] become (x - mean) / std per channel, by a forward pre-hook on the model root,
    so module paths (noise sites) stay those of the timm model. Registered at build time, it runs
    before any noise hook attached later: image-level noise sees normalised inputs."""
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalise(module, args):
        x = args[0]
        return ((x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype), *args[1:])

    model.register_forward_pre_hook(normalise)


def _state_dict(path) -> dict:
    """A weights_file's tensors, checked before timm loads it: timm takes a file that is no state_dict for
    an unknown model name. timm's own wrappers (a checkpoint's "state_dict", "model", ...) are unwrapped."""
    state = torch_load(path, WEIGHTS_REMEDY)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"weights_file {path}: holds a {type(state).__name__}, not a state_dict of tensors; "
                         f"{WEIGHTS_REMEDY}")
    return state


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int,
                hidden: int | None = None, small_stem: bool = False, timm_kwargs: dict | None = None,
                input_norm="auto", weights_file: str | None = None) -> nn.Module:
    """Create a classifier for inputs of shape (C, H, W).

    input_norm: "auto" normalises a pretrained timm model's inputs with the mean and std of its
    weights' data config (timm's pretrained_cfg) and leaves other models alone; "none"; or
    {"mean": [...], "std": [...]} given explicitly (e.g. the authors' ImageNet statistics).
    weights_file: a local state_dict for a timm model, loaded by timm as its pretrained weights (nothing
    is downloaded); timm re-initialises the classifier when num_classes differs from the weights' config.
    """
    chans, height, width = in_shape
    if arch == "sr":
        return SoftmaxRegression(chans * height * width, num_classes)
    if arch == "dnn3":
        if hidden is None:
            raise ValueError("model arch 'dnn3' needs its hidden width (params: models.<name>.hidden, default 1024)")
        return DNN3(chans * height * width, num_classes, hidden)

    import timm  # imported here: it costs seconds and SR/DNN3 jobs never need it

    kwargs = dict(timm_kwargs or {})
    kwargs.setdefault("pretrained", False)
    if weights_file:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights_path(weights_file))})
        weights = _state_dict(weights_path(weights_file))
    optional = {} if "img_size" in kwargs else {"img_size": height}
    if small_stem and "patch_size" not in kwargs:
        optional["patch_size"] = _small_patch_size(height)
    try:
        model, taken = _create_model(timm, arch, {"in_chans": chans, "num_classes": num_classes, **kwargs}, optional)
    except RuntimeError as err:  # timm's "Unknown model" error
        raise ValueError(f"model arch '{arch}' is not sr, dnn3 or a timm model name ({err})") from None
    if weights_file and not {key.removeprefix("module.") for key in weights} & set(model.state_dict()):
        # timm only warns of unexpected keys, and leaves the model as it was initialised
        raise ValueError(f"weights_file {weights_path(weights_file)}: none of its {len(weights)} tensors "
                         f"({', '.join(list(weights)[:3])}, ...) is a parameter of {arch}; {WEIGHTS_REMEDY}")
    if small_stem and hasattr(model, "conv1") and hasattr(model, "maxpool"):
        _small_resnet_stem(model, chans)
    elif small_stem and not ({"img_size", "patch_size"} <= set(taken) | set(kwargs)):
        # a patch size is a stem only where the model is built for an image size (ViT, Swin); ConvNeXt's
        # patch_size is its 4x4 stride-4 stem, which the small default leaves as it is
        raise ValueError(f"small_stem: {type(model).__name__} ({arch}) has no stem this pipeline changes (a ResNet's "
                         "conv1 and max-pool, or a ViT's patch size); remove small_stem")
    if isinstance(input_norm, dict):
        add_input_norm(model, input_norm["mean"], input_norm["std"])
    elif input_norm == "auto" and kwargs["pretrained"]:
        add_input_norm(model, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    return model


def build_from_cfg(model_cfg: dict, in_shape: tuple[int, int, int], num_classes: int,
                   load_weights: bool = True) -> nn.Module:
    """build_model from a params models entry; load_weights=False leaves a weights_file (and timm's
    pretrained flag) out, for a structure-only build such as the preflight's on the meta device."""
    timm_kwargs = dict(model_cfg.get("timm_kwargs") or {})
    if not load_weights:
        timm_kwargs.pop("pretrained", None)
    return build_model(model_cfg["arch"], in_shape, num_classes, hidden=model_cfg.get("hidden"),
                       small_stem=model_cfg.get("small_stem", False), timm_kwargs=timm_kwargs,
                       input_norm=model_cfg.get("input_norm", "auto"),
                       weights_file=model_cfg.get("weights_file") if load_weights else None)


def flops_per_sample(model: nn.Module, in_shape: tuple[int, int, int]) -> float:
    """Forward FLOPs for one sample, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with eval_mode(model), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *in_shape))
    return float(counter.get_total_flops())
