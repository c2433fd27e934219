"""VPN's noise generators: g maps a label-conditioned input to a per-element noise scale sigma >= 0.

Two architectures, after the authors' code: a D-H-H-D perceptron (dnn3) and a ResNet-18-shaped
conv net (resnet18). `build_generator` picks one by name; methods/vpn.py composes it with any classifier.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock


class DNN3Generator(nn.Module):
    """D-H-H-D perceptron; sigma = |last layer| reshaped to the input."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: int):
        super().__init__()
        self.in_shape = tuple(in_shape)
        dim = self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, dim)
        # The authors start every layer at N(0, 0.002) with zero bias, so sigma is ~0 at
        # first and joint training begins as plain training of f.
        for layer in (self.fc1, self.fc2, self.head):
            nn.init.normal_(layer.weight, 0.0, 0.002)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.head(h).abs().view(-1, *self.in_shape)


class ResNet18Generator(nn.Module):
    """Conv stem, four stages of two basic blocks, bilinear upsampling, 3x3 conv head, abs.

    Widths 64-128-256-64 as in the authors' generator. Their stem (7x7 stride 2 + max-pool)
    leaves 1x1 features on 28-32 px inputs, i.e. one sigma per channel for the whole image;
    inputs of side <= 32 get a 3x3 stride-1 stem instead (the rule models.py uses for the
    classifiers) so sigma can vary in space. Larger inputs keep the authors' stem.
    """

    def __init__(self, in_shape: tuple[int, int, int], small_stem: bool | None = None, width: int = 64):
        super().__init__()
        # the authors' widths 64-128-256-64 scaled by width / 64 (smaller generators for the CPU default)
        self.widths = (width, 2 * width, 4 * width, width)
        self.in_shape = tuple(in_shape)
        chans, height, width = self.in_shape
        self.small_stem = max(height, width) <= 32 if small_stem is None else small_stem
        stem_width = self.widths[0]
        if self.small_stem:
            conv = nn.Conv2d(chans, stem_width, 3, stride=1, padding=1, bias=False)
            pool = nn.Identity()
        else:
            conv = nn.Conv2d(chans, stem_width, 7, stride=2, padding=3, bias=False)
            pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True), pool)
        stages, in_width = [], stem_width
        for out_width, stride in zip(self.widths, (1, 2, 2, 2)):
            stages.append(_basic_stage(in_width, out_width, stride))
            in_width = out_width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(in_width, chans, 3, padding=1, bias=False)

    def forward(self, x):
        feat = self.stages(self.stem(x))
        # align_corners=True matches the authors' nn.UpsamplingBilinear2d
        feat = F.interpolate(feat, size=self.in_shape[1:], mode="bilinear", align_corners=True)
        return self.head(feat).abs()


def _basic_stage(in_width: int, out_width: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_width != out_width:
        downsample = nn.Sequential(nn.Conv2d(in_width, out_width, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_width))
    return nn.Sequential(BasicBlock(in_width, out_width, stride, downsample), BasicBlock(out_width, out_width))


def build_generator(name: str, in_shape: tuple[int, int, int], hidden: int, width: int = 64,
                    small_stem: bool | None = None) -> nn.Module:
    if name == "dnn3":
        return DNN3Generator(in_shape, hidden)
    if name == "resnet18":
        return ResNet18Generator(in_shape, small_stem=small_stem, width=width)
    raise ValueError(f"VPN generator {name!r} is unknown; known generators: dnn3, resnet18")
