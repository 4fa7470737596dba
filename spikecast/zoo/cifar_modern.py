"""Small timm models for CIFAR-10 (32x32 RGB, ImageNet mean / std, 10 classes): a ViT and a ConvNeXt.

They are built from timm's own classes (``VisionTransformer``, ``ConvNeXt``), so converting them
exercises the generic timm code paths (attention, LayerNorm, GELU, layer scale, depthwise convs),
and they are sized to train from scratch in about half an hour on two CPU cores:

==========================  ===========================================================================
``cifar10-vit-tiny``        ViT, 4x4 patches (64 tokens + class token, learned position embedding),
                            width 96, 6 blocks, 3 heads, MLP ratio 2 (461k parameters)
``cifar10-convnext-nano``   ConvNeXt, 1x1 patch stem, four stages at 32/16/8/4 px of widths
                            16/48/96/192 with 1/1/2/1 blocks, 3x3 depthwise convs (569k parameters)
==========================  ===========================================================================

Their weights are trained by spikecast, not shipped (:mod:`spikecast.zoo.trained`):
``benchmarks/train_cifar_zoo.py <name>`` writes ``cache_dir() / "<name>-v2.safetensors"``, which
``create_model(name, pretrained=True)`` loads (or raises a FileNotFoundError naming that command).
"""

from __future__ import annotations

from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from .trained import WEIGHTS_VERSION, pretrained_loader, weights_path

__all__ = ["MODERN_MODELS", "WEIGHTS_VERSION", "weights_path", "build_vit_tiny", "build_convnext_nano"]

#: The two registered names.
MODERN_MODELS: tuple[str, ...] = ("cifar10-vit-tiny", "cifar10-convnext-nano")

VIT_TINY = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0,
                class_token=True, pos_embed="learn", global_pool="token")
CONVNEXT_NANO = dict(depths=(1, 1, 2, 1), dims=(16, 48, 96, 192), patch_size=1, kernel_sizes=3)


def build_vit_tiny(num_classes: int = 10) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(num_classes=num_classes, **VIT_TINY)


def build_convnext_nano(num_classes: int = 10) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(num_classes=num_classes, **CONVNEXT_NANO)


_INFO = dict(input_size=(3, 32, 32), num_classes=10, mean=IMAGENET_MEAN, std=IMAGENET_STD,
             default_checkpoint=None, dataset="cifar10")


@register_model("cifar10-vit-tiny", pretrained_loader=pretrained_loader("cifar10-vit-tiny"), **_INFO)
def cifar10_vit_tiny(num_classes: int = 10) -> nn.Module:
    """timm VisionTransformer for 32x32 CIFAR-10 (patch 4, width 96, depth 6, 3 heads, MLP ratio 2)."""
    return build_vit_tiny(num_classes)


@register_model("cifar10-convnext-nano", pretrained_loader=pretrained_loader("cifar10-convnext-nano"), **_INFO)
def cifar10_convnext_nano(num_classes: int = 10) -> nn.Module:
    """timm ConvNeXt for 32x32 CIFAR-10 (1x1 stem, widths 16/48/96/192, blocks 1/1/2/1, 3x3 depthwise)."""
    return build_convnext_nano(num_classes)
