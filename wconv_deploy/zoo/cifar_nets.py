"""The paper's classification networks for CIFAR-100 (32x32 RGB inputs); :mod:`.cifar` registers them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wconv_deploy.zoo.layers import ConvFactory

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv-BN-ReLU stacks, max pooling, one linear layer."""

    def __init__(self, cfg: list[int | str], num_classes: int, conv: ConvFactory) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [conv(c, int(v), 3, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem (no max pooling), four stages of basic blocks, global pooling."""

    def __init__(self, blocks: list[int], num_classes: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(3, 64, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        cin = 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, cout, stride, conv)] + [BasicBlock(cout, cout, 1, conv) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
