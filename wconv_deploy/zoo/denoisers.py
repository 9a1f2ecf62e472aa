"""The paper's denoising networks, DnCNN and NAFNet, registered, and the trained denoiser shipped
with the package (its weights, record, demo image, noise and PSNR helpers).

Importing this module does not import torch: the builders and helpers import it, and the
networks of :mod:`.denoiser_nets`, when called.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import TYPE_CHECKING, Any

from wconv_deploy.zoo.layers import ConvFactory, DenArg
from wconv_deploy.zoo.registry import register_model

if TYPE_CHECKING:
    from torch import Tensor, nn

#: The network classes, which lived here before they moved to :mod:`.denoiser_nets`.
_MOVED = ("DnCNN", "LayerNorm2d", "SimpleGate", "NAFBlock", "NAFNet")


@register_model(
    "dncnn",
    description="DnCNN denoiser (depth x width, 17x64 by default), residual output x - noise",
    input_shape="1x1x64x64",
    dynamic="height,width",
)
def dncnn(
    channels: int = 1, depth: int = 17, width: int = 64, weighted: bool = True, den: DenArg = None, trainable: bool = False
) -> nn.Module:
    from wconv_deploy.zoo.denoiser_nets import DnCNN

    return DnCNN(channels, depth, width, ConvFactory(weighted, den, trainable))


@register_model(
    "nafnet",
    description="NAFNet denoiser (U-Net of NAFBlocks; width 16, 1-1-1 / 1 / 1-1-1 blocks by default)",
    input_shape="1x3x64x64",
    dynamic="height,width",
)
def nafnet(
    channels: int = 3,
    width: int = 16,
    enc_blocks: tuple[float, ...] | int = (1, 1, 1),
    middle_blocks: int = 1,
    dec_blocks: tuple[float, ...] | int = (1, 1, 1),
    weighted: bool = True,
    den: DenArg = None,
    trainable: bool = False,
) -> nn.Module:
    from wconv_deploy.zoo.denoiser_nets import NAFNet

    enc = [int(n) for n in (enc_blocks if isinstance(enc_blocks, tuple) else (enc_blocks,))]
    dec = [int(n) for n in (dec_blocks if isinstance(dec_blocks, tuple) else (dec_blocks,))]
    return NAFNet(channels, width, enc, middle_blocks, dec, ConvFactory(weighted, den, trainable))


def add_gaussian_noise(clean: Tensor, sigma: float, seed: int) -> Tensor:
    """``clean`` (values in [0, 1]) plus seeded Gaussian noise of ``sigma`` on the 0..255 scale."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return clean + torch.randn(clean.shape, generator=g) * (sigma / 255.0)


def psnr(image: Tensor, reference: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (``image`` is clipped to [0, 1])."""
    mse = float(((image.clamp(0, 1) - reference) ** 2).mean())
    return 10 * math.log10(1.0 / mse)


def demo_image() -> Tensor:
    """The photograph shipped for the demo (scikit-image's ``camera``, CC0, 256x256), in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with resources.as_file(resources.files("wconv_deploy.zoo") / "data" / DEMO_IMAGE) as path:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return torch.from_numpy(pixels / 255.0)


def denoiser_record() -> dict[str, Any]:
    """What benchmarks/train_denoiser.py recorded: set-up and PSNRs (weights/denoiser.json)."""
    text = (resources.files("wconv_deploy.zoo") / "weights" / "denoiser.json").read_text()
    return dict(json.loads(text))


#: The bundled denoiser: grayscale, Gaussian noise sigma 25 (on the 0..255 scale), trained by
#: benchmarks/train_denoiser.py. Its architecture is ``dncnn`` with these options.
DENOISER_OPTIONS = {"channels": 1, "depth": 8, "width": 32}
DENOISER_WEIGHTS = "dncnn_wconv_gray_s25.pt"
DENOISER_SIGMA = 25.0
DEMO_IMAGE = "camera_256.png"
#: Seed of the noise added to test images (training's evaluation, the demo and the tests agree).
NOISE_SEED = 0


@register_model(
    "denoiser",
    description="trained weighted DnCNN (8x32, grayscale, sigma 25) shipped with the package",
    input_shape="1x1x256x256",
    dynamic="batch,height,width",
)
def denoiser(weighted: bool = True) -> nn.Module:
    """The bundled trained denoiser (``weighted=False``: its plain-conv twin, trained identically)."""
    import torch

    model = dncnn(**DENOISER_OPTIONS, weighted=weighted)
    name = DENOISER_WEIGHTS if weighted else DENOISER_WEIGHTS.replace("wconv", "plain")
    with resources.as_file(resources.files("wconv_deploy.zoo") / "weights" / name) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def __getattr__(name: str) -> Any:
    """The classes under their old module path, where whole models pickled before the move name them."""
    if name in _MOVED:
        from wconv_deploy.zoo import denoiser_nets

        return getattr(denoiser_nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
