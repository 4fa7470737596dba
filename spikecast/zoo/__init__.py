"""Model zoo: registered ANNs with their pretrained weights, and checkpoint loading.

>>> from spikecast.zoo import create_model, list_models
>>> list_models("cifar10-*")
['cifar10-convnext-nano', 'cifar10-densenet-small', 'cifar10-googlenet-small', 'cifar10-resnet20', 'cifar10-resnet32', 'cifar10-resnet44', 'cifar10-resnet56', 'cifar10-vgg-small', 'cifar10-vit-tiny']
>>> model = create_model("cifar10-resnet20", pretrained=True)  # doctest: +SKIP
"""

from .checkpoint import load_checkpoint, load_state_dict
from .registry import ModelInfo, create_model, is_model, list_models, model_info, register_model

# Importing the family modules registers their models.
from . import cifar_classic, cifar_modern, cifar_resnet, digits  # noqa: E402,F401  (isort: skip)

__all__ = [
    "ModelInfo",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
    "model_info",
    "register_model",
]
