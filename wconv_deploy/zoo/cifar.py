"""The paper's classification networks for CIFAR-100, registered: VGG-16 and ResNet-18.

Only the builders live here (their signatures are the options ``zoo list`` shows); they import
torch and the networks of :mod:`.cifar_nets` when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wconv_deploy.zoo.layers import ConvFactory, DenArg
from wconv_deploy.zoo.registry import register_model

if TYPE_CHECKING:
    from torch import nn

#: The network classes, which lived here before they moved to :mod:`.cifar_nets`.
_MOVED = ("VGG", "BasicBlock", "ResNet")


@register_model("vgg16_cifar", description="CIFAR VGG-16 with BatchNorm (13 3x3 convs), 100 classes", input_shape="1x3x32x32")
def vgg16_cifar(num_classes: int = 100, weighted: bool = True, den: DenArg = None, trainable: bool = False) -> nn.Module:
    from wconv_deploy.zoo.cifar_nets import VGG, VGG16_CFG

    return VGG(VGG16_CFG, num_classes, ConvFactory(weighted, den, trainable))


@register_model(
    "resnet18_cifar", description="CIFAR ResNet-18 (3x3 stem, 64/128/256/512, [2,2,2,2]), 100 classes", input_shape="1x3x32x32"
)
def resnet18_cifar(num_classes: int = 100, weighted: bool = True, den: DenArg = None, trainable: bool = False) -> nn.Module:
    from wconv_deploy.zoo.cifar_nets import ResNet

    return ResNet([2, 2, 2, 2], num_classes, ConvFactory(weighted, den, trainable))


def __getattr__(name: str) -> Any:
    """The classes under their old module path, where whole models pickled before the move name them."""
    if name in _MOVED:
        from wconv_deploy.zoo import cifar_nets

        return getattr(cifar_nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
