"""Train the bundled denoiser (weighted DnCNN) and its plain-conv twin, identically, and compare.

Data: photographs bundled with scikit-image (no download), converted to grayscale in [0, 1].
Training images and their licences (from scikit-image's ``skimage.data`` documentation):
astronaut (NASA, public domain), coffee (CC0, Rachel Michetti), rocket (SpaceX, public domain),
brick, grass, gravel (CC0 Textures, CC0), coins (Walters Art Museum, no known copyright
restrictions), hubble_deep_field (NASA, public domain), immunohistochemistry (no known copyright
restrictions), retina (CC0). Held out for testing: camera (CC0, Lav Varshney) and chelsea (CC0,
Stefan van der Walt). The demo photograph shipped in the package is ``camera`` resized to 256x256.

Noise: additive Gaussian, sigma 25 on the 0..255 scale. Both networks see the same patches, noise,
initial weights where shapes allow, optimiser and schedule; the only difference is that the
weighted one's 3x3 convolutions are weighted (density 0.75).

    .venv/bin/python benchmarks/train_denoiser.py [--steps 2000] [--out wconv_deploy/zoo/weights]

Writes the two state_dicts, a JSON of the training set-up and PSNRs, and the demo image, and
prints a Markdown table for docs/BENCHMARKS.md. Needs scikit-image (in the dev extra).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from wconv_deploy.zoo import denoisers
from wconv_deploy.zoo.denoisers import (
    DENOISER_OPTIONS,
    DENOISER_SIGMA,
    DENOISER_WEIGHTS,
    NOISE_SEED,
    add_gaussian_noise,
    dncnn,
    psnr,
)

TRAIN = [
    "astronaut",
    "coffee",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
]
TEST = ["camera", "chelsea"]
DEMO_IMAGE = Path("wconv_deploy/zoo/data") / denoisers.DEMO_IMAGE


def gray(name: str) -> np.ndarray:
    from skimage import color, data, util

    img = util.img_as_float32(getattr(data, name)())
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]).astype(np.float32)
    return img


def add_noise(clean: torch.Tensor) -> torch.Tensor:
    """The noisy test image: the same seeded noise the demo and the tests use."""
    return add_gaussian_noise(clean, DENOISER_SIGMA, NOISE_SEED)


def patches(images: list[torch.Tensor], n: int, size: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=g))]
        h, w = img.shape
        y, x = (int(torch.randint(h - size + 1, (1,), generator=g)), int(torch.randint(w - size + 1, (1,), generator=g)))
        p = img[y : y + size, x : x + size]
        p = torch.rot90(p, int(torch.randint(4, (1,), generator=g)))
        if int(torch.randint(2, (1,), generator=g)):
            p = p.flip(1)
        out.append(p)
    return torch.stack(out)[:, None]


def train(model: nn.Module, images: list[torch.Tensor], steps: int, batch: int, size: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)  # same data stream for every model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(steps):
        clean = patches(images, batch, size, g)
        noisy = clean + torch.randn(clean.shape, generator=g) * (DENOISER_SIGMA / 255.0)
        loss = nn.functional.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            recent = sum(losses[-100:]) / 100
            print(
                f"  step {step + 1}/{steps}: loss {recent:.5f} "
                f"(PSNR {10 * math.log10(1 / recent):.2f} dB), {time.time() - t0:.0f} s"
            )
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, tests: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    return {name: psnr(model(add_noise(img)[None, None])[0, 0], img) for name, img in tests.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("wconv_deploy/zoo/weights"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    images = [torch.from_numpy(gray(n)) for n in TRAIN]
    camera = Image.fromarray((gray("camera") * 255).round().astype(np.uint8)).resize((256, 256), Image.Resampling.LANCZOS)
    DEMO_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    camera.save(DEMO_IMAGE)
    tests = {n: torch.from_numpy(gray(n)) for n in TEST}
    tests["camera_256 (demo)"] = torch.from_numpy(np.asarray(Image.open(DEMO_IMAGE), dtype=np.float32) / 255.0)

    results: dict[str, dict[str, float]] = {"noisy": {n: psnr(add_noise(img), img) for n, img in tests.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    for weighted in (True, False):
        kind = "wconv" if weighted else "plain"
        torch.manual_seed(args.seed)
        model = dncnn(**DENOISER_OPTIONS, weighted=weighted)
        print(f"training {kind}: {sum(p.numel() for p in model.parameters())} parameters")
        t0 = time.time()
        train(model, images, args.steps, args.batch, args.patch, args.seed)
        print(f"  {time.time() - t0:.0f} s")
        results[kind] = evaluate(model, tests)
        torch.save(model.state_dict(), args.out / DENOISER_WEIGHTS.replace("wconv", kind))

    record = {
        "architecture": {"zoo": "dncnn", **DENOISER_OPTIONS, "den_3x3": [0.75]},
        "sigma": DENOISER_SIGMA,
        "train_images": TRAIN,
        "test_images": TEST,
        "steps": args.steps,
        "batch": args.batch,
        "patch": args.patch,
        "seed": args.seed,
        "psnr_db": results,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    (args.out / "denoiser.json").write_text(json.dumps(record, indent=2) + "\n")
    print()
    print("| image | noisy (dB) | weighted DnCNN (dB) | plain DnCNN (dB) |")
    print("|---|---|---|---|")
    for name in tests:
        print(f"| {name} | {results['noisy'][name]:.2f} | {results['wconv'][name]:.2f} | {results['plain'][name]:.2f} |")


if __name__ == "__main__":
    main()
