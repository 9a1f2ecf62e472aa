"""What folding costs and what it saves, in eager PyTorch on the CPU.

A weighted convolution multiplies ``weight * Phi`` on every forward pass; the folded model does
it once. This script builds a CIFAR-style VGG-16 (13 weighted 3x3 convolutions with BatchNorm)
and measures (1) the wall time of ``fold(..., fold_bn=True)`` including its self-checks and
(2) the median eager forward latency of the weighted and the folded model at batch 1 and 32.

    .venv/bin/python benchmarks/fold_cost.py [--threads N] [--min-seconds S]

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from wconv_deploy import fold
from wconv_deploy.nn import WeightedConv2d

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_weighted(num_classes: int = 100) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [WeightedConv2d(c, int(v), 3, [0.8]), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    layers += [nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers).eval()


def median_ms(model: nn.Module, x: torch.Tensor, min_seconds: float) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < min_seconds or len(times) < 10:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vgg16_weighted()

    t0 = time.perf_counter()
    folded, report = fold(model, fold_bn=True, example_inputs=[torch.randn(2, 3, 32, 32)])
    fold_s = time.perf_counter() - t0

    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(
        f"fold(vgg16_weighted, fold_bn=True): {fold_s:.2f} s for {len(report.folded)} layers + "
        f"{len(report.fused_bn)} BatchNorms, whole-model rel err {report.model_check.rel_error:.1e}"
    )
    print()
    print("| batch | weighted (ms) | folded + BN fused (ms) | speed-up |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        x = torch.randn(batch, 3, 32, 32)
        a, b = median_ms(model, x, args.min_seconds), median_ms(folded, x, args.min_seconds)
        print(f"| {batch} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
