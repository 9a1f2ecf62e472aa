"""The CIFAR ResNet-18 with weighted 3x3 convolutions that the export benchmarks use.

3x3 stem, stages 64/128/256/512 of [2, 2, 2, 2] basic blocks, BatchNorm, residual connections;
every 3x3 convolution weighted (density ``[0.8]``). Its classes live in this importable module,
as a user's training code would, so a ``torch.save(model)`` file loads in another process (with
this folder on ``PYTHONPATH``) and ``--arch benchmarks/cifar_resnet.py:resnet18_weighted`` can
rebuild it from a state_dict.
"""

from __future__ import annotations

import torch
from torch import nn

from wconv_deploy.nn import WeightedConv2d


class Block(nn.Module):
    """A basic residual block whose two 3x3 convolutions are weighted."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = WeightedConv2d(cin, cout, 3, [0.8], stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = WeightedConv2d(cout, cout, 3, [0.8], padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet18_weighted(num_classes: int = 100) -> nn.Module:
    """The CIFAR ResNet-18 (eval mode) with weighted 3x3 convolutions; 11.2 M parameters."""
    layers: list[nn.Module] = [WeightedConv2d(3, 64, 3, [0.8], padding=1), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers).eval()
