"""Reference names for the fixed-density layers: ``from wconv_deploy.nn.wConv import wConv2d``.

A drop-in for the reference's ``wConv`` module: same signatures, defaults and state_dict keys.
"""

from wconv_deploy.nn import WeightedConv1d as wConv1d
from wconv_deploy.nn import WeightedConv2d as wConv2d
from wconv_deploy.nn import WeightedConv3d as wConv3d

__all__ = ["wConv1d", "wConv2d", "wConv3d"]
