"""CIFAR-10 ResNets of He et al. 2016, §4.2 (ResNet-20/32/44/56, option-A shortcuts).

The modules are written exactly as in the original authors' public code
(akamaster/pytorch_resnet_cifar10), so its checkpoints load strictly and the
graph has the same quirks a converter must handle: functional ``F.relu`` calls,
an in-place residual add, a ``LambdaLayer`` zero-padding shortcut for
down-sampling blocks, and ``F.avg_pool2d`` + ``view`` before the classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from .registry import register_model

__all__ = ["LambdaLayer", "BasicBlock", "CifarResNet", "cifar_resnet"]


def _weights_init(module: nn.Module) -> None:
    """Kaiming-normal init of conv and linear weights, as in the original code."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(module.weight)


class LambdaLayer(nn.Module):
    """Wraps a function of one tensor as a module (used for the option-A shortcut)."""

    def __init__(self, lambd: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: Tensor) -> Tensor:
        return self.lambd(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual shortcut.

    Option A (the paper's CIFAR choice) down-samples the shortcut by taking every
    second pixel and zero-pads the new channels; option B uses a 1x1 conv + BN.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = LambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
                )
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(self.expansion * planes),
                )
            else:
                raise ValueError(f"unknown shortcut option {option!r}; expected 'A' or 'B'")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem (16 ch), three stages of 16/32/64 planes, global average pool, linear."""

    def __init__(self, block: type[BasicBlock], num_blocks: list[int], num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16

        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(block, 16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)

        self.apply(_weights_init)

    def _make_layer(self, block: type[BasicBlock], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for block_stride in strides:
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet of the given depth (6n + 2: 20, 32, 44, 56, 110...) with option-A shortcuts."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    blocks_per_stage = (depth - 2) // 6
    return CifarResNet(BasicBlock, [blocks_per_stage] * 3, num_classes=num_classes)


@register_model("cifar10-resnet20", default_checkpoint="models/cifar10/resnet20.th")
def cifar10_resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27 M parameters)."""
    return cifar_resnet(20, num_classes)


@register_model("cifar10-resnet32", default_checkpoint="models/cifar10/resnet32.th")
def cifar10_resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (0.46 M parameters)."""
    return cifar_resnet(32, num_classes)


@register_model("cifar10-resnet44")
def cifar10_resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (0.66 M parameters); no shared pretrained weights."""
    return cifar_resnet(44, num_classes)


@register_model("cifar10-resnet56")
def cifar10_resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.85 M parameters); no shared pretrained weights."""
    return cifar_resnet(56, num_classes)
