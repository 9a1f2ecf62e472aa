"""The paper's denoising networks, DnCNN and NAFNet; :mod:`.denoisers` registers them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wconv_deploy.zoo.layers import ConvFactory


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): conv-ReLU, (depth - 2) x conv-BN-ReLU, conv; predicts the
    noise and returns ``x - noise``."""

    def __init__(self, channels: int, depth: int, width: int, conv: ConvFactory) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("depth must be at least 2")
        layers: list[nn.Module] = [conv(channels, width, 3), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [conv(width, width, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        head = conv(width, channels, 3, bias=False)
        # a small noise estimate at the start, so the output begins near x and training is stable
        nn.init.normal_(head.get_parameter("weight"), 0.0, 0.1 / (width * 9) ** 0.5)
        layers.append(head)
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, with a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """Split the channels in half and multiply the halves (NAFNet's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet block: LayerNorm, 1x1 expansion, 3x3 depthwise, SimpleGate, simplified channel
    attention, 1x1; then a gated 1x1 feed-forward. Both residual scales start at zero."""

    def __init__(self, c: int, conv: ConvFactory) -> None:
        super().__init__()
        dw = 2 * c
        self.norm1 = LayerNorm2d(c)
        self.conv1 = conv(c, dw, 1)
        self.conv2 = conv(dw, dw, 3, groups=dw)
        self.sg = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv(dw // 2, dw // 2, 1))
        self.conv3 = conv(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = conv(c, 2 * c, 1)
        self.conv5 = conv(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """NAFNet (Chen et al. 2022): a U-Net of NAFBlocks with 2x2 strided downsampling, 1x1 conv +
    PixelShuffle upsampling, additive skips and a global residual. Inputs are padded to a
    multiple of 2**len(enc_blocks) and the output cropped back."""

    def __init__(
        self, channels: int, width: int, enc_blocks: list[int], middle_blocks: int, dec_blocks: list[int], conv: ConvFactory
    ) -> None:
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError("enc_blocks and dec_blocks must have the same length")
        self.intro = conv(channels, width, 3)
        self.ending = conv(width, channels, 3)
        self.encoders, self.downs, self.decoders, self.ups = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c, conv) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))  # even kernel: no weighted form exists
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c, conv) for _ in range(middle_blocks)])
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c, conv) for _ in range(n)]))
        self.multiple = 2 ** len(enc_blocks)

    def forward(self, inp: Tensor) -> Tensor:
        h, w = inp.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        x = F.pad(inp, (0, pad_w, 0, pad_h))
        skip_in = x
        x = self.intro(x)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for dec, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = dec(up(x) + skip)
        x = self.ending(x) + skip_in
        return x[..., :h, :w]
