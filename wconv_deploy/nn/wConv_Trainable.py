"""Reference names for the learned-density layers: ``from wconv_deploy.nn.wConv_Trainable import wConv2d``.

A drop-in for the reference's ``wConv_Trainable`` module: same signatures, defaults and
state_dict keys.
"""

from wconv_deploy.nn import TrainableWeightedConv1d as wConv1d
from wconv_deploy.nn import TrainableWeightedConv2d as wConv2d
from wconv_deploy.nn import TrainableWeightedConv3d as wConv3d

__all__ = ["wConv1d", "wConv2d", "wConv3d"]
