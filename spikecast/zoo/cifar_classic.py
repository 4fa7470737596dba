"""Classic CNN families for CIFAR-10 with max-pooling and concatenation: VGG, GoogLeNet, DenseNet.

The structures real checkpoints are full of and that a converter must get right: max-pools inside
the spiking part (after a ReLU, and as a stride-1 branch of an inception block that pools the
*spikes* of a concatenation), concatenated branches with different thresholds, and pre-activation
(BN-ReLU-conv) dense blocks. Sized to train from scratch in about half an hour on two CPU cores
(32x32 RGB, ImageNet mean / std, 10 classes):

===============================  ======================================================================
``cifar10-vgg-small``            VGG: conv3x3-BN-ReLU, widths 32-32 / 64-64 / 128-128, a 2x2 max-pool
                                 after each pair, then flatten and two linear layers (dropout 0.2)
``cifar10-googlenet-small``      GoogLeNet: 3x3 stem, five inception blocks (1x1 / 1x1-3x3 / 1x1-5x5 /
                                 3x3 stride-1 max-pool-1x1 branches, concatenated), 3x3 stride-2
                                 max-pools between the 32 / 16 / 8 px stages, global average pool
``cifar10-densenet-small``       DenseNet: three dense blocks of 2 / 4 / 4 pre-activation layers
                                 (BN-ReLU-conv3x3, growth 16, concatenated), BN-ReLU-conv1x1-avgpool
                                 transitions (compression 0.5), BN-ReLU-global average pool
===============================  ======================================================================

Weights: trained by spikecast, not shipped (:mod:`spikecast.zoo.trained`,
``benchmarks/train_cifar_zoo.py <name>``).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from .trained import pretrained_loader

__all__ = ["CLASSIC_MODELS", "VGGSmall", "GoogLeNetSmall", "DenseNetSmall", "Inception"]

#: The registered names.
CLASSIC_MODELS: tuple[str, ...] = ("cifar10-vgg-small", "cifar10-googlenet-small", "cifar10-densenet-small")


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class VGGSmall(nn.Module):
    """VGG-style: pairs of conv3x3-BN-ReLU, each pair followed by a 2x2 max-pool; a two-layer classifier."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 256, num_classes: int = 10,
                 dropout: float = 0.2) -> None:
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [conv_bn_relu(cin, w), conv_bn_relu(w, w), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = 32 // 2 ** len(widths)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * side * side, hidden),
                                        nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Inception(nn.Module):
    """GoogLeNet's block: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 stride-1 max-pool then 1x1; concatenated."""

    def __init__(self, cin: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(cin, c1, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(cin, c3_reduce, 1), conv_bn_relu(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(cin, c5_reduce, 1), conv_bn_relu(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


#: (c1, c3_reduce, c3, c5_reduce, c5, pool_proj) per inception block, and "M" for a stride-2 max-pool
GOOGLENET_SMALL = ((16, 16, 24, 4, 8, 8), "M", (24, 24, 48, 8, 16, 16), (32, 32, 64, 8, 16, 16), "M",
                   (48, 32, 64, 12, 24, 24), (48, 48, 96, 12, 24, 24))


class GoogLeNetSmall(nn.Module):
    """GoogLeNet-style: 3x3 stem, inception blocks, 3x3 stride-2 max-pools between stages, average pool."""

    def __init__(self, blocks=GOOGLENET_SMALL, stem: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [conv_bn_relu(3, stem)], stem
        for spec in blocks:
            if spec == "M":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            else:
                block = Inception(cin, *spec)
                layers.append(block)
                cin = block.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-conv3x3 whose ``growth`` new channels are concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


class DenseNetSmall(nn.Module):
    """DenseNet-style: dense blocks of pre-activation layers, BN-ReLU-conv1x1-avgpool transitions."""

    def __init__(self, depths: tuple[int, ...] = (2, 4, 4), growth: int = 16, stem: int = 32,
                 compression: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, padding=1, bias=False)]
        cin = stem
        for i, depth in enumerate(depths):
            for _ in range(depth):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(depths) - 1:
                cout = int(cin * compression)
                layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2)]
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


_INFO = dict(input_size=(3, 32, 32), num_classes=10, mean=IMAGENET_MEAN, std=IMAGENET_STD,
             default_checkpoint=None, dataset="cifar10")


@register_model("cifar10-vgg-small", pretrained_loader=pretrained_loader("cifar10-vgg-small"), **_INFO)
def cifar10_vgg_small(num_classes: int = 10) -> nn.Module:
    """VGG-style CIFAR-10 network with 2x2 max-pools (widths 32/64/128, two linear layers)."""
    return VGGSmall(num_classes=num_classes)


@register_model("cifar10-googlenet-small", pretrained_loader=pretrained_loader("cifar10-googlenet-small"), **_INFO)
def cifar10_googlenet_small(num_classes: int = 10) -> nn.Module:
    """GoogLeNet-style CIFAR-10 network: inception blocks with stride-1 max-pool branches, stride-2 max-pools."""
    return GoogLeNetSmall(num_classes=num_classes)


@register_model("cifar10-densenet-small", pretrained_loader=pretrained_loader("cifar10-densenet-small"), **_INFO)
def cifar10_densenet_small(num_classes: int = 10) -> nn.Module:
    """DenseNet-style CIFAR-10 network: pre-activation dense blocks (growth 16, depths 2/4/4)."""
    return DenseNetSmall(num_classes=num_classes)
